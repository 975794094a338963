"""gunicorn settings, all from ``Settings`` (the environment): bind address, workers, the front door's timeouts."""

import math
import os
import shutil
import signal
import tempfile
import time

from service.settings import Settings

settings = Settings.from_env()

# Shared metric files for all workers; must be in the environment before any worker imports prometheus_client.
if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="classifier-metrics-")
_metrics_dir = os.environ["PROMETHEUS_MULTIPROC_DIR"]
shutil.rmtree(_metrics_dir, ignore_errors=True)  # values from an earlier run must not be counted again
os.makedirs(_metrics_dir, exist_ok=True)

wsgi_app = "service.app:create_app()"
bind = [f"{settings.host}:{settings.port}"]
if settings.metrics_port:  # /metrics alone on its own port (service.app serves each endpoint on its port only)
    bind.append(f"{settings.host}:{settings.metrics_port}")
workers = settings.workers
worker_class = settings.gunicorn_worker_class
worker_connections = settings.worker_connections
# The sync worker has no keep-alive; the gevent worker applies it itself.
keepalive = math.ceil(settings.keepalive_seconds)
timeout = math.ceil(settings.worker_timeout_seconds)
# The master's limit after SIGTERM covers the workers' drain and then their requests in flight.
graceful_timeout = settings.shutdown_seconds
max_requests = 0
# gunicorn's control socket is unused here, and its one path per user would be shared by every instance.
control_socket_disable = True
accesslog = "-" if settings.access_log else None
errorlog = "-"
loglevel = settings.log_level
# Inference runs one thread per worker; keep BLAS and ONNX Runtime from spawning more.
raw_env = ["OMP_NUM_THREADS=1", "OPENBLAS_NUM_THREADS=1"]

if settings.worker_class == "gevent":
    from service.front_door.worker import ConnectionCounts

    # Open connections per worker, shared with the workers (they are forked from this process).
    _connection_counts = ConnectionCounts(slots=max(64, 2 * settings.workers))


def on_starting(server):
    """Say how the workers were sized, and warn when a hand-set size asks for more CPUs than the cgroup gives;
    refuse to start when the gRPC port is taken (by another instance, say), before anything binds."""
    if settings.grpc_port:
        from service.front_door import grpc_server

        if grpc_server.port_in_use(settings.host, settings.grpc_port):
            raise RuntimeError(f"GRPC_PORT {settings.grpc_port} is in use on {settings.host}: stop what holds it, "
                               "pick another port, or set GRPC_PORT=0 to serve HTTP only")
    sizing = settings.sizing
    server.log.info("sizing: %s", sizing.describe())
    if sizing.workers * sizing.threads > max(1.0, sizing.cpus) + 1e-9:
        server.log.warning("sizing: %d workers x %d threads need more than the %g CPUs this process may use; "
                           "expect throttling", sizing.workers, sizing.threads, sizing.cpus)


def pre_fork(server, worker):
    """In the master, before the worker is forked: it takes these settings (read once, here) with it."""
    worker.settings = settings
    if settings.worker_class == "gevent":
        worker.connection_counts = _connection_counts
        worker.slot = _connection_counts.claim_slot({w.slot for w in server.WORKERS.values()})


def child_exit(server, worker):
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)
    if getattr(worker, "slot", None) is not None:
        worker.connection_counts.free_slot(worker.slot)


_grpc = None  # the gRPC supervisor (service/front_door/grpc_server.py), started once the HTTP side is ready


def when_ready(server):
    """Start the gRPC side, and hand it the master's stop signals as they arrive, so both sides drain at once."""
    global _grpc
    if not settings.grpc_port:
        return
    from service.front_door import grpc_server

    _grpc = grpc_server.start()
    for name, signum in (("handle_term", signal.SIGTERM), ("handle_int", signal.SIGINT),
                         ("handle_quit", signal.SIGQUIT)):
        setattr(server, name, _passing_to_grpc(signum, getattr(server, name)))


def _passing_to_grpc(signum, handler):
    """The master's handler of a stop signal, passing the signal on to the gRPC side first: SIGTERM drains both
    sides together, SIGINT and SIGQUIT stop both at once."""
    def handle():
        if _grpc is not None and _grpc.poll() is None:
            _grpc.send_signal(signum)
        return handler()
    return handle


def on_exit(server):
    """Wait for the gRPC side to finish its drain (it got SIGTERM with the workers), then make sure it is gone."""
    if _grpc is None:
        return
    deadline = time.monotonic() + settings.shutdown_seconds + 2
    while time.monotonic() < deadline:
        try:
            os.kill(_grpc.pid, 0)  # the master reaps every child, this one too: gone means exited
        except ProcessLookupError:
            return
        if _grpc.poll() is not None:
            return
        time.sleep(0.1)
    _grpc.kill()
