"""The TF Serving codec on JSON fixtures, without a server: row and columnar requests, encoded images or pixels."""

import base64

import numpy as np
import pytest

from service.errors import InvalidTensor, TooManyImages
from service.protocols.tf_serving.codec import (
    InvalidRequest,
    classify_result,
    decode_instances,
    examples,
    model_metadata,
    model_status,
    parse_body,
    predict_items,
)

PNG = b"\x89PNG some file"
B64 = base64.b64encode(PNG).decode()


def test_row_and_columnar_requests_with_images_or_named_inputs():
    items, layout = predict_items(parse_body(b'{"instances": [{"b64": "%s"}, {"image": {"b64": "%s"}}]}'
                                             % (B64.encode(), B64.encode())))
    assert layout == "row" and decode_instances(items, 64) == [PNG, PNG]
    items, layout = predict_items({"inputs": {"pixels": [[[0.5] * 28] * 28]}})
    assert layout == "columnar"
    pixels = decode_instances(items, 64)
    assert pixels.dtype == np.float32 and pixels.shape == (1, 28, 28)
    assert examples({"examples": [{"b64": B64}]}) == [{"b64": B64}]


@pytest.mark.parametrize("call, error, words", [
    (lambda: parse_body(b"nope"), InvalidRequest, "not valid JSON"),
    (lambda: parse_body(b'{"signature_name": "other"}'), InvalidRequest, "unknown signature_name"),
    (lambda: predict_items({"instances": [], "inputs": []}), InvalidRequest, "exactly one"),
    (lambda: predict_items({"instances": []}), InvalidRequest, "non-empty list"),
    (lambda: decode_instances([{"b64": B64}, [0.5]], 64), InvalidRequest, "all encoded images"),
    (lambda: decode_instances([{"b64": "%%%"}], 64), InvalidRequest, "not valid base64"),
    (lambda: decode_instances([{"b64": B64, "x": 1}], 64), InvalidRequest, "with nothing else"),
    (lambda: decode_instances([{"other": 1}], 64), InvalidRequest, "name one input"),
    (lambda: decode_instances([[0.5], [0.5, 0.5]], 64), InvalidTensor, "arrays of numbers"),
    (lambda: decode_instances([{"b64": B64}] * 65, 64), TooManyImages, "65 images"),
    (lambda: examples({}), InvalidRequest, "'examples' must be a non-empty list"),
])
def test_malformed_requests_are_client_errors_that_say_what_is_wrong(call, error, words):
    with pytest.raises(error, match=words):
        call()


def test_classify_lists_every_class_highest_first(model, classified):
    result = classify_result(model, classified.probabilities)
    assert result[0][:2] == [["Ankle boot", 0.75], ["Sneaker", 0.25]] and len(result[0]) == 10
    assert result[1][0] == ["Trouser", 1.0]


def test_status_and_metadata_follow_tf_servings_shapes(model):
    assert model_status(model)["model_version_status"][0] == {
        "version": str(model.version), "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
    signature = model_metadata(model)["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert set(signature["inputs"]) == {"image", "pixels"} and set(signature["outputs"]) == {"probabilities"}
