"""The KServe V2 codec on byte fixtures, without a server: requests in, typed requests or clear errors out;
answers encoded as JSON or binary tensor data, as tritonclient reads them."""

import json
import struct

import numpy as np
import pytest

from service.errors import InvalidTensor, TooManyImages
from service.protocols.kserve_v2.codec import (
    InvalidRequest,
    RequestedOutput,
    encode_infer_response,
    model_metadata,
    parse_infer_request,
)


def binary_request(document: dict, binary: bytes) -> tuple[bytes, str]:
    header = json.dumps(document).encode()
    return header + binary, str(len(header))


def test_json_pixels_flat_or_nested_become_a_float32_batch():
    pixels = np.random.default_rng(0).random((2, 28, 28)).astype(np.float32)
    for data in (pixels.ravel().tolist(), pixels.tolist()):
        body = json.dumps({"id": "r1", "inputs": [{"name": "pixels", "datatype": "FP32", "shape": [2, 28, 28],
                                                   "data": data}]}).encode()
        parsed = parse_infer_request(body, None, 64)
        assert parsed.id == "r1" and parsed.input.datatype == "FP32"
        assert np.array_equal(parsed.input.value, pixels)
        assert parsed.resolved_outputs(None, False) == (RequestedOutput("probabilities", False, 0),)


def test_binary_bytes_elements_are_length_prefixed_files():
    files = [b"\x89PNG first", b"second file"]
    binary = b"".join(struct.pack("<I", len(f)) + f for f in files)
    body, length = binary_request({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [2],
                                               "parameters": {"binary_data_size": len(binary)}}],
                                   "outputs": [{"name": "probabilities",
                                                "parameters": {"binary_data": True, "classification": 3}}]},
                                  binary)
    parsed = parse_infer_request(body, length, 64)
    assert parsed.input.value == files
    assert parsed.resolved_outputs(None, False) == (RequestedOutput("probabilities", True, 3),)


def test_binary_fp32_data_is_read_little_endian():
    pixels = np.arange(28 * 28, dtype="<f4") / (28 * 28)
    body, length = binary_request({"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [1, 28, 28],
                                               "parameters": {"binary_data_size": pixels.nbytes}}]},
                                  pixels.tobytes())
    assert np.array_equal(parse_infer_request(body, length, 64).input.value.ravel(), pixels)


@pytest.mark.parametrize("body, header_length, error, words", [
    (b"not json", None, InvalidRequest, "not valid JSON"),
    (b"[]", None, InvalidRequest, "JSON object"),
    (b'{"inputs": []}', None, InvalidRequest, "exactly one tensor"),
    (b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1]}]}', None, InvalidRequest, "unknown input"),
    (b'{"inputs": [{"name": "image", "datatype": "FP32", "shape": [1]}]}', None, InvalidTensor, "BYTES"),
    (b'{"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [1, 1, 1, 1, 1, 1, 1, 1, 1], "data": [0]}]}',
     None, InvalidTensor, "1 to 8"),
    (b'{"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [1, 2], "data": [0.5]}]}', None, InvalidTensor,
     "1 elements"),
    (b'{"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": ["%%%"]}]}', None, InvalidTensor,
     "base64"),
    (b"{}", "9" * 6000, InvalidRequest, "is not a length"),
    (b"{}", "1\u00b2", InvalidRequest, "is not a length"),
    (b"{}", "99", InvalidRequest, "is not a length"),
])
def test_malformed_requests_are_client_errors_that_say_what_is_wrong(body, header_length, error, words):
    with pytest.raises(error, match=words):
        parse_infer_request(body, header_length, 64)


def test_each_output_is_named_once_and_the_batch_is_bounded():
    image = {"name": "image", "datatype": "BYTES", "shape": [1], "data": ["aGk="]}
    twice = json.dumps({"inputs": [image], "outputs": [{"name": "probabilities"}] * 2}).encode()
    with pytest.raises(InvalidRequest, match="more than once"):
        parse_infer_request(twice, None, 64)
    thousand = json.dumps({"inputs": [image], "outputs": [{"name": "ood_p_value"}] * 1000}).encode()
    with pytest.raises(InvalidRequest, match="more than once"):
        parse_infer_request(thousand, None, 64)
    many = json.dumps({"inputs": [{**image, "shape": [65], "data": ["aGk="] * 65}]}).encode()
    with pytest.raises(TooManyImages, match="65 images"):
        parse_infer_request(many, None, 64)


