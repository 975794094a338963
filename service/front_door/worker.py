"""The gunicorn worker: one greenlet per connection, so a slow or idle client costs memory, never a worker.

gunicorn's sync worker reads each request on the thread that also runs the model: two clients that send half
their headers stall every request behind them until the worker timeout. This worker is gunicorn's gevent
worker plus what a front door needs (docs/operations.md measures each against the alternatives):

- **Timeouts by phase of a connection.** Idle between requests (``KEEPALIVE_SECONDS``); the headers, from the
  request's first byte to their end, in all (``HEADER_TIMEOUT_SECONDS``, so trickling one byte at a time does
  not reset it); the body and the response, the longest pause between two reads or writes
  (``BODY_TIMEOUT_SECONDS``). A request cut off part-way gets a 408; a connection that sent nothing of a
  request is closed quietly.
- **Fairness inside a worker.** After each response the connection's greenlet waits until the event loop has
  looked at every other connection. Without it, a kept-alive connection whose next request is already waiting
  is served again and again while others starve (docs/operations.md measures the difference in p99).
- **Balance across workers.** Kept-alive connections stay with the worker that accepted them, and an idle
  worker accepts a whole burst. A worker holding more connections than the least-loaded live worker lets a
  new connection wait a moment for another worker (at most ``MAX_ACCEPT_DEFER_SECONDS``).
- **Drain on SIGTERM.** For ``DRAIN_SECONDS`` everything is still served and accepted, but ``/readyz``
  answers 503 and each response closes its connection, so load balancers move away; then the worker stops
  accepting, closes idle connections, and lets requests in flight finish (``GRACEFUL_TIMEOUT_SECONDS``).
- **Bounded requests.** A request's line and headers together stop at ``MAX_HEADER_BYTES`` (431); a body must
  keep arriving at ``MIN_UPLOAD_RATE`` on average once it has taken ``BODY_TIMEOUT_SECONDS`` (408); the bytes of
  requests the worker holds, over all its connections, stop at ``MAX_BUFFERED_BYTES`` (503 with ``Retry-After``);
  a chunked body is read whole before the app sees it and refused past ``MAX_UPLOAD_BYTES`` (413).
- **JSON errors.** What gunicorn's own parser refuses (a bad request line, too many or too long headers, broken
  chunks) is answered in the service's JSON error shape with gunicorn's status, not as an HTML page.
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import socket
import time

import gevent
import gevent.event
import orjson
from gevent.pool import Pool
from gevent.server import StreamServer
from gunicorn.http import errors as http_errors
from gunicorn.http.body import Body, ChunkedReader, LengthReader
from gunicorn.workers.ggevent import GeventWorker
from gunicorn.workers.sync import SyncWorker

from service.errors import PARSE_ERRORS, BufferFull, UploadTooSlow
from service.front_door.budget import BufferBudget
from service.observability import metrics
from service.settings import Settings

MAX_ACCEPT_DEFER_SECONDS = 0.02
M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter
LARGE_ALLOCATION_BYTES = 256 * 1024
ACCEPT_RETRY_SECONDS = 0.002
UNUSED_SLOT = -1


class ConnectionIdle(Exception):
    """No byte of a next request arrived in time, or the worker is stopping: close quietly."""


class HeaderTimeout(Exception):
    """A request's headers did not complete in time: answer 408 and close."""


class HeaderTooLarge(Exception):
    """A request's line and headers went past MAX_HEADER_BYTES: answer 431 and close."""


class WorkerBusy(Exception):
    """Reading a request's headers would take the worker past MAX_BUFFERED_BYTES: answer 503 and close."""


class BodyTooLarge(Exception):
    """A chunked body went past MAX_UPLOAD_BYTES: answer 413 and close."""


class BodyTimeout(Exception):
    """A chunked body stopped arriving, or arrived too slowly, before the app saw it: answer 408 and close."""




