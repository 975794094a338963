"""The gRPC codec as pure functions: messages in, the REST side's request out, messages back; and the messages
themselves generated from the .proto beside them."""

import subprocess
import sys

import grpc
import numpy as np
import pytest

from service.errors import ClientError, Forbidden, InvalidTensor, RateLimited, RequestTooLarge, Unauthorized
from service.protocols.common import InvalidRequest
from service.protocols.kserve_v2_grpc import codec
from service.protocols.kserve_v2_grpc import grpc_predict_v2_pb2 as pb
from tests.conftest import ROOT

Tensor = pb.ModelInferRequest.InferInputTensor


def test_the_generated_messages_are_the_protos_own(tmp_path):
    """`make proto` run again gives the same modules: nobody edited them by hand or forgot to regenerate."""
    proto = "service/protocols/kserve_v2_grpc/grpc_predict_v2.proto"
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", "-I.", f"--python_out={tmp_path}",
                    f"--grpc_python_out={tmp_path}", proto], cwd=ROOT, check=True)
    for suffix in ("_pb2.py", "_pb2_grpc.py"):
        fresh = (tmp_path / proto.replace(".proto", suffix)).read_text()
        fresh = fresh.replace("_descriptor_pool.Default()", "_descriptor_pool.DescriptorPool()")
        assert (ROOT / proto.replace(".proto", suffix)).read_text() == fresh


def test_pixels_raw_and_typed_parse_alike():
    pixels = np.random.default_rng(0).random((2, 28, 28), dtype=np.float32)
    typed = pb.ModelInferRequest(id="r", inputs=[Tensor(name="pixels", datatype="FP32", shape=[2, 28, 28],
                                                        contents=pb.InferTensorContents(fp32_contents=pixels.ravel()))])
    raw = pb.ModelInferRequest(inputs=[Tensor(name="pixels", datatype="FP32", shape=[2, 28, 28])],
                               raw_input_contents=[pixels.astype("<f4").tobytes()])
    a, b = codec.parse_model_infer(typed, 64), codec.parse_model_infer(raw, 64)
    assert a.id == "r" and b.id is None
    assert np.array_equal(a.input.value, pixels) and np.array_equal(b.input.value, pixels)


def test_bytes_raw_and_typed_parse_alike():
    files = [b"first", b"", b"third"]
    typed = pb.ModelInferRequest(inputs=[Tensor(name="image", datatype="BYTES", shape=[3],
                                                contents=pb.InferTensorContents(bytes_contents=files))])
    raw = pb.ModelInferRequest(inputs=[Tensor(name="image", datatype="BYTES", shape=[3])], raw_input_contents=[
        b"".join(len(f).to_bytes(4, "little") + f for f in files)])
    assert codec.parse_model_infer(typed, 64).input.value == files == codec.parse_model_infer(raw, 64).input.value


def test_parameters_and_outputs_read_as_the_rest_side_reads_them():
    request = pb.ModelInferRequest(
        inputs=[Tensor(name="image", datatype="BYTES", shape=[1], contents=pb.InferTensorContents(bytes_contents=[b"x"]))],
        parameters={"coverage": pb.InferParameter(string_param="0.9"), "abstain_above": pb.InferParameter(int64_param=2),
                    "unrelated": pb.InferParameter(bool_param=True)},
        outputs=[pb.ModelInferRequest.InferRequestedOutputTensor(
            name="probabilities", parameters={"classification": pb.InferParameter(int64_param=3)})])
    parsed = codec.parse_model_infer(request, 64)
    assert parsed.set_parameters == {"coverage": "0.9", "abstain_above": 2}
    assert [(o.name, o.classification) for o in parsed.outputs] == [("probabilities", 3)]


@pytest.mark.parametrize("request_, error, words", [
    (pb.ModelInferRequest(), InvalidRequest, "exactly one tensor"),
    (pb.ModelInferRequest(inputs=[Tensor(name="x", datatype="FP32", shape=[1])]), InvalidRequest, "unknown input"),
    (pb.ModelInferRequest(inputs=[Tensor(name="pixels", datatype="BYTES", shape=[1])]), InvalidTensor, "FP32"),
    (pb.ModelInferRequest(inputs=[Tensor(name="image", datatype="BYTES", shape=[1],
                                         contents=pb.InferTensorContents(bytes_contents=[b"a"]))],
                          raw_input_contents=[b"\0\0\0\0"]), InvalidRequest, "no input may have typed contents"),
    (pb.ModelInferRequest(inputs=[Tensor(name="image", datatype="BYTES", shape=[2],
                                         contents=pb.InferTensorContents(bytes_contents=[b"a"]))]),
     InvalidTensor, "the shape says 2"),
    (pb.ModelInferRequest(inputs=[Tensor(name="image", datatype="BYTES", shape=[65])],
                          raw_input_contents=[b"\0\0\0\0" * 65]), ClientError, "MAX_IMAGES_PER_REQUEST"),
    (pb.ModelInferRequest(inputs=[Tensor(name="image", datatype="BYTES", shape=[1],
                                         contents=pb.InferTensorContents(bytes_contents=[b"a"]))],
                          outputs=[pb.ModelInferRequest.InferRequestedOutputTensor(
                              name="probabilities", parameters={"classification": pb.InferParameter(bool_param=True)})]),
     InvalidRequest, "whole number"),
])
def test_malformed_requests_are_refused_with_the_rest_sides_errors(request_, error, words):
    with pytest.raises(error, match=words):
        codec.parse_model_infer(request_, 64)


def test_answers_carry_raw_outputs_and_the_prediction_ids(model, classified):
    from service.protocols.kserve_v2.codec import RequestedOutput

    outputs = (RequestedOutput("probabilities", True, 0), RequestedOutput("probabilities", True, 2))
    answer = codec.encode_model_infer(model, "id-1", outputs, classified)
    assert (answer.id, answer.model_name, answer.model_version) == ("id-1", "fashion_mnist", str(model.version))
    assert answer.parameters["prediction_ids"].string_param == "a" * 64 + "," + "b" * 64
    assert [(o.name, o.datatype, list(o.shape)) for o in answer.outputs] == [
        ("probabilities", "FP32", [2, 10]), ("probabilities", "BYTES", [2, 2])]
    assert np.array_equal(np.frombuffer(answer.raw_output_contents[0], "<f4").reshape(2, 10),
                          classified.probabilities)
    first = answer.raw_output_contents[1]
    length = int.from_bytes(first[:4], "little")
    assert first[4:4 + length] == b"0.750000:9:Ankle boot"


@pytest.mark.parametrize("error, code", [
    (InvalidTensor("x"), grpc.StatusCode.INVALID_ARGUMENT), (Unauthorized("x"), grpc.StatusCode.UNAUTHENTICATED),
    (Forbidden("x"), grpc.StatusCode.PERMISSION_DENIED), (RequestTooLarge("x"), grpc.StatusCode.RESOURCE_EXHAUSTED),
    (RateLimited("x"), grpc.StatusCode.RESOURCE_EXHAUSTED),
])
def test_each_refusal_has_the_status_code_that_means_it(error, code):
    assert codec.status_code(error) == code
