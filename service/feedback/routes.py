"""``POST /feedback``: the true label of an image, from production, for the next retrain; behind a bearer token.

``GET /feedback/queue`` lists retained inputs in the order a label would help most (unsure first, then the most
unlike the training data), for the page's label view. A label comes with the image itself (multipart or raw, like ``/predict``) or with the ``id`` of a recent
prediction, when inputs are retained (``RETAIN_PREDICTIONS``, opt-in). The image is normalized exactly as
``/predict`` would, so the stored picture is what the model sees and its id is the prediction's id. Reads
(``GET /feedback/stats``) are open; writes need ``Authorization: Bearer $FEEDBACK_TOKEN``.
"""

from __future__ import annotations

import functools
import hmac
import logging
import sys
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
from flask import Blueprint, Request, jsonify, request

from contract.ids import ID_PATTERN, input_id
from service.errors import Forbidden, InvalidParameter, RateLimited, TooManyImages, Unauthorized
from service.feedback.errors import FeedbackFull, FeedbackOff, FeedbackUnavailable, UnknownPrediction
from service.feedback.labels import parse_label
from service.feedback.rate_limit import RateLimit
from service.http.state import AppState
from service.inference.images import DecodeLimits, input_body, inspect_image
from service.inference.registry import LoadedModel
from service.inference.uncertainty import QUEUE_SET
from service.inference.uploads import read_form, whole_number
from service.settings import Settings

if TYPE_CHECKING:  # the store, and SQLAlchemy with it, is imported only when feedback is on (service.app)
    from contract.feedback_store import FeedbackStore

log = logging.getLogger("service.feedback")


class Labeled(NamedTuple):
    """The image a label is for, as the model saw it, and what was predicted for it, by which version."""

    image_id: str
    pixels: np.ndarray
    predicted: str
    model_version: int


def blueprint(state: AppState) -> Blueprint:
    routes = Blueprint("feedback", __name__)
    settings = state.settings
    rate = RateLimit(settings.feedback_rate_per_minute)

    @routes.post("/feedback")
    @database_down_is_503
    def post_feedback():
        require_token(settings, request)
        wait = rate.take()
        if wait:
            raise RateLimited(f"more than {settings.feedback_rate_per_minute} feedback requests a minute "
                              "(FEEDBACK_RATE_PER_MINUTE); retry later", {"Retry-After": str(max(1, round(wait)))})
        return record_feedback(state, request)

    @routes.delete("/feedback/<name>/<image_id>")
    @database_down_is_503
    def delete_feedback(name: str, image_id: str):
        """Forget an image's labels (and the image): the way to honour a deletion request."""
        require_token(settings, request)
        if not ID_PATTERN.fullmatch(image_id):
            raise UnknownPrediction("an id is the 64 hexadecimal digits a prediction or a feedback answer gave")
        deleted = state.feedback_store.delete_feedback(name, image_id)
        if not deleted:
            raise UnknownPrediction(f"no feedback for {name!r} has this id")
        return jsonify({"model": name, "id": image_id, "deleted": deleted})

    @routes.get("/feedback/queue")
    @database_down_is_503
    def labeling_queue():
        """Retained inputs that a label would help most, unsure first; behind the token (they are users' images)."""
        require_token(settings, request)
        if not settings.retain_predictions:
            raise FeedbackOff("the labeling queue needs retained predictions: this server does not retain them "
                              "(RETAIN_PREDICTIONS is off)")
        model = state.served_model(request.args.get("model", settings.default_model))
        limit = whole_number(request.args.get("limit", str(QUEUE_DEFAULT)))
        if limit is None or not 1 <= limit <= QUEUE_MAX:
            raise InvalidParameter(f"limit must be a whole number from 1 to {QUEUE_MAX}")
        queued = state.feedback_store.labeling_queue(model.name, limit, settings.retain_max_age_seconds)
        return jsonify({"model": model.name, "coverage": QUEUE_SET.coverage, "guarantee": QUEUE_SET.guarantee,
                        "items": [queue_item(state.feedback_store, item) for item in queued]})

    @routes.get("/feedback/stats")
    @database_down_is_503
    def feedback_stats():
        """Per model: feedback counts per true label and agreement with the served prediction. Open to read."""
        if not settings.feedback_enabled:
            return jsonify({"enabled": False, "models": []})
        names = sorted(name for name in state.registry.snapshot() if state.may_call(name))
        if "model" in request.args:
            names = [state.served_model(request.args["model"]).name]
        store = state.feedback_store
        return jsonify({"enabled": True,
                        "retained": store.retained_summary() if settings.retain_predictions else None,
                        "models": [store.stats(name) for name in names]})

    return routes


