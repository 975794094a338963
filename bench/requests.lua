-- wrk script: send pre-built requests in turn; print one JSON line of results at the end.
-- BENCH_REQUESTS names a listing: one request a line, the body file's path then its headers, tab-separated
-- ("Content-Type: ..."). BENCH_PATH is the request path (with its query).
local requests = {}
local counter = 0

function init(args)
  local path = os.getenv("BENCH_PATH")
  for line in io.lines(os.getenv("BENCH_REQUESTS")) do
    local fields = {}
    for field in line:gmatch("[^\t]+") do fields[#fields + 1] = field end
    local headers = {}
    for i = 2, #fields do
      local name, value = fields[i]:match("^([^:]+):%s*(.*)$")
      headers[name] = value
    end
    local f = assert(io.open(fields[1], "rb"))
    requests[#requests + 1] = wrk.format("POST", path, headers, f:read("*a"))
    f:close()
  end
end

function request()
  counter = counter + 1
  return requests[(counter % #requests) + 1]
end

function done(summary, latency, _)
  local errors = summary.errors.connect + summary.errors.read + summary.errors.write
      + summary.errors.status + summary.errors.timeout
  io.write(string.format(
    'RESULT {"requests": %d, "seconds": %.3f, "p50_ms": %.3f, "p99_ms": %.3f, "errors": %d}\n',
    summary.requests, summary.duration / 1e6, latency:percentile(50) / 1e3, latency:percentile(99) / 1e3, errors))
end
