"""``create_app(settings)``: builds one worker's state and hands it to every blueprint, error handler and metric.

The wiring, and only the wiring: the registry and the monitor, the inference path with what it needs passed in,
the feedback store when feedback is on, then each protocol's routes, the operations endpoints and the pages.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import orjson
from flask import Flask, g, request
from flask.json.provider import JSONProvider

from service.access.gate import AccessGate, build_gate
from service.access.keys import ApiKey
from service.errors import NotFound
from service.feedback import routes as feedback_routes
from service.http import operations
from service.web import pages
from service.http.errors import register_error_handlers
from service.http.state import AppState
from service.inference.classify import Inference
from service.inference.images import DecodeLimits
from service.inference.registry import ModelRegistry
from service.inference.trial import Trials
from service.observability import metrics
from service.observability.model_monitor import ModelMonitor
from service.protocols import protocol_of
from service.protocols.kserve_v2 import routes as kserve_v2_routes
from service.protocols.native import routes as native_routes
from service.protocols.tf_serving import routes as tf_serving_routes
from service.settings import Settings

STATE_KEY = "image_classifier"  # the one app.extensions key: the AppState, for the front door's drain
# With API keys on, every endpoint needs one but these: health and metrics (probes and scrapers have no key),
# the pages and docs (the page then asks for a key), and feedback's writes and queue, behind FEEDBACK_TOKEN.
OPEN_BLUEPRINTS = {"pages"}
METRICS_ENDPOINT = "operations.prometheus_metrics"
OPEN_ENDPOINTS = {"operations.healthz", "operations.readyz", METRICS_ENDPOINT, "kserve_v2.live",
                  "kserve_v2.ready", "feedback.post_feedback", "feedback.delete_feedback", "feedback.labeling_queue"}


def create_app(settings: Settings | None = None, watch: bool = True) -> Flask:
    """Build the app with the published models loaded (each gunicorn worker does this before it accepts a
    connection, so no request meets a half-started worker); with ``watch``, new versions are picked up."""
    settings = settings or Settings.from_env()
    state = build_state(settings, watch)
    app = Flask(__name__, static_folder=None)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_upload_bytes
    app.json = OrjsonProvider(app)
    app.extensions[STATE_KEY] = state
    for blueprint in (operations.blueprint, feedback_routes.blueprint, pages.blueprint,
                      kserve_v2_routes.blueprint, tf_serving_routes.blueprint, native_routes.blueprint):
        app.register_blueprint(blueprint(state))
    register_error_handlers(app, settings, lambda path: protocol_of(path).error_body)
    for phase in ("header", "body"):  # at zero from the start, so the first 408 is an increase (metrics.py)
        metrics.series(metrics.CLIENT_TIMEOUTS, phase)
    _observe_requests(app)
    if settings.metrics_port:
        _serve_metrics_apart(app, settings.metrics_port)
    if state.access is not None:
        _require_keys(app, state.access)
    logging.getLogger("service").setLevel(settings.log_level.upper())
    return app


def build_state(settings: Settings, watch: bool, api_key: Callable[[], ApiKey] = lambda: g.api_key) -> AppState:
    """One process's state; ``api_key`` gives the key of the call being served (an HTTP request's by default)."""
    monitor = ModelMonitor(settings.input_monitoring, settings.low_confidence_threshold,
                           settings.drift_window_images, metrics.multiprocess_dir())
    registry = ModelRegistry(settings.models_dir, settings.runtime, settings.sizing.threads)
    registry.refresh()
    if watch:
        registry.start(settings.reload_interval_seconds)
        monitor.start(settings.reload_interval_seconds)
    store = retention = None
    if settings.feedback_enabled:  # SQLAlchemy, about 20 MB per worker, is imported only then
        from contract.feedback_store import FeedbackStore
        from service.feedback.retention import Retention

        store = FeedbackStore(settings.feedback_folder, settings.database_url or None)
        if settings.retain_predictions:
            retention = Retention(store, settings.retain_max_bytes, settings.retain_max_age_seconds)
    access = build_gate(settings, metrics.multiprocess_dir())
    # A request's images are charged to its key once their number is known, before the first is decoded.
    charge = (lambda model, count: access.charge_images(api_key(), count)) if access else None
    inference = Inference(DecodeLimits.from_settings(settings), monitor,
                          keep_inputs=retention.keep if retention else None, charge_images=charge,
                          trials=Trials(registry, settings.shadow_fraction, settings.canary_percent))
    return AppState(settings, registry, monitor, inference, store, access)


class OrjsonProvider(JSONProvider):
    """Flask's JSON through orjson: a prediction body is built and encoded in a third of the standard library's
    time (docs/performance.md), a visible share of a sub-millisecond request. Keys keep their order."""

    OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS

    def dumps(self, obj, **kwargs) -> str:
        return orjson.dumps(obj, option=self.OPTIONS).decode()

    def loads(self, s, **kwargs):
        return orjson.loads(s)

    def response(self, *args, **kwargs):
        body = orjson.dumps(self._prepare_response_obj(args, kwargs), option=self.OPTIONS)
        return self._app.response_class(body, mimetype="application/json")


def _serve_metrics_apart(app: Flask, metrics_port: int) -> None:
    """With METRICS_PORT, /metrics answers only on that port and nothing else does: the port a request came in
    on is the listening socket's own, not the Host header's."""

    @app.before_request
    def route_by_port():
        sock = request.environ.get("gunicorn.socket")
        on_metrics_port = sock is not None and sock.getsockname()[1] == metrics_port
        if on_metrics_port != (request.endpoint == METRICS_ENDPOINT):
            raise NotFound("not served on this port" if on_metrics_port else
                           "/metrics is served on its own port (METRICS_PORT)")


def _require_keys(app: Flask, access: AccessGate) -> None:
    @app.before_request
    def authenticate():
        if request.blueprint in OPEN_BLUEPRINTS or request.endpoint in OPEN_ENDPOINTS:
            return
        g.api_key = access.authenticate(request.headers)


def _observe_requests(app: Flask) -> None:
    @app.before_request
    def start_timer():
        g.started = time.perf_counter()

    @app.after_request
    def count_request(response):
        # The URL rule, not the path: label values stay bounded whatever clients send.
        endpoint = request.url_rule.rule if request.url_rule else "unmatched"
        model = g.get("model_label", "")
        protocol = protocol_of(request.path).NAME
        metrics.series(metrics.REQUESTS, protocol, endpoint, model, str(response.status_code)).inc()
        elapsed = time.perf_counter() - g.get("started", time.perf_counter())
        metrics.series(metrics.REQUEST_DURATION, endpoint).observe(elapsed)
        return response
