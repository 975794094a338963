"""Prometheus metrics, defined in one place.

Under gunicorn the workers share values through prometheus-client's multiprocess mode
(``PROMETHEUS_MULTIPROC_DIR``, set up by gunicorn.conf.py); label values are always bounded: endpoint rules,
published model names and their classes, status codes, protocol names.
"""

from __future__ import annotations

import functools
import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

PREFIX = "classifier"
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

REQUESTS = Counter(f"{PREFIX}_http_requests_total", "HTTP requests by protocol, endpoint, model and status",
                   ["protocol", "endpoint", "model", "status"])
REQUEST_DURATION = Histogram(f"{PREFIX}_http_request_duration_seconds", "Whole request time by endpoint",
                             ["endpoint"], buckets=LATENCY_BUCKETS)
DECODE_DURATION = Histogram(f"{PREFIX}_decode_duration_seconds", "Decode and normalize time per request",
                            ["model"], buckets=LATENCY_BUCKETS)
INFERENCE_DURATION = Histogram(f"{PREFIX}_inference_duration_seconds", "Model inference time per request",
                               ["model"], buckets=LATENCY_BUCKETS)
PREDICTIONS = Counter(f"{PREFIX}_predictions_total", "Top-1 predictions by model and class", ["model", "label"])
IMAGES_PER_REQUEST = Histogram(f"{PREFIX}_images_per_request", "Images in one /predict request", ["model"],
                               buckets=(1, 2, 4, 8, 16, 32, 64, 128))
MODEL_INFO = Gauge(f"{PREFIX}_model_info", "1 for the version each model serves", ["model", "version"],
                   multiprocess_mode="livemax")
MODEL_RELOADS = Counter(f"{PREFIX}_model_reloads_total", "Model version loads by result (loaded or refused)",
                        ["model", "result"])

CLIENT_TIMEOUTS = Counter(f"{PREFIX}_client_timeouts_total",
                          "Requests cut off with a 408 because the client was too slow, by phase (header, body)",
                          ["phase"])


@functools.lru_cache(maxsize=4096)
def series(metric, *label_values: str):
    """``metric.labels(*label_values)``, looked up once: the lookup takes a lock and builds a key on every call,
    which on the request path costs as much as the update itself. Label values are bounded, so is the cache."""
    return metric.labels(*label_values)


def render_metrics() -> tuple[bytes, str]:
    """The exposition text: every worker's values when running under gunicorn, this process's otherwise."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(), CONTENT_TYPE_LATEST
