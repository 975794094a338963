"""``POST /predict`` with multipart or raw image uploads, answered with top-k JSON (the codec is codec.py)."""

from __future__ import annotations

from flask import Blueprint, jsonify, request

from service.http.state import AppState
from service.inference.uploads import read_uploads
from service.protocols.native.codec import parse_include, parse_sets, parse_top_k, prediction_body


def blueprint(state: AppState) -> Blueprint:
    routes = Blueprint("native", __name__)
    settings = state.settings

    @routes.post("/predict")
    def predict():
        model = state.served_model(request.args.get("model", settings.default_model))
        top_k = parse_top_k(request.args.get("top_k"), model, settings.default_top_k)
        include = parse_include(request.args.get("include"))
        sets = parse_sets(request.args, model)
        uploads = read_uploads(request, settings.max_images_per_request, settings.max_upload_bytes)
        classified = state.inference.classify_images(model, uploads)  # answered by a canary, names it
        return jsonify(prediction_body(classified.model, classified, top_k, "input" in include, sets))

    return routes