class TimedConnection:
    """A client socket whose reads time out by the phase of the connection, and whose bytes count against the
    worker's budget while their request is being served (see the module's docstring).

    gunicorn's parser reads through ``recv``; everything else is the socket's own (``raw``).
    """

    # gunicorn's parser reads the headers 8 KiB at a time: the read that completes them may hold that much more.
    HEADER_READ_SLACK = 8192
    # gunicorn asks for the whole rest of a body in one read; reading it in pieces keeps each turn of the event
    # loop short while many bodies arrive at once, and the buffers small enough for the allocator to reuse.
    BODY_READ_BYTES = 64 * 1024

    def __init__(self, sock, settings: Settings, budget: BufferBudget | None = None):
        self.raw = sock
        self._settings = settings
        self._budget = budget
        self.phase = "header"  # a new connection is expected to send its first request at once
        self._deadline = time.monotonic() + settings.header_timeout_seconds
        self._received = 0  # bytes of the request being read
        self._charged = 0  # of which counted against the worker's budget
        self.charging = True  # off while an unread body is drained and dropped
        self.linger = False  # on close, read and drop what the client still sends, for a moment
        self._request = None  # gunicorn's request being served, in the body phase
        self.greenlet = gevent.getcurrent()

    def __getattr__(self, name):
        return getattr(self.raw, name)

    def recv(self, size: int) -> bytes:
        if self.phase == "body":
            return self._count(self._recv_body(size))
        remaining = self._deadline - time.monotonic()
        try:
            if remaining <= 0:
                raise TimeoutError
            self.raw.settimeout(remaining)
            data = self.raw.recv(size)
        except TimeoutError:
            raise (HeaderTimeout if self._received else ConnectionIdle)() from None
        if data and not self._received and self.phase == "idle":
            self.phase = "header"
            self._deadline = time.monotonic() + self._settings.header_timeout_seconds
        if self._received > self._settings.max_header_bytes + self.HEADER_READ_SLACK:
            raise HeaderTooLarge()
        try:
            return self._count(data)
        except BufferFull:
            raise WorkerBusy() from None

    def _recv_body(self, size: int) -> bytes:
        """One read of the body: no pause over BODY_TIMEOUT_SECONDS, and, once the body has taken that long, no
        average rate under MIN_UPLOAD_RATE."""
        settings = self._settings
        rate_deadline = self._body_started + settings.body_timeout_seconds + self._received / settings.min_upload_rate
        remaining = rate_deadline - time.monotonic()
        try:
            if remaining <= 0:
                raise UploadTooSlow(self._too_slow())
            self.raw.settimeout(min(settings.body_timeout_seconds, remaining))
            try:
                return self.raw.recv(min(size, self.BODY_READ_BYTES))
            except TimeoutError:
                if remaining < settings.body_timeout_seconds:
                    raise UploadTooSlow(self._too_slow()) from None
                raise
            finally:
                self.raw.settimeout(settings.body_timeout_seconds)  # for writing the response
        except TimeoutError:
            # The app answers 408 (service.errors); the rest of the body will not come, so the connection cannot
            # carry another request.
            self._request.must_close = True
            raise

    def _too_slow(self) -> str:
        return (f"the request body arrived slower than {self._settings.min_upload_rate} bytes/s on average "
                "(MIN_UPLOAD_RATE)")

    def _count(self, data: bytes) -> bytes:
        self._received += len(data)
        if self._budget is not None and self.charging and data:
            if not self._budget.charge(len(data)):
                if self._request is not None:
                    self._request.must_close = True
                raise BufferFull(f"this worker holds {self._budget.limit_bytes >> 20} MiB of requests in memory "
                                 "(MAX_BUFFERED_BYTES); retry shortly")
            self._charged += len(data)
        return data

    def start_body(self, request) -> None:
        self.phase = "body"
        self._request = request
        self._body_started = time.monotonic()
        self._received = 0
        self.raw.settimeout(self._settings.body_timeout_seconds)

    def start_idle(self) -> None:
        self.release()
        self.phase = "idle"
        self._request = None
        self._received = 0
        self.charging = True
        self._deadline = time.monotonic() + self._settings.keepalive_seconds

    def release(self) -> None:
        """The request is over: what it held in memory goes back to the worker's budget."""
        if self._budget is not None and self._charged:
            self._budget.release(self._charged)
        self._charged = 0

    def close(self) -> None:
        self.release()
        if self.linger:
            _linger(self.raw)
        self.raw.close()


class ConnectionCounts:
    """Open connections per worker, in memory shared by the master and the workers: one slot per worker.

    Created in the master before any worker is forked. The master hands out and frees slots (``claim_slot``,
    ``free_slot``, from gunicorn's ``pre_fork`` and ``child_exit`` hooks); a worker counts in its slot only
    once it accepts (``join``), so a worker still loading its models is not waited for; each worker writes
    only its own slot.
    """

    def __init__(self, slots: int):
        self._counts = multiprocessing.RawArray(ctypes.c_int, [UNUSED_SLOT] * slots)

    def claim_slot(self, used: set[int]) -> int:
        return next(i for i in range(len(self._counts)) if i not in used)

    def free_slot(self, slot: int) -> None:
        self._counts[slot] = UNUSED_SLOT

    def join(self, slot: int) -> None:
        self._counts[slot] = 0

    def add(self, slot: int, delta: int) -> None:
        self._counts[slot] += delta

    def excess(self, slot: int) -> int:
        """How many more connections this worker holds than the least-loaded accepting worker."""
        counts = self._counts[:]
        return counts[slot] - min(count for count in counts if count != UNUSED_SLOT)


