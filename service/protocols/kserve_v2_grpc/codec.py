"""KServe V2 / Open Inference Protocol over gRPC: the codec (messages in, messages out; no server).

The same tensors, outputs, parameters and checks as the REST side (``service.protocols.kserve_v2.codec``, shared,
not copied): inputs ``pixels`` (FP32) or ``image`` (BYTES, encoded files), in typed ``contents`` or in
``raw_input_contents``; outputs ``probabilities`` (or, with ``classification: k``, BYTES ``"score:index:label"``),
``prediction_set``, ``unsure``, ``ood_score``, ``ood_p_value``. Answers carry raw output contents, as Triton's do.
Errors are gRPC status codes with the REST side's messages.
"""

from __future__ import annotations

import grpc
import numpy as np

from service.errors import ClientError, InvalidTensor
from service.inference.classify import Classified
from service.inference.registry import LoadedModel
from service.inference.uncertainty import PredictionSet
from service.protocols.common import InvalidRequest
from service.protocols.kserve_v2 import codec as rest
from service.protocols.kserve_v2_grpc import grpc_predict_v2_pb2 as pb

NAME = "kserve_v2_grpc"
SERVICE_NAME = "inference.GRPCInferenceService"

# A client error's HTTP status -> the gRPC status code that says the same.
STATUS_CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT, 401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED, 404: grpc.StatusCode.NOT_FOUND,
    408: grpc.StatusCode.DEADLINE_EXCEEDED, 413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    415: grpc.StatusCode.INVALID_ARGUMENT, 422: grpc.StatusCode.RESOURCE_EXHAUSTED,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED, 503: grpc.StatusCode.UNAVAILABLE,
}


def status_code(error: ClientError) -> grpc.StatusCode:
    return STATUS_CODES.get(error.status, grpc.StatusCode.INVALID_ARGUMENT)


def parameter_value(parameter: pb.InferParameter):
    """A parameter as the REST side's JSON would carry it: bool, int or str (gRPC has no floats here, so a
    coverage comes as the string "0.9")."""
    kind = parameter.WhichOneof("parameter_choice")
    return None if kind is None else getattr(parameter, kind)


def parse_model_infer(request: pb.ModelInferRequest, max_images: int) -> rest.InferRequest:
    """A ``ModelInferRequest`` -> the REST side's ``InferRequest``, with the same checks, before any work."""
    if len(request.inputs) != 1:
        raise InvalidRequest(f"'inputs' must hold exactly one tensor: '{rest.PIXELS_INPUT}' (FP32) or "
                             f"'{rest.IMAGE_INPUT}' (BYTES)")
    tensor = request.inputs[0]
    shape = list(tensor.shape)
    count = rest.check_input(tensor.name, tensor.datatype, shape)
    pixels = tensor.name == rest.PIXELS_INPUT
    if request.raw_input_contents:
        if len(request.raw_input_contents) != 1 or tensor.HasField("contents"):
            raise InvalidRequest("raw_input_contents must hold one entry per input, and then no input may have "
                                 "typed contents")
        raw = request.raw_input_contents[0]
        value = rest.fp32_values(raw, count, tensor.name) if pixels else rest.length_prefixed(raw, count, tensor.name)
    else:
        typed = tensor.contents.fp32_contents if pixels else tensor.contents.bytes_contents
        if len(typed) != count:
            field = "fp32_contents" if pixels else "bytes_contents"
            raise InvalidTensor(f"input {tensor.name!r}: {len(typed)} elements in contents.{field}, the shape "
                                f"says {count}")
        value = np.asarray(typed, dtype=np.float32) if pixels else list(typed)
    checked = rest.checked_input(tensor.name, tensor.datatype, shape, value, max_images)
    outputs = None
    if request.outputs:
        outputs = rest.named_once(tuple(rest.requested_output(o.name, True, _classification(o))
                                        for o in request.outputs[:len(rest.OUTPUTS) + 1]), len(request.outputs))
    set_parameters = {key: parameter_value(request.parameters[key]) for key in rest.SET_PARAMETERS
                      if key in request.parameters}
    return rest.InferRequest(request.id or None, checked, outputs, True, set_parameters)


def _classification(output) -> int:
    if "classification" not in output.parameters:
        return 0
    value = parameter_value(output.parameters["classification"])
    return value if isinstance(value, int) and not isinstance(value, bool) else -1  # -1: refused as not whole


def encode_model_infer(model: LoadedModel, request_id: str | None, outputs: tuple[rest.RequestedOutput, ...],
                       classified: Classified, sets: list[PredictionSet] | None = None) -> pb.ModelInferResponse:
    """The answer, each output's data in ``raw_output_contents`` (as Triton answers), the prediction ids in the
    response's ``prediction_ids`` parameter, in the order of the inputs."""
    response = pb.ModelInferResponse(model_name=model.name, model_version=str(model.version), id=request_id or "")
    response.parameters["prediction_ids"].string_param = ",".join(classified.ids)
    for output in outputs:
        datatype, shape, values = rest.output_tensor(output, model, classified, sets)
        response.outputs.add(name=output.name, datatype=datatype, shape=shape)
        response.raw_output_contents.append(rest.raw_contents(datatype, values))
    return response


def model_metadata(model: LoadedModel) -> pb.ModelMetadataResponse:
    document = rest.model_metadata(model)
    tensor = pb.ModelMetadataResponse.TensorMetadata
    return pb.ModelMetadataResponse(
        name=document["name"], versions=document["versions"], platform=document["platform"],
        inputs=[tensor(**item) for item in document["inputs"]], outputs=[tensor(**item) for item in document["outputs"]])
