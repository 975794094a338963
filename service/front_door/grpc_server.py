"""The gRPC side (KServe V2 over gRPC, service/protocols/kserve_v2_grpc), run beside gunicorn's HTTP workers.

Why processes of its own: gunicorn's workers are gevent's, and grpcio's server runs its own threads, which do not
mix with a monkey-patched process; a plain process per CPU, each with a thread pool, keeps both sides simple.
Each builds the same state as an HTTP worker (``service.app.build_state``: the registry with its reload, the
inference path, the monitor, the API keys) and binds ``GRPC_PORT`` with ``SO_REUSEPORT``, so the kernel spreads
connections over them.

    python -m service.front_door.grpc_server           # the supervisor: one server per worker, restarted if one dies
    python -m service.front_door.grpc_server --serve   # one server (what the supervisor starts)

gunicorn's master starts the supervisor when it is ready, forwards its stop signals to it (so both sides drain
together) and waits for it on exit (service/front_door/gunicorn.conf.py). On SIGTERM a server reports
NOT_SERVING (``grpc.health.v1``) and false to ``ServerReady`` for ``DRAIN_SECONDS`` while it still serves, then
lets calls in flight finish for ``GRACEFUL_TIMEOUT_SECONDS``, as the HTTP workers do; SIGINT and SIGQUIT stop
it at once, as they stop gunicorn.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from service.settings import Settings

log = logging.getLogger("service.grpc")
PR_SET_PDEATHSIG = 1
RESTART_DELAY_SECONDS = 1.0


def die_with_parent() -> None:
    """In a child, before it runs: the kernel sends it SIGTERM when its parent dies, however the parent died."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass


def port_in_use(host: str, port: int) -> bool:
    """Whether another process holds the port. Bound without SO_REUSEPORT, so even a server that shares its port
    (another instance's gRPC processes) is seen: two instances never split one port's calls between them."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((host, port))
        except OSError as error:
            return error.errno == errno.EADDRINUSE
    return False


def start() -> subprocess.Popen:
    """The supervisor, started by gunicorn's master."""
    return _spawn()


def _spawn(*args: str) -> subprocess.Popen:
    """This module as a child process that dies with its parent."""
    return subprocess.Popen([sys.executable, "-m", "service.front_door.grpc_server", *args],
                            preexec_fn=die_with_parent)


def _stopped_by_signals() -> tuple[threading.Event, list[int]]:
    """Set when SIGTERM, SIGINT or SIGQUIT arrives; the list says which came first."""
    stopping, received = threading.Event(), []
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
        signal.signal(signum, lambda signum, _: (received.append(signum), stopping.set()))
    return stopping, received


# --- the supervisor -------------------------------------------------------------------------------------------

def supervise(settings: Settings) -> int:
    stopping, received = _stopped_by_signals()
    count = settings.sizing.workers
    servers = [_spawn("--serve") for _ in range(count)]
    log.info("gRPC: %d server(s) on %s:%d", count, settings.host, settings.grpc_port)
    while not stopping.wait(0.2):
        for index, server in enumerate(servers):
            if server.poll() is not None:
                log.error("gRPC server %d exited with %s; starting another", server.pid, server.returncode)
                _forget(server.pid)
                if stopping.wait(RESTART_DELAY_SECONDS):
                    break
                servers[index] = _spawn("--serve")
    for server in servers:  # the signal the master got: SIGTERM drains, SIGINT and SIGQUIT stop at once
        if server.poll() is None:
            server.send_signal(received[0])
    deadline = time.monotonic() + settings.shutdown_seconds + 1
    for server in servers:
        try:
            server.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        _forget(server.pid)
    return 0


def _forget(pid: int) -> None:
    """A dead server's live gauges leave the shared metrics (as gunicorn.conf.py does for its workers)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)


# --- one server -----------------------------------------------------------------------------------------------

def serve(settings: Settings) -> int:
    import grpc
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc

    from service.app import build_state
    from service.protocols.kserve_v2_grpc import grpc_predict_v2_pb2_grpc as pb_grpc
    from service.protocols.kserve_v2_grpc.codec import SERVICE_NAME
    from service.protocols.kserve_v2_grpc.servicer import Call, InferenceServicer

    stopping, received = _stopped_by_signals()
    call = Call()
    state = build_state(settings, watch=True, api_key=lambda: call.key)
    server = grpc.server(
        ThreadPoolExecutor(settings.grpc_threads, thread_name_prefix="grpc"),
        # Past this many calls at once (running or queued), new ones get RESOURCE_EXHAUSTED: with messages of at
        # most MAX_UPLOAD_BYTES, a server holds at most this many of them.
        maximum_concurrent_rpcs=settings.grpc_max_calls,
        options=[("grpc.so_reuseport", 1), ("grpc.max_receive_message_length", settings.max_upload_bytes),
                 ("grpc.max_send_message_length", -1)])
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceServicer(state, call), server)
    checks = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(checks, server)
    serving = None

    def follow_readiness() -> None:
        """Health says what ``ServerReady`` says: models loaded, no drain. Set before the port opens, so no
        check sees the servicer's default (SERVING for "") or NOT_FOUND."""
        nonlocal serving
        ready = state.ready()
        if ready != serving:
            status = health_pb2.HealthCheckResponse.SERVING if ready else health_pb2.HealthCheckResponse.NOT_SERVING
            for service in ("", SERVICE_NAME):
                checks.set(service, status)
            serving = ready

    follow_readiness()
    server.add_insecure_port(f"{settings.host}:{settings.grpc_port}")
    server.start()
    while not stopping.wait(0.25):
        follow_readiness()
    state.draining.set()
    for service in ("", SERVICE_NAME):
        checks.set(service, health_pb2.HealthCheckResponse.NOT_SERVING)
    if received[0] != signal.SIGTERM:  # SIGINT (Ctrl-C) and SIGQUIT stop at once, as gunicorn's workers do
        server.stop(0).wait()
        return 0
    time.sleep(settings.drain_seconds)
    server.stop(settings.graceful_timeout_seconds).wait()
    return 0


def main(argv: list[str]) -> int:
    settings = Settings.from_env()
    logging.basicConfig(level=settings.log_level.upper(), stream=sys.stderr,
                        format="[%(asctime)s] [%(process)d] [%(levelname)s] %(message)s")
    if not settings.grpc_port:
        return 0
    return serve(settings) if argv[:1] == ["--serve"] else supervise(settings)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
