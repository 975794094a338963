"""The native protocol's codec: query parameters in, top-k JSON out (no Flask; the routes are in routes.py).

``include=input`` adds each image as the model saw it, a base64 PNG of the normalized pixels.
"""

from __future__ import annotations

import numpy as np

from service.errors import InvalidParameter, error_body  # noqa: F401 - error_body: the native error shape
from service.inference.classify import Classified
from service.inference.images import input_body
from service.inference.registry import LoadedModel
from service.inference.uncertainty import SetOptions, parse_set_options, prediction_sets, set_body
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


def parse_sets(args, model: LoadedModel) -> SetOptions | None:
    """``coverage=0.9`` (with ``guarantee=per_class|marginal`` and ``abstain_above=N``): a prediction set per
    image."""
    return parse_set_options(args.get("coverage"), args.get("guarantee"), args.get("abstain_above"), model)


def prediction_body(model: LoadedModel, classified: Classified, top_k: int, include_inputs: bool = False,
                    sets: SetOptions | None = None) -> dict:
    classes = model.classes
    results = []
    answered_sets = prediction_sets(model, classified, sets)
    for position, row in enumerate(classified.probabilities):
        order = np.argsort(-row, kind="stable")[:top_k]
        values = row.tolist()
        result = {
            "id": classified.ids[position],
            "top": [{"label": classes[i], "index": int(i), "probability": values[i]} for i in order],
            "probabilities": values,
        }
        if answered_sets is not None:
            result["prediction_set"] = set_body(sets, answered_sets[position], classes)
        if classified.ood_p_values is not None:
            result["out_of_distribution"] = {"score": round(float(classified.ood_scores[position]), 4),
                                             "p_value": round(float(classified.ood_p_values[position]), 5)}
        if include_inputs:
            result["input"] = input_body(classified.inputs[position])
        results.append(result)
    return {"model": model.name, "version": model.version, "predictions": results}