class BalancedServer(StreamServer):
    """gevent's accept loop, deferring a new connection while another live worker holds fewer."""

    def __init__(self, listener, handle, pool: Pool, counts: ConnectionCounts | None, slot: int | None):
        super().__init__(listener, handle=handle, spawn=pool)
        self.max_accept = 1  # one connection per wake-up, so every worker gets its chance
        self._pool = pool
        self._counts, self._slot = counts, slot
        self._deferred_since: float | None = None
        self.full = self._full  # gevent consults ``full`` before each accept (set after the pool's own)

    def _full(self) -> bool:
        if self._pool.full():
            return True
        if self._counts is None or self._counts.excess(self._slot) <= 0:
            self._deferred_since = None
            return False
        now = time.monotonic()
        if self._deferred_since is None:
            self._deferred_since = now
        if now - self._deferred_since >= MAX_ACCEPT_DEFER_SECONDS:  # the others are busy or stuck: take it
            self._deferred_since = None
            return False
        gevent.spawn_later(ACCEPT_RETRY_SECONDS, self._accept_again)
        return True

    def _accept_again(self) -> None:
        if self.started:
            self.start_accepting()

    def do_handle(self, *args):
        if self._counts is not None:  # counted at accept time, before the greenlet runs, so bursts spread
            self._counts.add(self._slot, 1)
        super().do_handle(*args)


class RequestGuards:
    """What the service's workers add to gunicorn's handling of one request: a chunked body read whole and
    bounded before the app sees it, and every error gunicorn itself answers rendered as the service's JSON."""

    settings: Settings  # the master's, handed over by gunicorn.conf.py's pre_fork hook

    def handle_request(self, listener_name, req, sock, addr):
        if isinstance(getattr(req.body, "reader", None), ChunkedReader):
            try:
                _read_chunked_body(req, self.settings.max_upload_bytes)
            except BufferFull:
                raise WorkerBusy() from None
            except TimeoutError as exc:  # a pause over BODY_TIMEOUT_SECONDS, or under MIN_UPLOAD_RATE
                raise BodyTimeout(str(exc)) from None
        return super().handle_request(listener_name, req, sock, addr)

    def handle_error(self, req, client, addr, exc):
        status, reason, code, message = _describe_error(exc, self.settings)
        if status >= 500 and status != 503:
            self.log.exception("Error handling request", exc_info=exc)
        else:
            self.log.warning("Invalid request from ip=%s: %s", (addr or ("",))[0], message)
        path = getattr(req, "path", None) or "/"
        headers = {"Retry-After": "1"} if status == 503 else {}
        _send_quietly(getattr(client, "raw", client), json_error_response(status, reason, code, message, path,
                                                                           headers))


