"""gunicorn settings: bind address, workers and metrics set-up, all from the environment."""

import os
import shutil
import tempfile

from service.settings import Settings

settings = Settings.from_env()

# Shared metric files for all workers; must be in the environment before any worker imports prometheus_client.
if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="classifier-metrics-")
_metrics_dir = os.environ["PROMETHEUS_MULTIPROC_DIR"]
shutil.rmtree(_metrics_dir, ignore_errors=True)  # values from an earlier run must not be counted again
os.makedirs(_metrics_dir, exist_ok=True)

wsgi_app = "service.app:create_app()"
bind = f"{settings.host}:{settings.port}"
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
worker_class = "sync"
timeout = 30
graceful_timeout = 20  # on SIGTERM, in-flight requests get this long to finish
max_requests = 0
accesslog = "-" if settings.access_log else None
errorlog = "-"
loglevel = os.environ.get("LOG_LEVEL", "info")
# Inference runs one thread per worker; keep BLAS and ONNX Runtime from spawning more.
raw_env = ["OMP_NUM_THREADS=1", "OPENBLAS_NUM_THREADS=1"]


def child_exit(server, worker):
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)
