"""The native protocol: ``POST /predict`` with multipart or raw image uploads, answered with top-k JSON."""

from __future__ import annotations

import numpy as np
from flask import Blueprint, current_app, jsonify, request

from service import errors
from service.errors import InvalidParameter
from service.inference import classify_images
from service.protocols.common import served_model
from service.registry import LoadedModel
from service.uploads import read_uploads

NAME = "native"
PATH_PREFIX = "/"
blueprint = Blueprint("native", __name__)
error_body = errors.error_body  # {"error": {"code": ..., "message": ...}}


def parse_top_k(raw: str | None, model: LoadedModel, default: int) -> int:
    if raw is None:
        return min(default, len(model.classes))
    if not raw.isdigit() or not 1 <= int(raw) <= len(model.classes):
        raise InvalidParameter(f"top_k must be a whole number from 1 to {len(model.classes)}")
    return int(raw)


def prediction_body(model: LoadedModel, probabilities: np.ndarray, top_k: int) -> dict:
    classes = model.classes
    results = []
    for row in probabilities:
        order = np.argsort(-row, kind="stable")[:top_k]
        values = row.tolist()
        results.append({
            "top": [{"label": classes[i], "index": int(i), "probability": values[i]} for i in order],
            "probabilities": values,
        })
    return {"model": model.name, "version": model.version, "predictions": results}


@blueprint.post("/predict")
def predict():
    settings = current_app.extensions["settings"]
    model = served_model(request.args.get("model", settings.default_model))
    top_k = parse_top_k(request.args.get("top_k"), model, settings.default_top_k)
    uploads = read_uploads(request, settings.max_images_per_request, settings.max_upload_bytes)
    probabilities = classify_images(model, uploads, settings.max_image_pixels)
    return jsonify(prediction_body(model, probabilities, top_k))