QUEUE_DEFAULT, QUEUE_MAX = 20, 100


def queue_item(store: FeedbackStore, item) -> dict:
    """One queued input as the label view shows it: the image as the model saw it, its set, how unusual it is."""
    return {"id": item.image_id, "model_version": item.model_version, "predicted_label": item.predicted_label,
            "prediction_set": item.set_labels, "unsure": item.unsure, "ood_score": item.ood_score,
            "ood_p_value": item.ood_p_value, "retained_at": round(item.created_at, 3),
            "input": input_body(store.read_image(item.image_file).astype(np.float32) / np.float32(255.0))}


def record_feedback(state: AppState, request: Request):
    """Store one label for an uploaded image or a retained prediction: 201 when stored, 200 when it was already."""
    settings = state.settings
    try:
        images, fields = submitted_fields(request, settings)
    except TooManyImages:
        raise TooManyImages("send one image per feedback request") from None
    model = state.served_model(fields.get("model") or settings.default_model)
    index, true_label = parse_label(fields.get("label"), model)
    if images:
        if fields.get("id"):
            raise InvalidParameter("send either an image or the id of a prediction, not both")
        labeled = label_upload(model, images[0], settings)
    else:
        labeled = label_retained(model, fields.get("id") or "", state.feedback_store, settings)
    outcome = state.feedback_store.add_feedback(labeled.image_id, labeled.pixels, model.name, labeled.model_version,
                                                labeled.predicted, true_label, max_items=settings.feedback_max_items)
    if outcome == "full":
        raise FeedbackFull(f"{model.name!r} already has {settings.feedback_max_items} feedback items "
                           "(FEEDBACK_MAX_ITEMS); delete some or raise the limit")
    body = {"id": labeled.image_id, "model": model.name, "model_version": labeled.model_version,
            "predicted_label": labeled.predicted, "label": true_label, "index": index,
            "stored": outcome == "stored"}
    return jsonify(body), 201 if outcome == "stored" else 200


def database_down_is_503(view):
    """The database unreachable, or refusing a statement: predictions go on, feedback answers 503."""
    @functools.wraps(view)
    def guarded(*args, **kwargs):
        try:
            return view(*args, **kwargs)
        except Exception as error:
            if not database_error(error):
                raise
            log.error("feedback database error: %s", error.orig if error.orig is not None else error)
            raise FeedbackUnavailable("the feedback database is unavailable; retry later") from None
    return guarded


def database_error(error: BaseException) -> bool:
    """Whether ``error`` is the database's. SQLAlchemy is imported with the feedback store only (about 20 MB per
    worker), so where it was never imported nothing can have raised its errors."""
    sqlalchemy = sys.modules.get("sqlalchemy")
    return sqlalchemy is not None and isinstance(error, sqlalchemy.exc.DBAPIError)


def require_token(settings: Settings, request: Request) -> None:
    """Feedback off without a token; a missing token is 401, a wrong one 403 (compared in constant time)."""
    if not settings.feedback_enabled:
        raise FeedbackOff("feedback is off on this server: it has no FEEDBACK_TOKEN set")
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized("send the feedback token as 'Authorization: Bearer <FEEDBACK_TOKEN>'")
    if not hmac.compare_digest(token.strip().encode(), settings.feedback_token.encode()):
        raise Forbidden("the bearer token is not this server's FEEDBACK_TOKEN")


def submitted_fields(request: Request, settings: Settings) -> tuple[list[bytes], dict[str, str]]:
    """Images and fields from multipart, a raw image, or JSON (for feedback by id); query arguments too."""
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


def label_upload(model: LoadedModel, image: bytes, settings: Settings) -> Labeled:
    """An uploaded image, normalized and classified as /predict would."""
    pixels, _ = inspect_image(image, model.input_spec, DecodeLimits.from_settings(settings))
    predicted = model.classes[int(model.runtime.predict(pixels[np.newaxis]).argmax())]
    return Labeled(input_id(pixels), pixels, predicted, model.version)


def label_retained(model: LoadedModel, image_id: str, store: FeedbackStore, settings: Settings) -> Labeled:
    """A recent prediction, by its id, from the retained inputs."""
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
    return Labeled(image_id, pixels, found.predicted_label, found.model_version)
