"""``create_app(settings)``: wires the model registry, routes, metrics and error handling into a Flask app."""

from __future__ import annotations

import logging
import threading
import time

import orjson
from flask import Flask, g, request
from flask.json.provider import JSONProvider

from service import inference, metrics
from service.errors import register_error_handlers
from service.feedback import RateLimit, Retention
from service.feedback import blueprint as feedback_blueprint
from contract.feedback_store import FeedbackStore
from service.protocols import PROTOCOLS, protocol_of
from service.model_monitor import ModelMonitor
from service.pages import register_pages
from service.registry import ModelRegistry
from service.routes import api
from service.settings import Settings


def create_app(settings: Settings | None = None, watch: bool = True) -> Flask:
    """Build the app with the published models loaded (each gunicorn worker does this before it accepts a
    connection, so no request meets a half-started worker); with ``watch``, new versions are picked up."""
    settings = settings or Settings.from_env()
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_upload_bytes
    app.json = OrjsonProvider(app)
    app.extensions["settings"] = settings
    # Set by the worker on SIGTERM (service/worker.py): /readyz answers 503 while requests are still served.
    app.extensions["draining"] = threading.Event()

    inference.monitor = ModelMonitor(settings.input_monitoring, settings.low_confidence_threshold,
                                     settings.drift_window_images, metrics.multiprocess_dir())
    registry = ModelRegistry(settings.models_dir, settings.runtime)
    app.extensions["model_registry"] = registry
    registry.refresh()
    if watch:
        registry.start(settings.reload_interval_seconds)
        inference.monitor.start(settings.reload_interval_seconds)

    inference.retention = None
    if settings.feedback_enabled:
        store = FeedbackStore(settings.feedback_folder, settings.database_url or None)
        app.extensions["feedback_store"] = store
        app.extensions["feedback_rate"] = RateLimit(settings.feedback_rate_per_minute)
        if settings.retain_predictions:
            inference.retention = Retention(store, settings.retain_max_bytes, settings.retain_max_age_seconds)

    app.register_blueprint(api)
    app.register_blueprint(feedback_blueprint)
    register_pages(app)
    for protocol in PROTOCOLS:
        app.register_blueprint(protocol.blueprint)
    register_error_handlers(app, lambda path: protocol_of(path).error_body)
    for phase in ("header", "body"):  # at zero from the start, so the first 408 is an increase (metrics.py)
        metrics.series(metrics.CLIENT_TIMEOUTS, phase)
    _observe_requests(app)
    logging.getLogger("service").setLevel(logging.INFO)
    return app


class OrjsonProvider(JSONProvider):
    """Flask's JSON through orjson: a prediction body is built and encoded in a third of the standard library's
    time (``make bench`` prints both), a visible share of a sub-millisecond request. Keys keep their order."""

    OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS

    def dumps(self, obj, **kwargs) -> str:
        return orjson.dumps(obj, option=self.OPTIONS).decode()

    def loads(self, s, **kwargs):
        return orjson.loads(s)

    def response(self, *args, **kwargs):
        body = orjson.dumps(self._prepare_response_obj(args, kwargs), option=self.OPTIONS)
        return self._app.response_class(body, mimetype="application/json")


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
