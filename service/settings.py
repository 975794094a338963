"""All configuration, read once from the environment into one typed object."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path

from contract.layout import FEEDBACK_FOLDER
from contract.reference import LOW_CONFIDENCE_THRESHOLD


@dataclass(frozen=True)
class Settings:
    """Service settings; each field's environment variable is named in ``ENVIRONMENT``."""

    models_dir: Path = Path("models")
    default_model: str = "fashion_mnist"
    # "auto": the int8 ONNX model where a version has one, else the float one; or force "onnx_int8", "onnx"
    # (float32) or "keras" (the reference, needs TensorFlow).
    runtime: str = "auto"
    # What a request may cost (docs/operations.md#limits); each is checked before the work it bounds starts.
    max_upload_bytes: int = 10 * 1024 * 1024
    max_image_pixels: int = 40_000_000  # width x height one image may declare
    max_decode_bytes: int = 64 * 1024 * 1024  # peak memory of decoding one image
    max_request_pixels: int = 16_000_000  # pixels decoded for all of a request's images together
    max_images_per_request: int = 64
    max_header_bytes: int = 64 * 1024  # a request's line and headers together
    max_buffered_bytes: int = 32 * 1024 * 1024  # request bytes one worker holds in memory, all connections
    min_upload_rate: int = 32 * 1024  # bytes/s a body must average once it has taken BODY_TIMEOUT_SECONDS
    default_top_k: int = 5
    reload_interval_seconds: float = 2.0  # how often workers look for a new current version
    host: str = "127.0.0.1"
    port: int = 8000
    access_log: bool = False
    # The HTTP front door (gunicorn, see service/worker.py and docs/operations.md).
    workers: int = 2
    # "gevent": one greenlet per connection, keep-alive, per-phase timeouts, drain (service.worker); or "sync",
    # gunicorn's one-request-at-a-time worker without keep-alive, where a slow client holds a whole worker.
    worker_class: str = "gevent"
    worker_connections: int = 1000  # open connections per worker, idle keep-alive ones included
    header_timeout_seconds: float = 10.0  # from a request's first byte to the end of its headers, in all
    body_timeout_seconds: float = 30.0  # the longest pause while reading a body or writing a response
    keepalive_seconds: float = 65.0  # an idle kept-alive connection is closed after this; above the usual 60 s
    #                                   of load balancers, so they close first and never reuse a closing one
    drain_seconds: float = 5.0  # after SIGTERM: /readyz says 503 and everything is still served this long
    graceful_timeout_seconds: float = 20.0  # then requests in flight get this long to finish
    worker_timeout_seconds: float = 30.0  # a worker silent for this long is killed and replaced
    # Monitoring (service/monitoring.py, docs/operations.md#monitoring).
    input_monitoring: bool = True  # input statistics, confidence and drift metrics for every image
    low_confidence_threshold: float = LOW_CONFIDENCE_THRESHOLD  # a top-1 probability below this is low confidence
    drift_window_images: int = 1000  # drift is measured over the service's last this-many images of a model
    # Feedback (service/feedback.py, docs/feedback.md): off until a token is set.
    feedback_token: str = field(default="", repr=False)  # the bearer token of /feedback and every write endpoint
    feedback_dir: str = ""  # images and the SQLite database; empty: <MODELS_DIR>/.feedback
    database_url: str = field(default="", repr=False)  # e.g. postgresql://user:pass@host/db; empty: SQLite
    feedback_rate_per_minute: int = 600  # feedback requests each worker accepts per minute; more get 429
    feedback_max_items: int = 100_000  # stored feedback per model; beyond it, 507 until some is deleted
    retain_predictions: bool = False  # keep each served input so feedback can name it by id alone
    retain_max_bytes: int = 256 * 1024 * 1024  # the retained inputs' total size; the oldest go first
    retain_max_age_seconds: float = 24 * 3600.0  # a retained input is forgotten after this long

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides) -> Settings:
        environ = os.environ if environ is None else environ
        values = {}
        for setting in fields(cls):
            raw = environ.get(ENVIRONMENT[setting.name])
            if raw is None or raw == "":
                continue
            values[setting.name] = _parse(setting.name, raw, type(getattr(cls, setting.name)))
        values.update(overrides)
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        if self.runtime not in RUNTIME_CHOICES:
            raise ValueError(f"MODEL_RUNTIME must be one of {', '.join(RUNTIME_CHOICES)}, not {self.runtime!r}")
        for name in ("max_upload_bytes", "max_image_pixels", "max_decode_bytes", "max_request_pixels",
                     "max_images_per_request", "max_header_bytes", "max_buffered_bytes", "min_upload_rate",
                     "default_top_k", "port", "workers", "worker_connections"):
            if getattr(self, name) < 1:
                raise ValueError(f"{ENVIRONMENT[name]} must be at least 1")
        if self.reload_interval_seconds <= 0:
            raise ValueError("MODEL_RELOAD_SECONDS must be positive")
        if self.worker_class not in WORKER_CLASSES:
            raise ValueError(f"WORKER_CLASS must be one of {', '.join(WORKER_CLASSES)}, not {self.worker_class!r}")
        for name in ("header_timeout_seconds", "body_timeout_seconds", "keepalive_seconds",
                     "graceful_timeout_seconds", "worker_timeout_seconds"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{ENVIRONMENT[name]} must be positive")
        if self.drain_seconds < 0:
            raise ValueError("DRAIN_SECONDS must not be negative")
        if not 0 < self.low_confidence_threshold < 1:
            raise ValueError("LOW_CONFIDENCE_THRESHOLD must be between 0 and 1")
        for name in ("feedback_rate_per_minute", "feedback_max_items", "retain_max_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{ENVIRONMENT[name]} must be at least 1")
        if self.retain_max_age_seconds <= 0:
            raise ValueError("RETAIN_MAX_AGE_SECONDS must be positive")
        if self.retain_predictions and not self.feedback_token:
            raise ValueError("RETAIN_PREDICTIONS needs FEEDBACK_TOKEN: retained inputs are only for feedback")
        if self.drift_window_images < 10:
            raise ValueError("DRIFT_WINDOW_IMAGES must be at least 10")
        if self.max_buffered_bytes < self.max_upload_bytes + self.max_header_bytes:
            raise ValueError("MAX_BUFFERED_BYTES must hold at least one whole request: MAX_UPLOAD_BYTES + "
                             "MAX_HEADER_BYTES")

    @property
    def decode_limits(self):
        """The limits ``service.images`` checks before decoding (imported here: the master needs no Pillow)."""
        from service.images import DecodeLimits

        return DecodeLimits(self.max_image_pixels, self.max_decode_bytes, self.max_request_pixels)

    @property
    def feedback_enabled(self) -> bool:
        return bool(self.feedback_token)

    @property
    def feedback_folder(self) -> Path:
        return Path(self.feedback_dir) if self.feedback_dir else self.models_dir / FEEDBACK_FOLDER

    @property
    def gunicorn_worker_class(self) -> str:
        return WORKER_CLASSES[self.worker_class]


RUNTIME_CHOICES = ("auto", "onnx_int8", "onnx", "keras")
WORKER_CLASSES = {"gevent": "service.worker.ServiceWorker", "sync": "service.worker.SyncServiceWorker"}

ENVIRONMENT = {
    "models_dir": "MODELS_DIR",
    "default_model": "DEFAULT_MODEL",
    "runtime": "MODEL_RUNTIME",
    "max_upload_bytes": "MAX_UPLOAD_BYTES",
    "max_image_pixels": "MAX_IMAGE_PIXELS",
    "max_decode_bytes": "MAX_DECODE_BYTES",
    "max_request_pixels": "MAX_REQUEST_PIXELS",
    "max_images_per_request": "MAX_IMAGES_PER_REQUEST",
    "max_header_bytes": "MAX_HEADER_BYTES",
    "max_buffered_bytes": "MAX_BUFFERED_BYTES",
    "min_upload_rate": "MIN_UPLOAD_RATE",
    "default_top_k": "DEFAULT_TOP_K",
    "reload_interval_seconds": "MODEL_RELOAD_SECONDS",
    "host": "HOST",
    "port": "PORT",
    "access_log": "ACCESS_LOG",
    "workers": "WEB_CONCURRENCY",
    "worker_class": "WORKER_CLASS",
    "worker_connections": "WORKER_CONNECTIONS",
    "header_timeout_seconds": "HEADER_TIMEOUT_SECONDS",
    "body_timeout_seconds": "BODY_TIMEOUT_SECONDS",
    "keepalive_seconds": "KEEPALIVE_SECONDS",
    "drain_seconds": "DRAIN_SECONDS",
    "graceful_timeout_seconds": "GRACEFUL_TIMEOUT_SECONDS",
    "worker_timeout_seconds": "WORKER_TIMEOUT_SECONDS",
    "input_monitoring": "INPUT_MONITORING",
    "low_confidence_threshold": "LOW_CONFIDENCE_THRESHOLD",
    "drift_window_images": "DRIFT_WINDOW_IMAGES",
    "feedback_token": "FEEDBACK_TOKEN",
    "feedback_dir": "FEEDBACK_DIR",
    "database_url": "DATABASE_URL",
    "feedback_rate_per_minute": "FEEDBACK_RATE_PER_MINUTE",
    "feedback_max_items": "FEEDBACK_MAX_ITEMS",
    "retain_predictions": "RETAIN_PREDICTIONS",
    "retain_max_bytes": "RETAIN_MAX_BYTES",
    "retain_max_age_seconds": "RETAIN_MAX_AGE_SECONDS",
}


def _parse(name: str, raw: str, kind: type):
    try:
        if kind is bool:
            if raw.lower() not in ("1", "true", "yes", "on", "0", "false", "no", "off"):
                raise ValueError(raw)
            return raw.lower() in ("1", "true", "yes", "on")
        if kind is type(Path()) or issubclass(kind, Path):
            return Path(raw)
        return kind(raw)
    except ValueError:
        raise ValueError(f"{ENVIRONMENT[name]}={raw!r} is not a valid {kind.__name__}") from None