class ServiceWorker(RequestGuards, GeventWorker):
    """gunicorn's gevent worker with per-phase timeouts, fairness, balance, bounded requests and a drain (module
    docstring)."""

    # Set by gunicorn.conf.py's pre_fork hook, in the master.
    connection_counts: ConnectionCounts | None = None
    slot: int | None = None

    def init_process(self):
        self.budget = BufferBudget(self.settings.max_buffered_bytes)
        return_large_allocations_to_the_system()
        self.draining = False
        self.stopping = gevent.event.Event()  # set when the drain is over
        self.connections: set[TimedConnection] = set()
        super().init_process()

    def timeout_ctx(self):
        return contextlib.nullcontext()  # TimedConnection times every read itself

    def run(self):
        if self.connection_counts is not None:
            self.connection_counts.join(self.slot)
        servers = []
        for sock in self.sockets:
            sock.setblocking(1)
            handle = lambda client, addr, listener=sock: self.handle(listener, client, addr)  # noqa: E731
            server = BalancedServer(sock, handle, Pool(self.worker_connections), self.connection_counts, self.slot)
            server.start()
            servers.append(server)

        while self.alive:
            self.notify()
            self.stopping.wait(1.0)

        for server in servers:
            server.close()  # stop accepting; connections already open keep going
        for connection in list(self.connections):
            if connection.phase == "idle":
                connection.greenlet.kill(ConnectionIdle, block=False)
        deadline = time.monotonic() + self.settings.graceful_timeout_seconds  # the master allows drain + this
        while any(server.pool.free_count() != server.pool.size for server in servers):
            if time.monotonic() >= deadline:
                self.log.warning("Worker graceful timeout (pid:%s)", self.pid)
                for server in servers:
                    server.stop(timeout=1)
                return
            self.notify()
            gevent.sleep(0.05)

    def handle(self, listener, client, addr):
        connection = TimedConnection(client, self.settings, self.budget)
        self.connections.add(connection)
        try:
            super().handle(listener, connection, addr)
        finally:
            self.connections.discard(connection)
            if self.connection_counts is not None:
                self.connection_counts.add(self.slot, -1)

    def handle_request(self, listener_name, req, sock, addr):
        sock.start_body(req)
        if self.draining or not self.alive or self._holds_too_many():
            req.must_close = True  # the response says "Connection: close"
        try:
            return super().handle_request(listener_name, req, sock, addr)
        finally:
            sock.release()  # the app is done with the request's bytes
            _drain_unread_body(req, sock, self.settings.max_upload_bytes)
            sock.start_idle()
            gevent.idle()  # let every other ready connection have its turn first

    def _holds_too_many(self) -> bool:
        """Kept-alive connections pile up on the workers that were accepting when they opened (a replaced
        worker's clients all reconnect to the others); closing one after its response moves its client to
        a less-loaded worker."""
        return self.connection_counts is not None and self.connection_counts.excess(self.slot) >= 2

    def handle_error(self, req, client, addr, exc):
        if isinstance(exc, ConnectionIdle):
            return
        if isinstance(exc, HeaderTimeout):
            metrics.series(metrics.CLIENT_TIMEOUTS, "header").inc()
        super().handle_error(req, client, addr, exc)

    def handle_exit(self, sig, frame):
        """SIGTERM: drain first, in a greenlet of its own (a signal handler must not block)."""
        if not self.draining:
            self.draining = True
            gevent.spawn(self._drain)

    def _drain(self) -> None:
        from service.app import STATE_KEY  # here, not at the top: the worker also fronts apps that are not ours

        state = getattr(self.wsgi, "extensions", {}).get(STATE_KEY)
        if state is not None:
            state.draining.set()  # /readyz answers 503 from now on
        self.log.info("Draining for %g s before stopping (pid:%s)", self.settings.drain_seconds, self.pid)
        gevent.sleep(self.settings.drain_seconds)
        self.alive = False
        self.stopping.set()


class SyncServiceWorker(RequestGuards, SyncWorker):
    """gunicorn's sync worker (``WORKER_CLASS=sync``) with the service's chunked-body bound and JSON errors; it
    serves one request at a time, so its memory is one request's whatever the budget."""

    def init_process(self):
        return_large_allocations_to_the_system()
        super().init_process()


def return_large_allocations_to_the_system() -> None:
    """Have glibc map every allocation over 256 KiB on its own, so that freeing it gives the memory back.

    By default glibc raises its mmap threshold each time it frees a large mapped block, after which large
    buffers come from the heap, which does not shrink below a live allocation at its top: after three bursts of
    large uploads a worker held 45-50 MB more than at rest; with the threshold fixed, 10-12 MB
    (``python bench/hostile.py``, docs/operations.md#limits). Small allocations, the whole of a normal request,
    are unaffected. Elsewhere than glibc this does nothing.
    """
    try:
        ctypes.CDLL("libc.so.6").mallopt(M_MMAP_THRESHOLD, LARGE_ALLOCATION_BYTES)
    except (OSError, AttributeError):
        pass


def _read_chunked_body(req, max_bytes: int) -> None:
    """Read a chunked body whole, refusing it past ``max_bytes``, and hand it on as a body of known length: the
    app then sees every body the same way, and never a truncated one."""
    data = req.body.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise BodyTooLarge()
    req.body = Body(LengthReader(_Replay(data), len(data)))
    req.headers = [(name, value) for name, value in req.headers if name not in ("TRANSFER-ENCODING",
                                                                                 "CONTENT-LENGTH")]
    req.headers.append(("CONTENT-LENGTH", str(len(data))))


class _Replay:
    """A gunicorn unreader over bytes already received."""

    def __init__(self, data: bytes):
        self.data = data

    def read(self, size=None, read_ahead=0):
        size = len(self.data) if size is None else size
        out, self.data = self.data[:size], self.data[size:]
        return out