def test_answers_in_json_carry_the_probabilities_and_the_ids(model, classified):
    body, header_length = encode_infer_response(model, "r1", (RequestedOutput("probabilities", False, 0),),
                                                classified)
    answer = json.loads(body)
    assert header_length is None and answer["id"] == "r1" and answer["model_name"] == "fashion_mnist"
    assert answer["parameters"]["prediction_ids"] == "a" * 64 + "," + "b" * 64
    (output,) = answer["outputs"]
    assert output["shape"] == [2, 10] and np.allclose(output["data"], classified.probabilities.ravel())


def test_binary_answers_and_the_classification_extension(model, classified):
    outputs = (RequestedOutput("probabilities", True, 2),)
    body, header_length = encode_infer_response(model, None, outputs, classified)
    header = json.loads(body[:header_length])
    (output,) = header["outputs"]
    assert output["datatype"] == "BYTES" and output["shape"] == [2, 2]
    data, strings = body[header_length:], []
    while data:
        (length,) = struct.unpack_from("<I", data)
        strings.append(data[4:4 + length].decode())
        data = data[4 + length:]
    assert strings[:2] == ["0.750000:9:Ankle boot", "0.250000:7:Sneaker"]
    assert strings[2].endswith(":1:Trouser") and len(strings) == 4


def test_model_metadata_names_both_inputs_and_the_output(model):
    metadata = model_metadata(model)
    assert [i["name"] for i in metadata["inputs"]] == ["pixels", "image"]
    assert metadata["inputs"][0]["shape"] == [-1, 28, 28] and metadata["outputs"][0]["shape"] == [-1, 10]
    assert metadata["versions"] == [str(model.version)]


def test_the_set_outputs_follow_the_request_parameters(model):
    from service.errors import InvalidParameter
    from service.inference.uncertainty import parse_set_options

    image = {"name": "image", "datatype": "BYTES", "shape": [1], "data": ["aGk="]}
    plain = parse_infer_request(json.dumps({"inputs": [image]}).encode(), None, 64)
    assert [o.name for o in plain.resolved_outputs(None, True)] == ["probabilities"]
    asked = parse_infer_request(json.dumps({"inputs": [image], "parameters": {
        "coverage": 0.9, "abstain_above": 2}}).encode(), None, 64)
    options = parse_set_options(asked.set_parameters["coverage"], None, asked.set_parameters["abstain_above"], model)
    assert options.coverage == 0.9 and options.guarantee == "per_class" and options.abstain_above == 2
    assert [o.name for o in asked.resolved_outputs(options, True)] == ["probabilities", "prediction_set", "unsure"]
    named = parse_infer_request(json.dumps({"inputs": [image], "outputs": [{"name": "ood_p_value"}]}).encode(),
                                None, 64)
    with pytest.raises(InvalidRequest, match="out-of-distribution reference"):
        named.resolved_outputs(None, False)
    with pytest.raises(InvalidRequest, match="applies to 'probabilities'"):
        parse_infer_request(json.dumps({"inputs": [image], "outputs": [
            {"name": "unsure", "parameters": {"classification": 2}}]}).encode(), None, 64)
    for bad in ({"coverage": True}, {"coverage": "0.9x"}, {"coverage": 0.9, "abstain_above": 2.5},
                {"coverage": 0.9, "guarantee": ["per_class"]}):
        with pytest.raises(InvalidParameter):
            parse_set_options(bad.get("coverage"), bad.get("guarantee"), bad.get("abstain_above"), model)


def test_sets_encode_as_bool_tensors_in_json_and_binary(model, classified):
    from service.inference.uncertainty import PredictionSet

    sets = [PredictionSet([9, 7], True), PredictionSet([1], False)]
    outputs = (RequestedOutput("prediction_set", False, 0), RequestedOutput("unsure", True, 0))
    body, header_length = encode_infer_response(model, None, outputs, classified, sets)
    header = json.loads(body[:header_length])
    members, unsure = header["outputs"]
    assert members["datatype"] == "BOOL" and members["shape"] == [2, 10]
    assert [i for i, v in enumerate(members["data"][:10]) if v] == [7, 9] and members["data"][11] is True
    assert unsure["parameters"]["binary_data_size"] == 2 and body[header_length:] == b"\x01\x00"
