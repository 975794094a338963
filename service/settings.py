"""All of the service's configuration, read once from the environment into one typed object.

Each setting is declared once, below: its variable, type, default, bounds and what it does. The configuration
table in docs/operations.md is ``python -m service.settings``'s output (a test keeps them equal); gunicorn's own
settings are derived from these in service/front_door/gunicorn.conf.py.
"""

from __future__ import annotations

import functools
import math
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from contract.config import Locations, SettingError, declared, from_environment, markdown_table, setting
from contract.monitoring import LOW_CONFIDENCE_THRESHOLD
from service.sizing import Sizing, cpu_budget, size

MIB = 1024 * 1024
RUNTIME_CHOICES = ("auto", "onnx_int8", "onnx", "keras")
WORKER_CLASSES = {"gevent": "service.front_door.worker.ServiceWorker",
                  "sync": "service.front_door.worker.SyncServiceWorker"}
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


@dataclass(frozen=True)
class Settings(Locations):
    """The service's settings (and, from ``Locations``, where the models and the feedback store are)."""

    default_model: str = setting("DEFAULT_MODEL", "fashion_mnist", "model used when a request names none")
    runtime: str = setting(
        "MODEL_RUNTIME", "auto", "`auto`: a version's int8 ONNX model where it has one, else its float32 one; or "
        "always `onnx_int8`, `onnx` (float32), or `keras` (the reference; needs the `train` extra)",
        choices=RUNTIME_CHOICES)
    reload_interval_seconds: float = setting("MODEL_RELOAD_SECONDS", 2.0, "how often workers look for a newly "
                                             "published current version", above=0)
    default_top_k: int = setting("DEFAULT_TOP_K", 5, "classes listed in `top`", minimum=1)
    # What a request may cost (docs/operations.md#limits); each is checked before the work it bounds starts.
    max_upload_bytes: int = setting("MAX_UPLOAD_BYTES", 10 * MIB, "largest request body, however it is framed",
                                    minimum=1)
    max_image_pixels: int = setting("MAX_IMAGE_PIXELS", 40_000_000, "largest image an upload may declare, "
                                    "width x height", minimum=1)
    max_decode_bytes: int = setting("MAX_DECODE_BYTES", 64 * MIB, "memory decoding one image may take at its "
                                    "peak, priced from its header", minimum=1)
    max_request_pixels: int = setting("MAX_REQUEST_PIXELS", 16_000_000, "pixels decoded for all of a request's "
                                      "images together", minimum=1)
    max_images_per_request: int = setting("MAX_IMAGES_PER_REQUEST", 64, "images in one request", minimum=1)
    max_header_bytes: int = setting("MAX_HEADER_BYTES", 64 * 1024, "a request's line and headers together",
                                    minimum=1)
    max_buffered_bytes: int = setting("MAX_BUFFERED_BYTES", 32 * MIB, "bytes of requests one worker holds in "
                                      "memory, over all its connections; past it, 503", minimum=1)
    min_upload_rate: int = setting("MIN_UPLOAD_RATE", 32 * 1024, "bytes/s a body must average once it has taken "
                                   "`BODY_TIMEOUT_SECONDS`; slower, 408", minimum=1)
    # The HTTP front door (service/front_door, docs/operations.md#the-front-door-slow-clients-keep-alive-drain).
    host: str = setting("HOST", "127.0.0.1", "address to bind", shown="127.0.0.1 (0.0.0.0 in the container)")
    port: int = setting("PORT", 8000, "port to listen on", minimum=1, maximum=65535)
    metrics_port: int | None = setting("METRICS_PORT", None, "set, `/metrics` is served on this port (same "
                                       "`HOST`) and only there, e.g. to keep it off a public route",
                                       minimum=1, maximum=65535, shown="unset: on `PORT`")
    grpc_port: int = setting("GRPC_PORT", 8081, "port of the KServe V2 gRPC service (same `HOST`); 0 turns gRPC "
                             "off", minimum=0, maximum=65535)
    grpc_threads: int = setting("GRPC_THREADS", 4, "threads serving gRPC calls in each gRPC process (one process "
                                "per worker)", minimum=1)
    grpc_max_calls: int = setting("GRPC_MAX_CALLS", 16, "gRPC calls a gRPC process holds at once, running or "
                                  "queued; past it, RESOURCE_EXHAUSTED", minimum=1)
    web_concurrency: int | None = setting(
        "WEB_CONCURRENCY", None, "gunicorn worker processes; unset: one per CPU the cgroup's quota and cpuset "
        "allow, at least 1 (`/models` → `serving` says what was chosen)", minimum=1, shown="one per CPU")
    runtime_threads: int | None = setting(
        "RUNTIME_THREADS", None, "ONNX Runtime threads per worker; unset: the CPUs left per worker, at least 1",
        minimum=1, shown="CPUs / workers")
    worker_class: str = setting(
        "WORKER_CLASS", "gevent", "`gevent`: the service's worker; `sync`: gunicorn's one-request-at-a-time "
        "worker, no keep-alive, stalled by slow clients", choices=tuple(WORKER_CLASSES))
    worker_connections: int = setting("WORKER_CONNECTIONS", 1000, "open connections per worker, idle kept-alive "
                                      "ones included; past it, new ones wait in the listen queue", minimum=1)
    header_timeout_seconds: float = setting("HEADER_TIMEOUT_SECONDS", 10.0, "a request's headers must arrive "
                                            "within this, from their first byte to their end; else 408", above=0)
    body_timeout_seconds: float = setting("BODY_TIMEOUT_SECONDS", 30.0, "the longest pause while a body arrives "
                                          "or a response leaves; else 408", above=0)
    keepalive_seconds: float = setting("KEEPALIVE_SECONDS", 65.0, "an idle kept-alive connection is closed after "
                                       "this; above the usual 60 s of load balancers, so they close first",
                                       above=0)
    drain_seconds: float = setting("DRAIN_SECONDS", 5.0, "after SIGTERM, `/readyz` answers 503 while everything "
                                   "is still served, this long", minimum=0)
    graceful_timeout_seconds: float = setting("GRACEFUL_TIMEOUT_SECONDS", 20.0, "then requests in flight get "
                                              "this long to finish", above=0)
    worker_timeout_seconds: float = setting("WORKER_TIMEOUT_SECONDS", 30.0, "a worker that stops answering its "
                                            "master this long is killed and replaced", above=0)
    access_log: bool = setting("ACCESS_LOG", False, "`1` logs every request")
    log_level: str = setting("LOG_LEVEL", "info", "gunicorn's and the service's log level", choices=LOG_LEVELS)
    # Monitoring (service/observability, docs/operations.md#monitoring).
    input_monitoring: bool = setting("INPUT_MONITORING", True, "input statistics, confidence and drift metrics "
                                     "for every image; `off` saves their cost")
    low_confidence_threshold: float = setting("LOW_CONFIDENCE_THRESHOLD", LOW_CONFIDENCE_THRESHOLD, "a top-1 "
                                              "probability below this counts in "
                                              "`classifier_low_confidence_predictions_total`", above=0, maximum=1)
    drift_window_images: int = setting("DRIFT_WINDOW_IMAGES", 1000, "drift is measured over the last this-many "
                                       "images of a model, all workers together", minimum=10)
    shadow_fraction: float = setting("SHADOW_FRACTION", 1.0, "share of requests also run through a model's "
                                     "candidate version while one is on trial (its answer recorded, never sent); "
                                     "0 turns shadowing off", minimum=0, maximum=1)
    canary_percent: float = setting("CANARY_PERCENT", 0.0, "percentage of inputs a model's candidate answers "
                                    "instead of the current version while one is on trial, chosen by each "
                                    "request's first prediction id (a retried request gets the same version); "
                                    "requests that name a version are never moved", minimum=0, maximum=100)
    # API keys (service/access, docs/operations.md#api-keys): off unless a place for keys is set.
    api_keys_file: Path | None = setting("API_KEYS_FILE", None, "a keys file made by `python -m service keys add`; "
                                         "set, every inference and model endpoint needs a key",
                                         shown="unset: no keys")
    api_keys_database: bool = setting("API_KEYS_DATABASE", False, "`1` keeps keys and quotas in `DATABASE_URL`'s "
                                      "database instead, so quotas hold across replicas")
    api_keys_secret: str = setting("API_KEYS_SECRET", "", "the server secret keys are hashed with (HMAC-SHA256); "
                                   "needed with either of the two above", secret=True)
    # Feedback (service/feedback, docs/feedback.md): off until a token is set.
    feedback_token: str = setting("FEEDBACK_TOKEN", "", "the bearer token for `POST /feedback` and `DELETE "
                                  "/feedback/...`; unset, feedback is off", secret=True)
    feedback_rate_per_minute: int = setting("FEEDBACK_RATE_PER_MINUTE", 600, "feedback requests a worker "
                                            "accepts a minute, in bursts of as many; past it, 429", minimum=1)
    feedback_max_items: int = setting("FEEDBACK_MAX_ITEMS", 100_000, "feedback items a model may have; past it, "
                                      "507", minimum=1)
    retain_predictions: bool = setting("RETAIN_PREDICTIONS", False, "`1` keeps each served input so feedback may "
                                       "name it by `id` (needs `FEEDBACK_TOKEN`)")
    retain_max_bytes: int = setting("RETAIN_MAX_BYTES", 256 * MIB, "retained inputs are pruned, oldest first, "
                                    "past this size on disk", minimum=1)
    retain_max_age_seconds: float = setting("RETAIN_MAX_AGE_SECONDS", 86400.0, "and past this age", above=0)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides) -> Settings:
        return from_environment(cls, environ, **overrides)

    def cross_check(self) -> None:
        if self.api_keys_file and self.api_keys_database:
            raise SettingError("API_KEYS_FILE and API_KEYS_DATABASE are two places for the same keys: set one")
        if self.api_keys_database and not self.database_url:
            raise SettingError("API_KEYS_DATABASE keeps keys in DATABASE_URL's database: set DATABASE_URL")
        if self.api_keys_enabled and len(self.api_keys_secret) < 16:
            raise SettingError("API keys need API_KEYS_SECRET, at least 16 characters (e.g. `openssl rand -hex 32`)")
        if self.retain_predictions and not self.feedback_token:
            raise SettingError("RETAIN_PREDICTIONS needs FEEDBACK_TOKEN: retained inputs are only for feedback")
        if self.grpc_port and self.grpc_port in (self.port, self.metrics_port):
            raise SettingError("GRPC_PORT must differ from PORT and METRICS_PORT (0 turns gRPC off)")
        if self.metrics_port == self.port:
            raise SettingError("METRICS_PORT must differ from PORT (unset, /metrics is served on PORT)")
        if self.max_buffered_bytes < self.max_upload_bytes + self.max_header_bytes:
            raise SettingError("MAX_BUFFERED_BYTES must hold at least one whole request: MAX_UPLOAD_BYTES + "
                               "MAX_HEADER_BYTES")

    @functools.cached_property
    def sizing(self) -> Sizing:
        """Workers and threads, from these settings and the CPUs the cgroup allows (read once)."""
        return size(cpu_budget(), self.web_concurrency, self.runtime_threads)

    @property
    def workers(self) -> int:
        return self.sizing.workers

    @property
    def api_keys_enabled(self) -> bool:
        return bool(self.api_keys_file) or self.api_keys_database

    @property
    def feedback_enabled(self) -> bool:
        return bool(self.feedback_token)

    @property
    def gunicorn_worker_class(self) -> str:
        return WORKER_CLASSES[self.worker_class]

    @property
    def shutdown_seconds(self) -> int:
        """The master's limit after SIGTERM (gunicorn's graceful_timeout): the drain, then requests in flight."""
        return math.ceil(self.drain_seconds + self.graceful_timeout_seconds)


ENVIRONMENT = {item.name: item.env for item in declared(Settings)}


if __name__ == "__main__":
    sys.stdout.write(markdown_table(Settings))