def _drain_unread_body(req, sock: TimedConnection, max_bytes: int) -> None:
    """What the app left of a body is read and dropped before the next request, still under the body's
    timeouts and outside the budget; a remainder over ``max_bytes`` (a body refused for its size) is not
    worth reading: the connection closes, lingering a moment so the client sees the answer."""
    reader = getattr(req.body, "reader", None)
    if req.must_close or getattr(req.body, "failed", False):
        sock.linger = True
        return
    if not isinstance(reader, LengthReader) or reader.length == 0:
        return
    if reader.length > max_bytes:
        req.must_close = True
        sock.linger = True
        return
    sock.charging = False
    try:
        while req.body.read(65536):
            pass
    except Exception:  # noqa: BLE001 - a client that stops sending loses its connection, nothing else
        req.must_close = True


def _describe_error(exc: BaseException, settings: Settings) -> tuple[int, str, str, str]:
    """(status, reason, code, message) of an error raised before or around the app."""
    if isinstance(exc, HeaderTimeout):
        return 408, "Request Timeout", "request_timeout", (
            f"the request headers did not arrive within {settings.header_timeout_seconds:g} s "
            "(HEADER_TIMEOUT_SECONDS)")
    if isinstance(exc, HeaderTooLarge):
        return 431, "Request Header Fields Too Large", "headers_too_large", (
            f"the request line and headers are larger than {settings.max_header_bytes} bytes (MAX_HEADER_BYTES)")
    if isinstance(exc, WorkerBusy):
        return 503, "Service Unavailable", "busy", (
            f"this worker holds {settings.max_buffered_bytes >> 20} MiB of requests in memory "
            "(MAX_BUFFERED_BYTES); retry shortly")
    if isinstance(exc, BodyTimeout):
        metrics.series(metrics.CLIENT_TIMEOUTS, "body").inc()
        return 408, "Request Timeout", "request_timeout", str(exc) or (
            f"the request body stopped arriving for {settings.body_timeout_seconds:g} s (BODY_TIMEOUT_SECONDS)")
    if isinstance(exc, BodyTooLarge):
        return 413, "Content Too Large", "payload_too_large", (
            f"the upload is larger than the limit of {settings.max_upload_bytes} bytes (MAX_UPLOAD_BYTES)")
    if isinstance(exc, http_errors.NoMoreData):
        return 400, "Bad Request", "bad_request", "the request ended before its body did"
    for kind, status, reason, code in PARSE_ERRORS:
        if isinstance(exc, kind):
            detail = str(exc)[:200]
            return status, reason, code, f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__
    return 500, "Internal Server Error", "internal_error", "the server failed to handle this request"


def json_error_response(status: int, reason: str, code: str, message: str, path: str = "/",
                        headers: dict[str, str] | None = None) -> bytes:
    """A complete HTTP response with the JSON error body of the protocol ``path`` belongs to, for a connection
    about to close."""
    from service.protocols import protocol_of  # loaded by the service's app already; imported on first use

    body = orjson.dumps(protocol_of(path).error_body(code, message))
    head = [f"HTTP/1.1 {status} {reason}", "Content-Type: application/json", "Connection: close",
            "X-Content-Type-Options: nosniff", f"Content-Length: {len(body)}",
            *(f"{name}: {value}" for name, value in (headers or {}).items())]
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body


def request_timeout_response(message: str) -> bytes:
    """A complete HTTP 408 response with the service's JSON error body, for a connection about to close."""
    return json_error_response(408, "Request Timeout", "request_timeout", message)


def _send_quietly(client, data: bytes, linger_seconds: float = 1.0) -> None:
    """Send a last response, then read and drop what the client still sends for a moment before the caller
    closes: closing with unread bytes makes the kernel reset the connection, which can destroy the response
    before the client reads it (a "lingering close", as nginx does)."""
    try:
        client.settimeout(linger_seconds)
        client.sendall(data)
    except OSError:
        return  # the client is gone: the caller closes
    _linger(client, linger_seconds)


def _linger(client, seconds: float = 1.0, max_bytes: int = 1 << 20) -> None:
    """Stop sending, then read and drop what the client still sends, for at most ``seconds`` and ``max_bytes``."""
    try:
        client.settimeout(seconds)
        client.shutdown(socket.SHUT_WR)
        deadline, dropped = time.monotonic() + seconds, 0
        while time.monotonic() < deadline and dropped < max_bytes:
            data = client.recv(65536)
            if not data:
                break
            dropped += len(data)
    except OSError:
        pass  # the client is gone, or kept sending: the caller closes either way
