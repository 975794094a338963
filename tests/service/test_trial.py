"""Routing a request while a candidate is on trial: the pure rules, over a real registry and real versions."""

from __future__ import annotations

import hashlib
import shutil

import pytest

from contract.layout import point_candidate, point_current
from service.inference.registry import ModelRegistry
from service.inference.trial import BUCKETS, Trials, canary_bucket, in_canary
from tests.conftest import SHIPPED_MODELS


def test_canary_buckets_are_uniform_over_inputs_and_the_share_is_exact_at_the_edges():
    ids = [hashlib.sha256(str(n).encode()).hexdigest() for n in range(20_000)]
    buckets = [canary_bucket(i) for i in ids]
    assert min(buckets) >= 0 and max(buckets) < BUCKETS
    for percent in (1, 10, 50, 90):
        share = sum(in_canary(i, percent) for i in ids) / len(ids)
        assert share == pytest.approx(percent / 100, abs=0.01)
    assert not any(in_canary(i, 0) for i in ids) and all(in_canary(i, 100) for i in ids)


@pytest.fixture()
def registry(tmp_path):
    folder = tmp_path / "models"
    shutil.copytree(SHIPPED_MODELS / "fashion_mnist", folder / "fashion_mnist")
    point_current(folder, "fashion_mnist", 5)
    point_candidate(folder, "fashion_mnist", 6)
    registry = ModelRegistry(folder)
    registry.refresh()
    return registry


def test_routes_follow_the_canary_share_the_pin_and_the_shadow_fraction(registry):
    model, candidate = registry.get("fashion_mnist"), registry.candidate("fashion_mnist")
    inside = next(i for i in (hashlib.sha256(bytes([n])).hexdigest() for n in range(256)) if in_canary(i, 30))
    outside = next(i for i in (hashlib.sha256(bytes([n])).hexdigest() for n in range(256)) if not in_canary(i, 30))

    trials = Trials(registry, shadow_fraction=1.0, canary_percent=30)
    assert trials.route(model, inside) == (candidate, model, True)  # the candidate answers, the current shadows
    assert trials.route(model, outside) == (model, candidate, False)
    assert trials.route(model, inside, pinned=True) == (model, candidate, False)  # a named version stays

    assert Trials(registry, 0.0, 30).route(model, inside) == (candidate, None, True)
    assert Trials(registry, 0.0, 0).route(model, inside) == (model, None, False)
    shadowed = [Trials(registry, 0.25, 0).route(model, outside).shadow is not None for _ in range(4000)]
    assert sum(shadowed) / len(shadowed) == pytest.approx(0.25, abs=0.03)

    point_candidate(registry.models_dir, "fashion_mnist", None)
    registry.refresh()
    assert trials.route(model, inside) == (model, None, False)  # no trial, no canary
