"""``create_app(settings)``: wires the model registry, routes, metrics and error handling into a Flask app."""

from __future__ import annotations

import logging
import time

from flask import Flask, g, request

from service import metrics
from service.errors import register_error_handlers
from service.registry import ModelRegistry
from service.routes import api
from service.settings import Settings


def create_app(settings: Settings | None = None, watch: bool = True) -> Flask:
    """Build the app. With ``watch`` the models load in the background and new versions are picked up;
    without it they load before this returns (handy in tests)."""
    settings = settings or Settings.from_env()
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_upload_bytes
    app.json.sort_keys = False
    app.extensions["settings"] = settings

    registry = ModelRegistry(settings.models_dir, settings.runtime)
    app.extensions["model_registry"] = registry
    if watch:
        registry.start(settings.reload_interval_seconds)
    else:
        registry.refresh()

    app.register_blueprint(api)
    register_error_handlers(app)
    _observe_requests(app)
    logging.getLogger("service").setLevel(logging.INFO)
    return app


def _observe_requests(app: Flask) -> None:
    @app.before_request
    def start_timer():
        g.started = time.perf_counter()

    @app.after_request
    def count_request(response):
        # The URL rule, not the path: label values stay bounded whatever clients send.
        endpoint = request.url_rule.rule if request.url_rule else "unmatched"
        model = g.get("model_label", "")
        metrics.REQUESTS.labels(endpoint, model, str(response.status_code)).inc()
        metrics.REQUEST_DURATION.labels(endpoint).observe(time.perf_counter() - g.get("started", time.perf_counter()))
        return response
