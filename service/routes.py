"""HTTP endpoints: parse the request, call the core, shape the JSON."""

from __future__ import annotations

import time

import numpy as np
from flask import Blueprint, Response, current_app, g, jsonify, request

from service import metrics
from service.errors import InvalidParameter, NotReady
from service.images import prepare_image
from service.registry import LoadedModel, ModelRegistry
from service.settings import Settings
from service.uploads import read_uploads

api = Blueprint("api", __name__)


def _registry() -> ModelRegistry:
    return current_app.extensions["model_registry"]


def _settings() -> Settings:
    return current_app.extensions["settings"]


def parse_top_k(model: LoadedModel, default: int) -> int:
    raw = request.args.get("top_k")
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


@api.post("/predict")
def predict():
    settings = _settings()
    g.model_label = "unknown"
    model = _registry().get(request.args.get("model", settings.default_model))
    g.model_label = model.name
    top_k = parse_top_k(model, settings.default_top_k)
    uploads = read_uploads(request, settings.max_images_per_request, settings.max_upload_bytes)

    started = time.perf_counter()
    arrays = [prepare_image(data, model.input_spec, settings.max_image_pixels) for data in uploads]
    batch = arrays[0][np.newaxis] if len(arrays) == 1 else np.stack(arrays)
    decoded = time.perf_counter()
    probabilities = model.runtime.predict(batch)
    inferred = time.perf_counter()

    metrics.series(metrics.DECODE_DURATION, model.name).observe(decoded - started)
    metrics.series(metrics.INFERENCE_DURATION, model.name).observe(inferred - decoded)
    metrics.series(metrics.IMAGES_PER_REQUEST, model.name).observe(len(uploads))
    for index in probabilities.argmax(axis=1).tolist():
        metrics.series(metrics.PREDICTIONS, model.name, model.classes[index]).inc()
    return jsonify(prediction_body(model, probabilities, top_k))


def describe_model(model: LoadedModel, detail: bool) -> dict:
    metadata = model.metadata
    test = metadata["metrics"]["test"]
    # The float runtimes give the Keras model's results; the int8 one has its own, measured at publish time.
    served = metadata["runtimes"].get(model.runtime.kind, {}).get("test_accuracy", test["accuracy"])
    body = {
        "name": model.name,
        "version": model.version,
        "runtime": model.runtime.kind,
        "classes": model.classes,
        "input": metadata["input"],
        "preprocessing": metadata["preprocessing"],
        "metrics": {"test_accuracy": test["accuracy"], "served_test_accuracy": served,
                    "test_samples": test["samples"], "macro_f1": test.get("macro_f1")},
        "created_at": metadata.get("created_at"),
        "loaded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(model.loaded_at)),
    }
    if detail:
        body["metrics"] = {"test": test, "served_test_accuracy": served,
                           "validation": metadata["metrics"].get("validation")}
        body["training"] = {k: v for k, v in metadata["training"].items() if k != "history"}
        body["data"] = metadata["data"]
        body["runtimes"] = metadata["runtimes"]
        body["libraries"] = metadata.get("libraries")
    return body


def _available_versions(registry: ModelRegistry, name: str) -> list[int]:
    folder = registry.models_dir / name
    return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit() and (p / "metadata.json").is_file())


@api.get("/models")
def list_models():
    registry = _registry()
    if not registry.initial_load_done.is_set():
        raise NotReady("models are still loading")
    return jsonify({"default_model": _settings().default_model,
                    "models": [describe_model(m, detail=False) for m in registry.snapshot().values()]})


@api.get("/models/<name>")
def show_model(name: str):
    registry = _registry()
    model = registry.get(name)
    g.model_label = model.name
    body = describe_model(model, detail=True)
    body["available_versions"] = _available_versions(registry, name)
    if name in registry.errors:
        body["last_refused"] = registry.errors[name]
    return jsonify(body)


@api.get("/healthz")
def healthz():
    return jsonify({"status": "ok"})


@api.get("/readyz")
def readyz():
    registry = _registry()
    draining = current_app.extensions["draining"].is_set()
    ready = registry.ready and not draining
    models = {name: model.version for name, model in registry.snapshot().items()}
    body = {"status": "ready" if ready else "draining" if draining else "not_ready", "models": models}
    if registry.errors:
        body["refused"] = registry.errors
    return jsonify(body), 200 if ready else 503


@api.get("/metrics")
def prometheus_metrics():
    payload, content_type = metrics.render_metrics()
    return Response(payload, content_type=content_type)
