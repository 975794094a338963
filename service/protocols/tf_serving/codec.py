"""TensorFlow Serving's REST API, the codec (no Flask; the routes are in routes.py): model status, metadata,
``:predict`` and ``:classify``.

Instances are either pixel arrays in the model's input shape (``28 x 28`` or ``32 x 32 x 3``, values in [0, 1])
or encoded image files as ``{"b64": "<base64>"}``, which go through the same decoding and normalization as
``/predict``; either may be wrapped in a named input (``{"image": {"b64": ...}}``, ``{"pixels": [...]}``).
``:predict`` takes the row format (``instances``, answered with ``predictions``) or the columnar one
(``inputs``, answered with ``outputs``); ``:classify`` takes ``examples`` and answers label/score pairs, highest
first. Errors are ``{"error": "<message>"}``.

A ``:predict`` request may add ``"coverage": 0.9`` (and ``"guarantee"``, ``"abstain_above"``) beside its
instances: each prediction then names its outputs, ``probabilities``, ``prediction_set`` (labels), ``unsure``
and the out-of-distribution ``ood_score`` and ``ood_p_value``, as TF Serving answers a multi-output signature.
"""

from __future__ import annotations

import base64
import binascii

import numpy as np

from service.errors import InvalidTensor, TooManyImages
from service.inference.registry import LoadedModel
from service.inference.uncertainty import PredictionSet
from service.protocols.common import InvalidRequest, json_object, message_error_body

NAME = "tf_serving"
PATH_PREFIX = "/v1/"
SIGNATURE = "serving_default"
INPUT_NAMES = ("image", "pixels")
OUTPUT = "probabilities"
error_body = message_error_body


# --- decoding a request -------------------------------------------------------------------------------------

def parse_body(body: bytes) -> dict:
    document = json_object(body)
    signature = document.get("signature_name", SIGNATURE)
    if signature != SIGNATURE:
        raise InvalidRequest(f"unknown signature_name {signature!r}; the model has '{SIGNATURE}'")
    return document


def examples(document: dict) -> list:
    """The instances of a ``:classify`` request."""
    return _batch(document.get("examples"), "examples")


def predict_items(document: dict) -> tuple[list, str]:
    """The instances of a ``:predict`` request, and its format: "row" (``instances``) or "columnar" (``inputs``)."""
    if ("instances" in document) == ("inputs" in document):
        raise InvalidRequest("send exactly one of 'instances' (row format) or 'inputs' (columnar format)")
    if "instances" in document:
        return _batch(document["instances"], "instances"), "row"
    inputs = document["inputs"]
    if isinstance(inputs, dict):
        inputs = _unwrap_named(inputs, "inputs")
    return _batch(inputs, "inputs"), "columnar"


def _batch(items, where: str) -> list:
    if not isinstance(items, list) or not items:
        raise InvalidRequest(f"'{where}' must be a non-empty list, one item per image")
    return items


def _unwrap_named(item: dict, where: str):
    """``{"image": value}`` or ``{"pixels": value}`` -> value; ``{"b64": ...}`` stays as it is."""
    if "b64" in item:
        return item
    if len(item) != 1 or next(iter(item)) not in INPUT_NAMES:
        raise InvalidRequest(f"{where}: name one input, 'image' ({{\"b64\": ...}}) or 'pixels' (an array), "
                             f"not {sorted(item)}")
    return next(iter(item.values()))


def decode_instances(items: list, max_images: int) -> np.ndarray | list[bytes]:
    """Every instance an encoded image (``{"b64": ...}``) -> their bytes; every instance pixels -> one array."""
    if len(items) > max_images:
        raise TooManyImages(f"{len(items)} images in one request, more than {max_images} (MAX_IMAGES_PER_REQUEST)")
    items = [_unwrap_named(item, "an instance") if isinstance(item, dict) else item for item in items]
    images = [isinstance(item, dict) for item in items]
    if all(images):
        return [_b64(item) for item in items]
    if any(images):
        raise InvalidRequest("instances must be all encoded images ({\"b64\": ...}) or all pixel arrays")
    try:
        return np.asarray(items, dtype=np.float32)
    except (ValueError, TypeError):
        raise InvalidTensor("pixel instances must be arrays of numbers, all of the model's input shape") from None


def _b64(item: dict) -> bytes:
    if set(item) != {"b64"} or not isinstance(item["b64"], str):
        raise InvalidRequest('an encoded image is {"b64": "<the file in base64>"}, with nothing else')
    try:
        return base64.b64decode(item["b64"], validate=True)
    except (binascii.Error, ValueError):
        raise InvalidRequest("'b64' is not valid base64") from None


# --- responses ----------------------------------------------------------------------------------------------

def model_status(model: LoadedModel) -> dict:
    return {"model_version_status": [{"version": str(model.version), "state": "AVAILABLE",
                                      "status": {"error_code": "OK", "error_message": ""}}]}


def _tensor_info(name: str, dtype: str, shape: list[int]) -> dict:
    return {"dtype": dtype, "tensor_shape": {"dim": [{"size": str(n), "name": ""} for n in shape],
                                             "unknown_rank": False}, "name": name}


def model_metadata(model: LoadedModel) -> dict:
    signature = {
        "inputs": {"image": _tensor_info("image", "DT_STRING", [-1]),
                   "pixels": _tensor_info("pixels", "DT_FLOAT", [-1, *model.input_spec.shape])},
        "outputs": {OUTPUT: _tensor_info(OUTPUT, "DT_FLOAT", [-1, len(model.classes)])},
        "method_name": "tensorflow/serving/predict",
    }
    return {"model_spec": {"name": model.name, "signature_name": "", "version": str(model.version)},
            "metadata": {"signature_def": {"signature_def": {SIGNATURE: signature}}}}


def named_outputs(model: LoadedModel, classified, sets: list[PredictionSet]) -> list[dict]:
    """Per instance, every output by name: what ``:predict`` answers when a request asks for a prediction set
    (TF Serving's form for a signature with several outputs)."""
    rows = []
    for position, row in enumerate(classified.probabilities.tolist()):
        outputs = {OUTPUT: row, "prediction_set": [model.classes[i] for i in sets[position].indices]}
        if sets[position].unsure is not None:
            outputs["unsure"] = sets[position].unsure
        if classified.ood_p_values is not None:
            outputs["ood_score"] = float(classified.ood_scores[position])
            outputs["ood_p_value"] = float(classified.ood_p_values[position])
        rows.append(outputs)
    return rows


def classify_result(model: LoadedModel, probabilities: np.ndarray) -> list:
    """Per instance, every class as ``[label, score]``, highest score first."""
    return [[[model.classes[i], float(row[i])] for i in np.argsort(-row, kind="stable")] for row in probabilities]
