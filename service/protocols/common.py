"""What every protocol's handlers share: readiness, the served model a request names, the standard error shape."""

from __future__ import annotations

import re

from flask import current_app, g

from service.registry import LoadedModel


def ready_to_serve() -> bool:
    """Models loaded and no drain under way: what every readiness endpoint answers."""
    return current_app.extensions["model_registry"].ready and not current_app.extensions["draining"].is_set()


def served_model(name: str, version: str | None = None) -> LoadedModel:
    """The model (and, if named, version) a request asks for; labels the request's metrics with it."""
    g.model_label = "unknown"
    model = current_app.extensions["model_registry"].get(name, version)
    g.model_label = model.name
    return model


def message_error_body(code: str, message: str) -> dict:
    """The error shape of KServe V2 and TF Serving alike: ``{"error": "<message>"}``."""
    return {"error": message}


# Where a protocol's body has no room for prediction ids (TF Serving), they go in this header, comma-separated.
PREDICTION_IDS_HEADER = "X-Prediction-Ids"


DIGITS = re.compile(r"[0-9]{1,18}")  # ASCII digits only, and few enough that int() is cheap


def whole_number(text: str | None) -> int | None:
    """A non-negative whole number written in ASCII digits (at most 18), else None: ``int()`` alone would take
    other scripts' digits ("³") and thousands of digits, and fail or spend its time on them."""
    return int(text) if text is not None and DIGITS.fullmatch(text) else None
