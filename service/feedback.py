"""``POST /feedback``: the true label of an image, from production, for the next retrain; behind a bearer token.

A label comes with the image itself (multipart or raw, like ``/predict``) or with the ``id`` of a recent
prediction, when inputs are retained (``RETAIN_PREDICTIONS``, opt-in). The image is normalized exactly as
``/predict`` would, so the stored picture is what the model sees and its id is the prediction's id. Reads
(``GET /feedback/stats``) are open; writes need ``Authorization: Bearer $FEEDBACK_TOKEN``.
"""

from __future__ import annotations

import hmac
import logging
import threading
import time

import numpy as np
import sqlalchemy as sa
from flask import Blueprint, current_app, jsonify, request

from service.errors import ClientError, InvalidParameter, TooManyImages, error_body
from contract.feedback_store import FeedbackStore
from contract.ids import ID_PATTERN, input_id
from service.images import inspect_image
from service.protocols.common import served_model, whole_number
from service.registry import LoadedModel
from service.settings import Settings
from service.uploads import read_form

blueprint = Blueprint("feedback", __name__)
log = logging.getLogger("service.feedback")


class FeedbackOff(ClientError):
    status = 403
    code = "feedback_disabled"


class Unauthorized(ClientError):
    status = 401
    code = "unauthorized"


class Forbidden(ClientError):
    status = 403
    code = "forbidden"


class UnknownLabel(ClientError):
    status = 422
    code = "unknown_label"


class UnknownPrediction(ClientError):
    status = 404
    code = "unknown_prediction"


class RateLimited(ClientError):
    status = 429
    code = "rate_limited"


class FeedbackFull(ClientError):
    status = 507
    code = "feedback_full"


class FeedbackUnavailable(ClientError):
    status = 503
    code = "feedback_unavailable"


@blueprint.errorhandler(sa.exc.DBAPIError)
def database_down(error: sa.exc.DBAPIError):
    """The database is unreachable or refused a statement: predictions go on, feedback says so."""
    log.error("feedback database error: %s", error.orig if error.orig is not None else error)
    unavailable = FeedbackUnavailable("the feedback database is unavailable; retry later")
    return jsonify(error_body(unavailable.code, unavailable.message)), unavailable.status


class RateLimit:
    """A token bucket: ``per_minute`` requests a minute, in bursts of up to that many; one per worker."""

    def __init__(self, per_minute: int, clock=time.monotonic):
        self.capacity = float(per_minute)
        self.rate = per_minute / 60.0
        self.tokens = self.capacity
        self.clock = clock
        self.updated = clock()
        self.lock = threading.Lock()

    def take(self) -> float:
        """0 when the request may go ahead, else the seconds until it could."""
        with self.lock:
            now = self.clock()
            self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
            self.updated = now
            if self.tokens >= 1:
                self.tokens -= 1
                return 0.0
            return (1 - self.tokens) / self.rate


class Retention:
    """Keeps each served input for feedback by id, within the size and age limits (pruned every 200 inputs)."""

    PRUNE_EVERY = 200

    def __init__(self, store: FeedbackStore, max_bytes: int, max_age_seconds: float):
        self.store, self.max_bytes, self.max_age_seconds = store, max_bytes, max_age_seconds
        self.kept = 0

    def keep(self, model: LoadedModel, batch: np.ndarray, ids: list[str], predicted: list[int]) -> None:
        """Never fails the prediction it follows: a store that is down costs the retained copy, not the answer."""
        try:
            for pixels, image_id, index in zip(batch, ids, predicted):
                self.store.retain(image_id, pixels, model.name, model.version, model.classes[index])
            self.kept += len(ids)
            if self.kept >= self.PRUNE_EVERY:
                self.kept = 0
                self.store.prune_retained(self.max_age_seconds, self.max_bytes)
        except (sa.exc.SQLAlchemyError, OSError) as error:
            log.warning("could not retain %d input(s) of %s for feedback: %s", len(ids), model.name, error)


def require_token(settings: Settings) -> None:
    """Feedback off without a token; a missing token is 401, a wrong one 403 (compared in constant time)."""
    if not settings.feedback_enabled:
        raise FeedbackOff("feedback is off on this server: it has no FEEDBACK_TOKEN set")
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized("send the feedback token as 'Authorization: Bearer <FEEDBACK_TOKEN>'")
    if not hmac.compare_digest(token.strip().encode(), settings.feedback_token.encode()):
        raise Forbidden("the bearer token is not this server's FEEDBACK_TOKEN")


def parse_label(raw: str | None, model: LoadedModel) -> tuple[int, str]:
    """A class name (as listed in /models/<name>) or its index -> (index, name); anything else is a 422."""
    if raw is None or raw == "":
        raise InvalidParameter("send the true label as 'label': a class name or its index")
    classes = model.classes
    index = whole_number(raw)
    if index is not None and index < len(classes):
        return index, classes[index]
    if raw in classes:
        return classes.index(raw), raw
    folded = [c.casefold() for c in classes]
    if raw.casefold() in folded:
        index = folded.index(raw.casefold())
        return index, classes[index]
    shown = raw if len(raw) <= 64 else raw[:64] + "..."
    raise UnknownLabel(f"{shown!r} is not a class of {model.name!r}: use one of {', '.join(classes)} "
                       f"or an index from 0 to {len(classes) - 1}")


