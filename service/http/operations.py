"""The endpoints every deployment has, whatever protocol it speaks: health, readiness, models, metrics."""

from __future__ import annotations

import logging
import time

from flask import Blueprint, Response, jsonify, send_file

from contract.layout import TIME_FORMAT, list_versions, read_history
from contract.trial_record import trial_decision, trial_section
from service.errors import NotFound, NotReady
from service.http.state import AppState
from service.inference.registry import LoadedModel
from service.observability import metrics

log = logging.getLogger("service.http.operations")
# The model card's files a client may fetch: the plots and the card itself, never the weights.
MODEL_CARD_FILE = "MODEL_CARD.md"
CARD_FILE_TYPES = {".png": "image/png", ".md": "text/markdown; charset=utf-8"}


def _served_calibration(document: dict) -> dict | None:
    served = document.get("calibration", {}).get("served")
    return {k: served[k] for k in ("runtime", "ece", "nll")} if served else None


def _uncertainty(model: LoadedModel, detail: bool) -> dict:
    """What the version can add to an answer: prediction sets (with their measured coverage) and the
    out-of-distribution p-value (with its measured AUROC)."""
    document = model.metadata.document
    conformal, ood = document.get("conformal"), document.get("out_of_distribution")
    body = {"prediction_sets": model.uncertainty.thresholds is not None,
            "out_of_distribution": model.uncertainty.ood_reference is not None}
    if detail and conformal and body["prediction_sets"]:
        body["conformal"] = {"method": conformal["method"], "calibration_images": conformal["samples"],
                             "levels": {"from": conformal["levels"][0], "to": conformal["levels"][-1], "step": 0.01},
                             "test": conformal["test"]}
    if detail and ood and body["out_of_distribution"]:
        body["ood"] = {"method": ood["method"], "reference": ood["reference"], "test": ood["test"]}
    return body


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
        "uncertainty": _uncertainty(model, detail),
        "created_at": document.get("created_at"),
        "loaded_at": time.strftime(TIME_FORMAT, time.gmtime(model.loaded_at)),
    }
    if detail:
        body["metrics"] = {"test": test, "served_test_accuracy": served,
                           "validation": document["metrics"].get("validation"),
                           "calibration": _served_calibration(document),
                           "production": document["metrics"].get("production"),
                           "baseline": document["metrics"].get("baseline")}
        body["calibration"] = document.get("calibration")
        body["training"] = {k: v for k, v in document["training"].items() if k != "history"}
        body["data"] = document["data"]
        body["runtimes"] = document["runtimes"]
        body["libraries"] = document.get("libraries")
    return body


def describe_candidate(state: AppState, candidate: LoadedModel | None) -> dict | None:
    """The version on trial, if any: its offline test figures beside its live ones (shadowed on the same inputs
    as the served version, all workers together), and the share of inputs it answers as the canary."""
    if candidate is None:
        return None
    served = candidate.metadata.runtimes[candidate.runtime.kind].test_accuracy
    shadow = metrics.shadow_figures(candidate.name, candidate.version)
    windows = state.monitor.drift_windows([candidate], "candidate")
    shadow["drift_psi"] = windows[0][1].reading()[0] if windows else None
    return {"version": candidate.version, "runtime": candidate.runtime.kind,
            "test_accuracy": candidate.metadata.test_accuracy if served is None else served,
            "shadow_fraction": state.settings.shadow_fraction, "canary_percent": state.settings.canary_percent,
            "shadow": shadow}


