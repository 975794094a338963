"""Which version answers a request while a model has a candidate on trial, and which one runs in its shadow.

A candidate (``contract.layout``'s ``candidate`` pointer) is loaded beside the current version by the registry.
While it is: a ``CANARY_PERCENT`` share of inputs is answered by it, and a ``SHADOW_FRACTION`` share of requests
is also run through the other version (its answer recorded, never sent), so the two are compared on the same
inputs whichever answered.

The canary choice is a pure function of the request's first input's prediction id (the SHA-256 of its
normalized pixels), not a coin: a retried request, on any worker of any replica, gets the same version, and the
share of distinct inputs the candidate answers is ``CANARY_PERCENT`` within sampling error.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from service.inference.registry import LoadedModel, ModelRegistry

BUCKETS = 10_000  # canary shares are resolved to 0.01 percentage points


def canary_bucket(prediction_id: str) -> int:
    """Where an input falls in [0, BUCKETS): from the first 8 hex digits of its SHA-256, uniform over inputs."""
    return int(prediction_id[:8], 16) % BUCKETS


def in_canary(prediction_id: str, percent: float) -> bool:
    return canary_bucket(prediction_id) < round(percent * BUCKETS / 100)


class Route(NamedTuple):
    """The version that answers a request, and the one also run on it in the shadow (or None); ``canary`` when
    the answering one is the candidate."""

    answering: LoadedModel
    shadow: LoadedModel | None = None
    canary: bool = False


def compatible(model: LoadedModel, candidate: LoadedModel) -> bool:
    """A candidate takes the same inputs, answers the same classes and offers the same prediction sets and
    out-of-distribution scores, or it cannot stand in for the model (nor be compared with it)."""
    offers = candidate.uncertainty
    return (candidate.classes == model.classes and candidate.input_spec.shape == model.input_spec.shape
            and (model.uncertainty.thresholds is None or offers.thresholds is not None)
            and (model.uncertainty.ood_reference is None or offers.ood_reference is not None))


class Trials:
    """Routes each request of a model with a candidate on trial (one per worker, over the worker's registry)."""

    def __init__(self, registry: ModelRegistry, shadow_fraction: float, canary_percent: float):
        self.registry = registry
        self.shadow_fraction = shadow_fraction
        self.canary_percent = canary_percent

    def route(self, model: LoadedModel, first_id: str, pinned: bool = False) -> Route:
        """``model``: the current version the request asked for; ``pinned``: the request named its version, so
        the canary never answers it (the shadow still may run)."""
        candidate = self.registry.candidate(model.name)
        if candidate is None or not compatible(model, candidate):
            return Route(model)
        shadowed = self.shadow_fraction >= 1 or (self.shadow_fraction > 0 and random.random() < self.shadow_fraction)
        if not pinned and self.canary_percent > 0 and in_canary(first_id, self.canary_percent):
            return Route(candidate, model if shadowed else None, canary=True)
        return Route(model, candidate if shadowed else None)