def _store() -> FeedbackStore:
    return current_app.extensions["feedback_store"]


def _fields() -> tuple[list[bytes], dict[str, str | None]]:
    """Images and fields from multipart, a raw image, or JSON (for feedback by id); query arguments too."""
    settings: Settings = current_app.extensions["settings"]
    if request.mimetype == "application/json":
        document = request.get_json(silent=True)
        if not isinstance(document, dict):
            raise InvalidParameter("the JSON body must be an object such as {\"id\": ..., \"label\": ...}")
        fields = {k: (v if isinstance(v, str) else str(v) if isinstance(v, int) else None)
                  for k, v in document.items() if k in ("id", "label", "model")}
        images = []
    elif not request.mimetype and not request.content_length:
        images, fields = [], {}
    else:
        images, fields = read_form(request, 1, settings.max_upload_bytes)
    for key in ("id", "label", "model"):
        if key not in fields and key in request.args:
            fields[key] = request.args[key]
    for key, value in fields.items():
        if value is None:
            raise InvalidParameter(f"the field {key!r} must be a short text")
    return images, fields


@blueprint.post("/feedback")
def post_feedback():
    settings: Settings = current_app.extensions["settings"]
    require_token(settings)
    wait = current_app.extensions["feedback_rate"].take()
    if wait:
        error = RateLimited(f"more than {settings.feedback_rate_per_minute} feedback requests a minute "
                            "(FEEDBACK_RATE_PER_MINUTE); retry later")
        response = jsonify(error_body(error.code, error.message))
        response.headers["Retry-After"] = str(max(1, round(wait)))
        return response, error.status
    try:
        images, fields = _fields()
    except TooManyImages:
        raise TooManyImages("send one image per feedback request") from None
    model = served_model(fields.get("model") or settings.default_model)
    index, true_label = parse_label(fields.get("label"), model)
    store = _store()
    if images:
        if fields.get("id"):
            raise InvalidParameter("send either an image or the id of a prediction, not both")
        pixels, _ = inspect_image(images[0], model.input_spec, settings.decode_limits)
        image_id = input_id(pixels)
        predicted = model.classes[int(model.runtime.predict(pixels[np.newaxis]).argmax())]
        model_version = model.version
    else:
        image_id = fields.get("id") or ""
        if not image_id:
            raise InvalidParameter("send the image (multipart field 'image' or a raw image body) or the 'id' "
                                   "of a recent prediction")
        if not settings.retain_predictions:
            raise UnknownPrediction("this server does not retain predictions (RETAIN_PREDICTIONS is off): "
                                    "send the image itself")
        found = store.find_retained(model.name, image_id, settings.retain_max_age_seconds) \
            if ID_PATTERN.fullmatch(image_id) else None
        if found is None:
            raise UnknownPrediction(f"no retained prediction of {model.name!r} has this id (retained for "
                                    f"{settings.retain_max_age_seconds:g} s, RETAIN_MAX_AGE_SECONDS)")
        pixels = store.read_image(found.image_file).astype(np.float32) / np.float32(255.0)
        predicted, model_version = found.predicted_label, found.model_version
    outcome = store.add_feedback(image_id, pixels, model.name, model_version, predicted, true_label,
                                 max_items=settings.feedback_max_items)
    if outcome == "full":
        raise FeedbackFull(f"{model.name!r} already has {settings.feedback_max_items} feedback items "
                           "(FEEDBACK_MAX_ITEMS); delete some or raise the limit")
    body = {"id": image_id, "model": model.name, "model_version": model_version, "predicted_label": predicted,
            "label": true_label, "index": index, "stored": outcome == "stored"}
    return jsonify(body), 201 if outcome == "stored" else 200


@blueprint.delete("/feedback/<name>/<image_id>")
def delete_feedback(name: str, image_id: str):
    """Forget an image's labels (and the image): the way to honour a deletion request."""
    settings: Settings = current_app.extensions["settings"]
    require_token(settings)
    if not ID_PATTERN.fullmatch(image_id):
        raise UnknownPrediction("an id is the 64 hexadecimal digits a prediction or a feedback answer gave")
    deleted = _store().delete_feedback(name, image_id)
    if not deleted:
        raise UnknownPrediction(f"no feedback for {name!r} has this id")
    return jsonify({"model": name, "id": image_id, "deleted": deleted})


@blueprint.get("/feedback/stats")
def feedback_stats():
    """Per model: feedback counts per true label and agreement with the served prediction. Open to read."""
    settings: Settings = current_app.extensions["settings"]
    registry = current_app.extensions["model_registry"]
    if not settings.feedback_enabled:
        return jsonify({"enabled": False, "models": []})
    names = sorted(registry.snapshot())
    if "model" in request.args:
        names = [served_model(request.args["model"]).name]
    store = _store()
    return jsonify({"enabled": True, "retained": store.retained_summary() if settings.retain_predictions else None,
                    "models": [store.stats(name) for name in names]})
