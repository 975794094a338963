"""The endpoints every deployment has, whatever protocol it speaks: health, readiness, models, metrics."""

from __future__ import annotations

import logging
import time

from flask import Blueprint, Response, current_app, g, jsonify, send_file
from sqlalchemy.exc import SQLAlchemyError

from service import inference, metrics
from service.errors import NotFound, NotReady
from service.protocols.common import ready_to_serve
from contract.layout import TIME_FORMAT, list_versions, read_history
from service.registry import LoadedModel, ModelRegistry
from service.settings import Settings

api = Blueprint("api", __name__)
log = logging.getLogger("service.routes")


def _registry() -> ModelRegistry:
    return current_app.extensions["model_registry"]


def _settings() -> Settings:
    return current_app.extensions["settings"]


def _served_calibration(document: dict) -> dict | None:
    served = document.get("calibration", {}).get("served")
    return {k: served[k] for k in ("runtime", "ece", "nll")} if served else None


def describe_model(model: LoadedModel, detail: bool) -> dict:
    document = model.metadata.document
    test = document["metrics"]["test"]
    # The float runtimes give the Keras model's results; the int8 one has its own, measured at publish time.
    served = model.metadata.runtimes[model.runtime.kind].test_accuracy
    served = model.metadata.test_accuracy if served is None else served
    body = {
        "name": model.name,
        "version": model.version,
        "runtime": model.runtime.kind,
        "classes": model.classes,
        "input": document["input"],
        "preprocessing": document["preprocessing"],
        "metrics": {"test_accuracy": test["accuracy"], "served_test_accuracy": served,
                    "test_samples": test["samples"], "macro_f1": test.get("macro_f1"),
                    # As served: ECE and NLL of the runtime's own probabilities on the test split.
                    "calibration": _served_calibration(document),
                    "production": document["metrics"].get("production")},
        "created_at": document.get("created_at"),
        "loaded_at": time.strftime(TIME_FORMAT, time.gmtime(model.loaded_at)),
    }
    if detail:
        body["metrics"] = {"test": test, "served_test_accuracy": served,
                           "validation": document["metrics"].get("validation"),
                           "calibration": _served_calibration(document),
                           "production": document["metrics"].get("production")}
        body["calibration"] = document.get("calibration")
        body["training"] = {k: v for k, v in document["training"].items() if k != "history"}
        body["data"] = document["data"]
        body["runtimes"] = document["runtimes"]
        body["libraries"] = document.get("libraries")
    return body


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
    body["available_versions"] = list_versions(registry.models_dir, name)
    if name in registry.errors:
        body["last_refused"] = registry.errors[name]
    return jsonify(body)


# The model card's files a client may fetch: the plots and the card itself, never the weights.
CARD_FILE_TYPES = {".png": "image/png", ".md": "text/markdown; charset=utf-8"}


@api.get("/models/<name>/files/<filename>")
def model_file(name: str, filename: str):
    """A file of the served version's model card (``confusion_matrix.png``, ``learning_curves.png``, ...)."""
    model = _registry().get(name)
    g.model_label = model.name
    suffix = filename[filename.rfind("."):] if "." in filename else ""
    if filename not in model.metadata.files or suffix not in CARD_FILE_TYPES:
        card_files = [f for f in model.metadata.files if f[f.rfind("."):] in CARD_FILE_TYPES]
        raise NotFound(f"{name} v{model.version} has no card file {filename!r}; it has {', '.join(card_files)}")
    return send_file((model.path / filename).resolve(), mimetype=CARD_FILE_TYPES[suffix], max_age=3600)


@api.get("/models/<name>/history")
def model_history(name: str):
    """Every promotion, refusal and rollback of the model, newest first."""
    registry = _registry()
    model = registry.get(name)
    g.model_label = model.name
    return jsonify({"model": model.name, "current_version": model.version,
                    "events": read_history(registry.models_dir, model.name)[::-1]})


@api.get("/healthz")
def healthz():
    return jsonify({"status": "ok"})


@api.get("/readyz")
def readyz():
    registry = _registry()
    ready = ready_to_serve()
    draining = current_app.extensions["draining"].is_set()
    models = {name: model.version for name, model in registry.snapshot().items()}
    body = {"status": "ready" if ready else "draining" if draining else "not_ready", "models": models}
    if registry.errors:
        body["refused"] = registry.errors
    return jsonify(body), 200 if ready else 503


@api.get("/metrics")
def prometheus_metrics():
    registry = _registry()
    inference.monitor.flush()  # this worker's figures are current; the others' at most a flush interval old
    served = registry.snapshot()
    histories = {name: read_history(registry.models_dir, name) for name in served}
    families = metrics.state_families(ready_to_serve(), histories)
    families += metrics.drift_families([(model.name, window) for model, window
                                        in inference.monitor.drift_windows(list(served.values()))])
    store = current_app.extensions.get("feedback_store")
    if store is not None:
        try:
            families += metrics.feedback_families([store.stats(name) for name in registry.snapshot()])
        except SQLAlchemyError as error:  # the other metrics matter more than these: scrape without them
            log.warning("feedback metrics left out, the feedback database is unavailable: %s", error)
    payload, content_type = metrics.render_metrics(families)
    return Response(payload, content_type=content_type)
