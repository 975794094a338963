"""What an answer says beyond its probabilities: a prediction set with a coverage guarantee, "unsure", and how
unlike the training data each input is. The maths is the contract's (``contract.conformal``, ``contract.ood``),
so the service computes exactly what training measured; this module holds the request options every protocol
parses the same way and the per-model state built when a version loads.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from contract import conformal, ood
from contract.metadata import VersionMetadata
from service.errors import InvalidParameter

DEFAULT_GUARANTEE = "per_class"


@dataclass(frozen=True)
class SetOptions:
    """A request's ask: the set at ``coverage`` with this guarantee, and "unsure" past ``abstain_above`` labels."""

    coverage: float
    guarantee: str = DEFAULT_GUARANTEE
    abstain_above: int | None = None


# The labeling queue ranks a retained input as unsure when its set at this level has more than one label
# (docs/feedback.md#what-to-label-first-the-queue).
QUEUE_SET = SetOptions(0.9, "per_class")


def parse_set_options(coverage, guarantee, abstain_above, model) -> SetOptions | None:
    """The options as any protocol sends them (query strings or JSON values), for ``model`` (a LoadedModel),
    checked before any work; None when no set is asked for."""
    classes = len(model.classes)
    if coverage is None:
        if guarantee is not None or abstain_above is not None:
            raise InvalidParameter("guarantee and abstain_above apply to a prediction set: send coverage too "
                                   "(e.g. coverage=0.9)")
        return None
    level = _number(coverage)
    if level is None or not 0.5 <= level <= 0.99 or abs(level * 100 - round(level * 100)) > 1e-6:
        raise InvalidParameter("coverage must be a level from 0.50 to 0.99 in steps of 0.01 (e.g. 0.9)")
    if guarantee is None:
        guarantee = DEFAULT_GUARANTEE
    if guarantee not in conformal.GUARANTEES:
        raise InvalidParameter(f"guarantee must be one of {', '.join(conformal.GUARANTEES)}")
    limit = None
    if abstain_above is not None:
        limit = _number(abstain_above)
        if limit is None or limit != int(limit) or not 0 <= limit <= classes:
            raise InvalidParameter(f"abstain_above must be a whole number of labels from 0 to {classes}")
        limit = int(limit)
    if model.uncertainty.thresholds is None:
        raise InvalidParameter(f"version {model.version} of {model.name!r} has no conformal thresholds (it was "
                               "published before them): it answers without a prediction set")
    return SetOptions(round(level, 2), guarantee, limit)


def _number(value) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        number = float(value)
    elif isinstance(value, str) and 0 < len(value) <= 32:
        try:
            number = float(value)
        except ValueError:
            return None
    else:
        return None
    return number if math.isfinite(number) else None


@dataclass(frozen=True)
class ModelUncertainty:
    """A loaded version's conformal thresholds and out-of-distribution reference (either may be absent: versions
    published before them have neither)."""

    thresholds: conformal.Thresholds | None
    ood_reference: ood.Reference | None  # the out_of_distribution record, prepared once for scoring

    @classmethod
    def from_metadata(cls, metadata: VersionMetadata, has_distance: bool) -> ModelUncertainty:
        """Raises ValueError (or KeyError, TypeError) on records the service cannot use: the version is refused."""
        document = metadata.document
        thresholds = None
        if "conformal" in document:
            thresholds = conformal.Thresholds(document["conformal"])
            if thresholds.levels != list(conformal.COVERAGE_LEVELS) or \
                    thresholds.for_level(0.9, "per_class").shape != (len(metadata.classes),):
                raise ValueError("conformal thresholds do not cover the levels or the classes")
        record = document.get("out_of_distribution") if has_distance else None
        if record is not None:
            for name in ood.STATISTICS:
                if len(record["components"][name]) != ood.TABLE_POINTS:
                    raise ValueError(f"out_of_distribution: the {name} table is not {ood.TABLE_POINTS} points")
            if len(record["combined"]) != ood.TABLE_POINTS:
                raise ValueError("out_of_distribution: the combined table is malformed")
        return cls(thresholds, ood.Reference(record) if record is not None else None)


@dataclass(frozen=True)
class PredictionSet:
    """One image's set: the class indices in it, in the order of their probability, and whether it is "unsure"."""

    indices: list[int]
    unsure: bool | None  # None: no abstain_above was asked


def prediction_sets(model, classified, options: SetOptions | None) -> list[PredictionSet] | None:
    """Each image of a classified batch's set, for ``model`` (a LoadedModel); None when no set was asked for. The
    options were checked against the model when parsed (``parse_set_options``)."""
    if options is None:
        return None
    probabilities = classified.probabilities
    members = conformal.prediction_sets(probabilities, conformal.tie_breaks(classified.ids),
                                        model.uncertainty.thresholds.for_level(options.coverage, options.guarantee))
    sets = []
    for row, chosen in zip(probabilities, members):
        order = [int(i) for i in np.argsort(-row, kind="stable") if chosen[i]]
        unsure = None if options.abstain_above is None else len(order) > options.abstain_above
        sets.append(PredictionSet(order, unsure))
    return sets


def set_body(options: SetOptions, prediction_set: PredictionSet, classes: tuple[str, ...]) -> dict:
    """A set as the JSON protocols show it, naming the guarantee it gives."""
    body = {"coverage": options.coverage, "guarantee": options.guarantee,
            "labels": [classes[i] for i in prediction_set.indices], "indices": prediction_set.indices}
    if prediction_set.unsure is not None:
        body["unsure"] = prediction_set.unsure
    return body


def ood_scores(uncertainty: ModelUncertainty, batch: np.ndarray,
               distance: np.ndarray | None) -> tuple[np.ndarray, np.ndarray] | None:
    """Per image (score, p-value), or None for a version or runtime without the reference."""
    if uncertainty.ood_reference is None or distance is None:
        return None
    return uncertainty.ood_reference.scores(batch, distance)
