"""The native codec: query values checked, answers built, without a server."""

import base64
import io

import numpy as np
import pytest
from PIL import Image

from service.errors import InvalidParameter
from service.protocols.native.codec import parse_include, parse_top_k, prediction_body


def test_top_k_defaults_to_the_setting_within_the_classes_and_refuses_the_rest(model):
    assert parse_top_k(None, model, 5) == 5 and parse_top_k(None, model, 50) == 10
    assert parse_top_k("10", model, 5) == 10
    for raw in ("0", "11", "-1", "2.5", "\u00b3", "9" * 6000, " 3", ""):
        with pytest.raises(InvalidParameter, match="from 1 to 10"):
            parse_top_k(raw, model, 5)


def test_include_takes_known_options_only():
    assert parse_include(None) == set() and parse_include("input") == {"input"}
    with pytest.raises(InvalidParameter, match="not everything"):
        parse_include("input,everything")


def test_the_answer_lists_top_k_highest_first_the_full_vector_and_the_input_as_seen(model, classified):
    body = prediction_body(model, classified, 2, include_inputs=True)
    assert body["model"] == "fashion_mnist" and body["version"] == model.version
    first = body["predictions"][0]
    assert first["id"] == "a" * 64
    assert [t["label"] for t in first["top"]] == ["Ankle boot", "Sneaker"] and first["top"][0]["index"] == 9
    assert len(first["probabilities"]) == 10
    seen = Image.open(io.BytesIO(base64.b64decode(first["input"]["png_base64"])))
    assert seen.size == (28, 28) and np.array_equal(np.asarray(seen), np.zeros((28, 28), np.uint8))
