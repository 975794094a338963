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
  is served again and again while others starve (p99 of 100 ms instead of 5 ms under a keep-alive load).
- **Balance across workers.** Kept-alive connections stay with the worker that accepted them, and an idle
  worker accepts a whole burst. A worker holding more connections than the least-loaded live worker lets a
  new connection wait a moment for another worker (at most ``MAX_ACCEPT_DEFER_SECONDS``).
- **Drain on SIGTERM.** For ``DRAIN_SECONDS`` everything is still served and accepted, but ``/readyz``
  answers 503 and each response closes its connection, so load balancers move away; then the worker stops
  accepting, closes idle connections, and lets requests in flight finish (``GRACEFUL_TIMEOUT_SECONDS``).
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
from gunicorn.workers.ggevent import GeventWorker

from service import metrics
from service.errors import error_body
from service.settings import Settings

MAX_ACCEPT_DEFER_SECONDS = 0.02
ACCEPT_RETRY_SECONDS = 0.002
UNUSED_SLOT = -1


class ConnectionIdle(Exception):
    """No byte of a next request arrived in time, or the worker is stopping: close quietly."""


class HeaderTimeout(Exception):
    """A request's headers did not complete in time: answer 408 and close."""


class TimedConnection:
    """A client socket whose reads time out by the phase of the connection (see the module's docstring).

    gunicorn's parser reads through ``recv``; everything else is the socket's own (``raw``).
    """

    def __init__(self, sock, settings: Settings):
        self.raw = sock
        self._settings = settings
        self.phase = "header"  # a new connection is expected to send its first request at once
        self._deadline = time.monotonic() + settings.header_timeout_seconds
        self._received = False  # any byte of the request being read yet
        self._request = None  # gunicorn's request being served, in the body phase
        self.greenlet = gevent.getcurrent()

    def __getattr__(self, name):
        return getattr(self.raw, name)

    def recv(self, size: int) -> bytes:
        if self.phase == "body":  # the socket's timeout is BODY_TIMEOUT_SECONDS, per read
            try:
                return self.raw.recv(size)
            except TimeoutError:
                # The app answers 408 (service.errors); the rest of the body will not come, so the
                # connection cannot carry another request.
                self._request.must_close = True
                raise
        remaining = self._deadline - time.monotonic()
        try:
            if remaining <= 0:
                raise TimeoutError
            self.raw.settimeout(remaining)
            data = self.raw.recv(size)
        except TimeoutError:
            raise (HeaderTimeout if self._received else ConnectionIdle)() from None
        if data and not self._received:
            self._received = True
            if self.phase == "idle":
                self.phase = "header"
                self._deadline = time.monotonic() + self._settings.header_timeout_seconds
        return data

    def start_body(self, request) -> None:
        self.phase = "body"
        self._request = request
        self.raw.settimeout(self._settings.body_timeout_seconds)

    def start_idle(self) -> None:
        self.phase = "idle"
        self._request = None
        self._received = False
        self._deadline = time.monotonic() + self._settings.keepalive_seconds


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


class ServiceWorker(GeventWorker):
    """gunicorn's gevent worker with per-phase timeouts, fairness, balance and a drain (module docstring)."""

    # Set by gunicorn.conf.py's pre_fork hook, in the master.
    connection_counts: ConnectionCounts | None = None
    slot: int | None = None

    def init_process(self):
        self.settings = Settings.from_env()
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
        deadline = time.monotonic() + self.settings.graceful_timeout_seconds
        while any(server.pool.free_count() != server.pool.size for server in servers):
            if time.monotonic() >= deadline:
                self.log.warning("Worker graceful timeout (pid:%s)", self.pid)
                for server in servers:
                    server.stop(timeout=1)
                return
            self.notify()
            gevent.sleep(0.05)

    def handle(self, listener, client, addr):
        connection = TimedConnection(client, self.settings)
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
            _send_quietly(client.raw, request_timeout_response(
                f"the request headers did not arrive within {self.settings.header_timeout_seconds:g} s "
                "(HEADER_TIMEOUT_SECONDS)"))
            return
        super().handle_error(req, client, addr, exc)

    def handle_exit(self, sig, frame):
        """SIGTERM: drain first, in a greenlet of its own (a signal handler must not block)."""
        if not self.draining:
            self.draining = True
            gevent.spawn(self._drain)

    def _drain(self) -> None:
        draining = getattr(self.wsgi, "extensions", {}).get("draining")
        if draining is not None:
            draining.set()  # /readyz answers 503 from now on
        self.log.info("Draining for %g s before stopping (pid:%s)", self.settings.drain_seconds, self.pid)
        gevent.sleep(self.settings.drain_seconds)
        self.alive = False
        self.stopping.set()


def request_timeout_response(message: str) -> bytes:
    """A complete HTTP 408 response with the service's JSON error body, for a connection about to close."""
    body = orjson.dumps(error_body("request_timeout", message))
    return (b"HTTP/1.1 408 Request Timeout\r\nContent-Type: application/json\r\nConnection: close\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)


def _send_quietly(client, data: bytes, linger_seconds: float = 1.0) -> None:
    """Send a last response, then read and drop what the client still sends for a moment before the caller
    closes: closing with unread bytes makes the kernel reset the connection, which can destroy the response
    before the client reads it (a "lingering close", as nginx does)."""
    try:
        client.settimeout(linger_seconds)
        client.sendall(data)
        client.shutdown(socket.SHUT_WR)
        deadline = time.monotonic() + linger_seconds
        while time.monotonic() < deadline and client.recv(65536):
            pass
    except OSError:
        pass  # the client is gone, or kept sending: the caller closes either way
