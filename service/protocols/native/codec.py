"""The native protocol's codec: query parameters in, top-k JSON out (no Flask; the routes are in routes.py).

``include=input`` adds each image as the model saw it, a base64 PNG of the normalized pixels.
"""

from __future__ import annotations

import base64

import numpy as np

from service.errors import InvalidParameter, error_body  # noqa: F401 - error_body: the native error shape
from service.inference.classify import Classified
from service.inference.images import encode_model_input
from service.inference.registry import LoadedModel
from service.inference.uploads import whole_number

NAME = "native"
PATH_PREFIX = "/"


def parse_top_k(raw: str | None, model: LoadedModel, default: int) -> int:
    if raw is None:
        return min(default, len(model.classes))
    top_k = whole_number(raw)
    if top_k is None or not 1 <= top_k <= len(model.classes):
        raise InvalidParameter(f"top_k must be a whole number from 1 to {len(model.classes)}")
    return top_k


INCLUDE_OPTIONS = ("input",)


def parse_include(raw: str | None) -> set[str]:
    """``include=input`` (comma-separated, for options to come) -> the set of extras to add to each prediction."""
    if not raw:
        return set()
    options = set(raw.split(","))
    unknown = options - set(INCLUDE_OPTIONS)
    if unknown:
        raise InvalidParameter(f"include takes {', '.join(INCLUDE_OPTIONS)}; not {', '.join(sorted(unknown))}")
    return options


def prediction_body(model: LoadedModel, classified: Classified, top_k: int, include_inputs: bool = False) -> dict:
    classes = model.classes
    results = []
    for position, row in enumerate(classified.probabilities):
        order = np.argsort(-row, kind="stable")[:top_k]
        values = row.tolist()
        result = {
            "id": classified.ids[position],
            "top": [{"label": classes[i], "index": int(i), "probability": values[i]} for i in order],
            "probabilities": values,
        }
        if include_inputs:
            result["input"] = input_body(classified.inputs[position])
        results.append(result)
    return {"model": model.name, "version": model.version, "predictions": results}


def input_body(pixels: np.ndarray) -> dict:
    height, width = pixels.shape[:2]
    return {"width": width, "height": height, "mode": "L" if pixels.ndim == 2 else "RGB",
            "png_base64": base64.b64encode(encode_model_input(pixels)).decode()}
