"""The feedback endpoints' pure parts, without a server: how labels are read and how the rate limit counts."""

import pytest

from service.errors import InvalidParameter
from service.feedback.errors import UnknownLabel
from service.feedback.labels import parse_label
from service.feedback.rate_limit import RateLimit
from service.inference.registry import ModelRegistry
from tests.conftest import SHIPPED_MODELS


@pytest.fixture(scope="module")
def model():
    registry = ModelRegistry(SHIPPED_MODELS)
    registry.refresh()
    return registry.get("fashion_mnist")


def test_a_label_is_a_class_name_in_any_case_or_an_index(model):
    assert parse_label("Ankle boot", model) == (9, "Ankle boot")
    assert parse_label("ankle BOOT", model) == (9, "Ankle boot")
    assert parse_label("9", model) == (9, "Ankle boot")
    for raw in ("10", "Boot", "\u0669", "7" * 6000, "'; DROP TABLE feedback; --"):
        with pytest.raises(UnknownLabel, match="is not a class of 'fashion_mnist'"):
            parse_label(raw, model)
    with pytest.raises(InvalidParameter, match="send the true label"):
        parse_label("", model)


def test_the_rate_limit_allows_a_burst_then_refills_at_its_rate():
    now = [0.0]
    limit = RateLimit(60, clock=lambda: now[0])  # one a second, bursts of 60
    assert [limit.take() for _ in range(60)] == [0.0] * 60
    assert limit.take() == pytest.approx(1.0)  # the 61st waits a second
    now[0] += 2.5
    assert limit.take() == 0.0 and limit.take() == 0.0 and limit.take() > 0