def blueprint(state: AppState) -> Blueprint:
    routes = Blueprint("operations", __name__)
    registry = state.registry

    @routes.get("/models")
    def list_models():
        if not registry.initial_load_done.is_set():
            raise NotReady("models are still loading")
        return jsonify({"default_model": state.settings.default_model,
                        "models": [describe_model(m, detail=False) for m in registry.snapshot().values()
                                   if state.may_call(m.name)],
                        # How this replica was sized: its workers and their threads, and the CPUs that decided.
                        "serving": state.settings.sizing.as_dict()})

    @routes.get("/models/<name>")
    def show_model(name: str):
        model = state.served_model(name)
        body = describe_model(model, detail=True)
        body["available_versions"] = list_versions(registry.models_dir, name)
        if name in registry.errors:
            body["last_refused"] = registry.errors[name]
        state.monitor.flush()  # this worker's queued shadow answers reach the candidate's drift window
        body["candidate"] = describe_candidate(state, registry.candidate(model.name))
        if f"{name} candidate" in registry.errors:
            body["candidate_refused"] = registry.errors[f"{name} candidate"]
        return jsonify(body)

    @routes.get("/models/<name>/files/<filename>")
    def model_file(name: str, filename: str):
        """A file of the served version's model card (``confusion_matrix.png``, ``learning_curves.png``, ...)."""
        model = state.served_model(name)
        suffix = filename[filename.rfind("."):] if "." in filename else ""
        if filename not in model.metadata.files or suffix not in CARD_FILE_TYPES:
            card_files = [f for f in model.metadata.files if f[f.rfind("."):] in CARD_FILE_TYPES]
            raise NotFound(f"{name} v{model.version} has no card file {filename!r}; it has {', '.join(card_files)}")
        if filename == MODEL_CARD_FILE:  # with the version's live trial, decided after the file was written
            decision = trial_decision(read_history(registry.models_dir, model.name), model.version)
            if decision is not None:
                card = (model.path / filename).read_text() + trial_section(decision)
                return Response(card, content_type=CARD_FILE_TYPES[suffix])
        return send_file((model.path / filename).resolve(), mimetype=CARD_FILE_TYPES[suffix], max_age=3600)

    @routes.get("/models/<name>/history")
    def model_history(name: str):
        """Every promotion, refusal and rollback of the model, newest first."""
        model = state.served_model(name)
        return jsonify({"model": model.name, "current_version": model.version,
                        "events": read_history(registry.models_dir, model.name)[::-1]})

    @routes.get("/healthz")
    def healthz():
        return jsonify({"status": "ok"})

    @routes.get("/readyz")
    def readyz():
        ready = state.ready()
        models = {name: model.version for name, model in registry.snapshot().items()}
        status = "ready" if ready else "draining" if state.draining.is_set() else "not_ready"
        body = {"status": status, "models": models}
        if registry.errors:
            body["refused"] = registry.errors
        return jsonify(body), 200 if ready else 503

    @routes.get("/metrics")
    def prometheus_metrics():
        state.monitor.flush()  # this worker's figures are current; the others' at most a flush interval old
        payload, content_type = metrics.render_metrics(scrape_time_families(state))
        return Response(payload, content_type=content_type)

    return routes


def scrape_time_families(state: AppState) -> list:
    """What /metrics reads from shared state when it is scraped: readiness, retraining from each model's
    history, drift from the workers' shared windows, and feedback from the store."""
    served = state.registry.snapshot()
    histories = {name: read_history(state.registry.models_dir, name) for name in served}
    families = metrics.state_families(state.ready(), histories)
    families += metrics.drift_families([(model.name, window) for model, window
                                        in state.monitor.drift_windows(list(served.values()))])
    candidates = [model for model in map(state.registry.candidate, served) if model is not None]
    families += metrics.candidate_drift_families([(model.name, model.version, window) for model, window
                                                  in state.monitor.drift_windows(candidates, "candidate")])
    if state.feedback_store is not None:
        from sqlalchemy.exc import SQLAlchemyError  # loaded with the store, and only then

        try:
            families += metrics.feedback_families([state.feedback_store.stats(name) for name in served])
        except SQLAlchemyError as error:  # the other metrics matter more than these: scrape without them
            log.warning("feedback metrics left out, the feedback database is unavailable: %s", error)
    return families
