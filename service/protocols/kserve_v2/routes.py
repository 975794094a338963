"""The KServe V2 endpoints under ``/v2`` (the codec is codec.py)."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify, request

from service.http.routing import model_route
from service.http.state import AppState
from service.protocols.kserve_v2.codec import (
    EXTENSIONS,
    HEADER_LENGTH,
    PATH_PREFIX,
    SERVER_NAME,
    encode_infer_response,
    model_metadata,
    parse_infer_request,
    run_inference,
    server_version,
)


def blueprint(state: AppState) -> Blueprint:
    routes = Blueprint("kserve_v2", __name__, url_prefix=PATH_PREFIX)
    settings = state.settings

    @routes.get("")
    def server_metadata():
        return jsonify({"name": SERVER_NAME, "version": server_version(), "extensions": EXTENSIONS})

    @routes.get("/health/live")
    def live():
        return jsonify({"live": True})

    @routes.get("/health/ready")
    def ready():
        is_ready = state.ready()
        # The protocol answers readiness with the status alone: 200 true, a 4xx false.
        return jsonify({"ready": is_ready}), 200 if is_ready else 400

    @model_route(routes, "GET", "/models")
    def show_model(name: str, version: str | None = None):
        return jsonify(model_metadata(state.served_model(name, version)))

    @model_route(routes, "GET", "/models", "/ready")
    def model_ready(name: str, version: str | None = None):
        model = state.served_model(name, version)
        return jsonify({"name": model.name, "ready": True})

    @model_route(routes, "POST", "/models", "/infer")
    def infer(name: str, version: str | None = None):
        model = state.served_model(name, version)
        parsed = parse_infer_request(request.get_data(cache=False), request.headers.get(HEADER_LENGTH),
                                     settings.max_images_per_request)
        outputs, classified, sets = run_inference(state.inference, model, parsed, version is not None)
        body, header_length = encode_infer_response(classified.model, parsed.id, outputs, classified, sets)
        if header_length is None:
            return Response(body, mimetype="application/json")
        return Response(body, mimetype="application/octet-stream", headers={HEADER_LENGTH: str(header_length)})

    return routes
