"""The codecs' tests need a real model's names and classes, not a server: the shipped fashion_mnist, loaded."""

import numpy as np
import pytest

from service.inference.classify import Classified
from service.inference.registry import ModelRegistry
from tests.conftest import SHIPPED_MODELS


@pytest.fixture(scope="session")
def model():
    registry = ModelRegistry(SHIPPED_MODELS)
    registry.refresh()
    return registry.get("fashion_mnist")


@pytest.fixture()
def classified(model):
    """Two answers as the inference path gives them: inputs, probabilities, ids."""
    probabilities = np.zeros((2, len(model.classes)), np.float32)
    probabilities[0, 9], probabilities[0, 7] = 0.75, 0.25
    probabilities[1, 1] = 1.0
    return Classified(np.zeros((2, 28, 28), np.float32), probabilities, ["a" * 64, "b" * 64])
