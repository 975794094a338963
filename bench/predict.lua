-- wrk script: POST pre-built multipart bodies in turn; print one JSON line of results at the end.
-- BENCH_BODIES names a file listing body files; BENCH_PATH is the request path (with its query).
local requests = {}
local counter = 0

function init(args)
  local boundary = os.getenv("BENCH_BOUNDARY")
  local path = os.getenv("BENCH_PATH")
  local headers = { ["Content-Type"] = "multipart/form-data; boundary=" .. boundary }
  for name in io.lines(os.getenv("BENCH_BODIES")) do
    local f = assert(io.open(name, "rb"))
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
