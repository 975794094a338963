"""KServe V2 / Open Inference Protocol, REST: the codec (no Flask; the routes are in routes.py).

What Triton, KServe, Seldon and tritonclient speak.

A model takes one of two inputs: ``pixels``, an FP32 tensor ``[batch, 28, 28]`` or ``[batch, 32, 32, 3]``
with values in [0, 1], or ``image``, a BYTES tensor of encoded image files (PNG, JPEG, ...) that go through the
same decoding and normalization as ``/predict``. It returns ``probabilities``, FP32 ``[batch, classes]``; with
the classification extension (output parameter ``classification: k``) that output becomes BYTES
``[batch, k]`` of ``"score:index:label"``, highest first, as Triton does it.

Tensor data is JSON (flat or nested; BYTES elements as base64 strings, since JSON strings cannot carry binary
files) or binary, per the binary tensor data extension: the JSON header's length in the
``Inference-Header-Content-Length`` header, ``binary_data_size`` per input, ``binary_data`` per output (or
``binary_data_output`` for all), BYTES elements each with a 4-byte little-endian length. Errors are
``{"error": "<message>"}``.
"""

from __future__ import annotations

import base64
import binascii
import math
import struct
from dataclasses import dataclass

import numpy as np
import orjson

from service.errors import InvalidTensor, TooManyImages
from service.inference.classify import Classified, Inference
from service.inference.registry import LoadedModel
from service.inference.uncertainty import PredictionSet, parse_set_options, prediction_sets
from service.inference.uploads import whole_number
from service.protocols.common import InvalidRequest, json_object, message_error_body

NAME = "kserve_v2"
PATH_PREFIX = "/v2"
SERVER_NAME = "image-classifier-service"
EXTENSIONS = ["classification", "binary_tensor_data"]
PIXELS_INPUT, IMAGE_INPUT, OUTPUT = "pixels", "image", "probabilities"
# Outputs beyond the probabilities: the prediction set (request parameter ``coverage``), "unsure"
# (``abstain_above``) and the out-of-distribution score and p-value (named in ``outputs``).
SET_OUTPUT, UNSURE_OUTPUT, OOD_SCORE_OUTPUT, OOD_P_OUTPUT = "prediction_set", "unsure", "ood_score", "ood_p_value"
OUTPUTS = (OUTPUT, SET_OUTPUT, UNSURE_OUTPUT, OOD_SCORE_OUTPUT, OOD_P_OUTPUT)
SET_PARAMETERS = ("coverage", "guarantee", "abstain_above")
PLATFORMS = {"onnx": "onnxruntime_onnx", "onnx_int8": "onnxruntime_onnx", "keras": "keras"}
HEADER_LENGTH = "Inference-Header-Content-Length"
MAX_SHAPE_RANK = 8  # a batch of 32x32x3 images has 4 dimensions; NumPy stops at 64
error_body = message_error_body


@dataclass(frozen=True)
class InferInput:
    name: str
    datatype: str
    value: np.ndarray | list[bytes]  # float32 pixels for FP32, the encoded files for BYTES


@dataclass(frozen=True)
class RequestedOutput:
    name: str
    binary: bool
    classification: int  # 0: the probabilities themselves


@dataclass(frozen=True)
class InferRequest:
    id: str | None
    input: InferInput
    outputs: tuple[RequestedOutput, ...] | None  # None: the default outputs
    binary_default: bool
    set_parameters: dict  # coverage, guarantee, abstain_above as sent (service.inference.uncertainty parses them)

    def resolved_outputs(self, sets, has_ood: bool) -> tuple[RequestedOutput, ...]:
        """The outputs to answer: those named, or the probabilities plus the set (and "unsure") when asked for;
        a named output the request or the model cannot give is refused before any work."""
        if self.outputs is None:
            names = [OUTPUT] + ([SET_OUTPUT] if sets else []) + ([UNSURE_OUTPUT] if sets and sets.abstain_above
                                                                   is not None else [])
            return tuple(RequestedOutput(name, self.binary_default, 0) for name in names)
        for output in self.outputs:
            if output.name in (SET_OUTPUT, UNSURE_OUTPUT) and (sets is None or (
                    output.name == UNSURE_OUTPUT and sets.abstain_above is None)):
                needed = "coverage" if output.name == SET_OUTPUT else "coverage and abstain_above"
                raise InvalidRequest(f"output {output.name!r} needs the request parameter {needed}")
            if output.name in (OOD_SCORE_OUTPUT, OOD_P_OUTPUT) and not has_ood:
                raise InvalidRequest(f"output {output.name!r}: this version of the model has no "
                                     "out-of-distribution reference")
        return self.outputs


# --- decoding a request -------------------------------------------------------------------------------------

def parse_infer_request(body: bytes, header_length: str | None, max_images: int) -> InferRequest:
    """The request body (JSON, or a JSON header followed by binary tensor data) -> an ``InferRequest``."""
    binary = b""
    if header_length is not None:
        length = whole_number(header_length)
        if length is None or length > len(body):
            shown = header_length if len(header_length) <= 24 else header_length[:24] + "..."
            raise InvalidRequest(f"{HEADER_LENGTH}: {shown!r} is not a length within the {len(body)}-byte body")
        body, binary = body[:length], body[length:]
    document = json_object(body, "a JSON object with 'inputs'")
    inputs = document.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise InvalidRequest(f"'inputs' must hold exactly one tensor: '{PIXELS_INPUT}' (FP32) or "
                             f"'{IMAGE_INPUT}' (BYTES)")
    request_id = document.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise InvalidRequest("'id' must be a string")
    parameters = _parameters(document, "the request")
    tensor, used = _parse_input(inputs[0], binary, max_images)
    if used != len(binary):
        raise InvalidRequest(f"the body has {len(binary) - used} bytes of binary data that no input claims "
                             "with binary_data_size")
    binary_default = parameters.get("binary_data_output", False)
    if not isinstance(binary_default, bool):
        raise InvalidRequest("the parameter binary_data_output must be true or false")
    outputs = document.get("outputs")
    if outputs is None:
        requested = None
    elif not isinstance(outputs, list) or not all(isinstance(o, dict) for o in outputs):
        raise InvalidRequest("'outputs' must be a list of objects")
    else:
        requested = named_once(tuple(_parse_output(o, binary_default) for o in outputs[:len(OUTPUTS) + 1]),
                               len(outputs))
    set_parameters = {key: parameters[key] for key in SET_PARAMETERS if key in parameters}
    return InferRequest(request_id, tensor, requested, binary_default, set_parameters)


def _parameters(item: dict, where: str) -> dict:
    parameters = item.get("parameters", {})
    if not isinstance(parameters, dict):
        raise InvalidRequest(f"the parameters of {where} must be an object")
    return parameters


def _parse_input(item: dict, binary: bytes, max_images: int) -> tuple[InferInput, int]:
    name, datatype, shape = item.get("name"), item.get("datatype"), item.get("shape")
    count = check_input(name, datatype, shape)
    size = _parameters(item, f"input {name!r}").get("binary_data_size")
    if size is not None:
        if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size <= len(binary):
            raise InvalidRequest(f"input {name!r}: binary_data_size {size!r} does not fit the {len(binary)} "
                                 "bytes of binary data")
        chunk = binary[:size]
        value = fp32_values(chunk, count, name) if name == PIXELS_INPUT else length_prefixed(chunk, count, name)
    else:
        if "data" not in item:
            raise InvalidTensor(f"input {name!r} has neither 'data' nor a binary_data_size parameter")
        value = _json_pixels(item["data"], count, name) if name == PIXELS_INPUT else _json_bytes(item["data"], count,
                                                                                                  name)
        size = 0
    return checked_input(name, datatype, shape, value, max_images), size


def check_input(name, datatype, shape) -> int:
    """The number of elements of a valid input declaration, or the error that refuses it (before its data is
    read). The REST and gRPC sides of the protocol share it."""
    if name not in (PIXELS_INPUT, IMAGE_INPUT):
        raise InvalidRequest(f"unknown input {name!r}: send '{PIXELS_INPUT}' (FP32 pixels in [0, 1]) or "
                             f"'{IMAGE_INPUT}' (BYTES, encoded image files)")
    expected = "FP32" if name == PIXELS_INPUT else "BYTES"
    if datatype != expected:
        raise InvalidTensor(f"input {name!r} must have datatype {expected}, not {datatype!r}")
    if (not isinstance(shape, list) or not 0 < len(shape) <= MAX_SHAPE_RANK
            or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape)):
        raise InvalidTensor(f"input {name!r} needs a 'shape': a list of 1 to {MAX_SHAPE_RANK} non-negative whole "
                            "numbers")
    return math.prod(shape)


def checked_input(name: str, datatype: str, shape: list[int], value, max_images: int) -> InferInput:
    """The input with its pixels in their shape, if its batch is within ``max_images``."""
    if name == PIXELS_INPUT:
        value = value.reshape(shape)
        batch = shape[0] if len(shape) > 1 else 1
    else:
        batch = len(value)
    if batch > max_images:
        raise TooManyImages(f"{batch} images in one request, more than {max_images} (MAX_IMAGES_PER_REQUEST)")
    return InferInput(name, datatype, value)


def fp32_values(chunk: bytes, count: int, name: str) -> np.ndarray:
    """``count`` little-endian FP32 values, row-major (binary tensor data; gRPC's raw contents)."""
    if len(chunk) != 4 * count:
        raise InvalidTensor(f"input {name!r}: {len(chunk)} bytes of FP32 data for a shape of {count} elements "
                            f"({4 * count} bytes)")
    return np.frombuffer(chunk, dtype="<f4").astype(np.float32, copy=False)


def _json_pixels(data, count: int, name: str) -> np.ndarray:
    try:
        pixels = np.asarray(data, dtype=np.float32)
    except (ValueError, TypeError):
        raise InvalidTensor(f"input {name!r}: 'data' must be numbers, flat or nested like the shape") from None
    if pixels.size != count:
        raise InvalidTensor(f"input {name!r}: 'data' has {pixels.size} elements, the shape says {count}")
    return pixels.ravel()


def length_prefixed(chunk: bytes, count: int, name: str) -> list[bytes]:
    """``count`` BYTES elements, each after its 4-byte little-endian length (binary tensor data; gRPC's raw
    contents)."""
    elements, offset = [], 0
    while offset < len(chunk):
        if offset + 4 > len(chunk):
            raise InvalidTensor(f"input {name!r}: a BYTES element's 4-byte length is cut off")
        (length,) = struct.unpack_from("<I", chunk, offset)
        if offset + 4 + length > len(chunk):
            raise InvalidTensor(f"input {name!r}: a BYTES element says {length} bytes, more than are left")
        elements.append(chunk[offset + 4:offset + 4 + length])
        offset += 4 + length
    if len(elements) != count:
        raise InvalidTensor(f"input {name!r}: {len(elements)} BYTES elements for a shape of {count}")
    return elements


def _json_bytes(data, count: int, name: str) -> list[bytes]:
    flat = list(_flatten(data))
    if len(flat) != count:
        raise InvalidTensor(f"input {name!r}: 'data' has {len(flat)} elements, the shape says {count}")
    try:
        return [base64.b64decode(element, validate=True) for element in flat]
    except (binascii.Error, TypeError, ValueError):
        raise InvalidTensor(f"input {name!r}: in JSON, each BYTES element must be an image file in base64 "
                            "(or send it as binary data)") from None


def _flatten(data):
    """The leaves of nested lists, depth first, without recursion (JSON may nest a thousand deep)."""
    stack = [iter([data])]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            yield item
        else:
            stack.pop()


def _parse_output(item: dict, binary_default: bool) -> RequestedOutput:
    name = item.get("name")
    parameters = _parameters(item, f"output {name!r}") if name in OUTPUTS else {}
    return requested_output(name, parameters.get("binary_data", binary_default), parameters.get("classification", 0))


def named_once(requested: tuple[RequestedOutput, ...], sent: int) -> tuple[RequestedOutput, ...]:
    """The outputs a request names, if it names each once (each answer is one more copy); ``requested`` are
    the first of the ``sent``, read no further than one past the number of outputs there are."""
    if sent > len(OUTPUTS) or len({output.name for output in requested}) != len(requested):
        raise InvalidRequest("'outputs' names an output more than once; name each output once")
    return requested


def requested_output(name, binary, classification) -> RequestedOutput:
    """An output a request names, checked: a known name, and the classification extension only on the
    probabilities. The REST and gRPC sides of the protocol share it."""
    if name not in OUTPUTS:
        shown = name if not isinstance(name, str) or len(name) <= 64 else name[:64] + "..."
        raise InvalidRequest(f"unknown output {shown!r}: the model's outputs are {', '.join(OUTPUTS)}")
    if not isinstance(binary, bool):
        raise InvalidRequest("the output parameter binary_data must be true or false")
    if not isinstance(classification, int) or isinstance(classification, bool) or classification < 0:
        raise InvalidRequest("the output parameter classification must be a whole number of classes")
    if classification and name != OUTPUT:
        raise InvalidRequest(f"the classification extension applies to '{OUTPUT}', not {name!r}")
    return RequestedOutput(name, binary, classification)


# --- running it ---------------------------------------------------------------------------------------------

def run_inference(inference: Inference, model: LoadedModel, request: InferRequest, pinned: bool = False,
                  ) -> tuple[tuple[RequestedOutput, ...], Classified, list[PredictionSet] | None]:
    """What both transports do with a parsed request: its options and outputs checked against the version, then
    the one inference path; (the outputs to answer, what was classified, the prediction sets if asked for).
    ``pinned``: the request named its version. The answer is encoded for ``classified.model``, the version that
    answered."""
    options = parse_set_options(request.set_parameters.get("coverage"), request.set_parameters.get("guarantee"),
                                request.set_parameters.get("abstain_above"), model)
    outputs = request.resolved_outputs(options, model.uncertainty.ood_reference is not None)
    if request.input.datatype == "BYTES":
        if not request.input.value:
            raise InvalidTensor(f"input {IMAGE_INPUT!r} holds no images")
        classified = inference.classify_images(model, request.input.value, pinned)
    else:
        classified = inference.classify_pixels(model, request.input.value, pinned)
    return outputs, classified, prediction_sets(classified.model, classified, options)


# --- encoding a response ------------------------------------------------------------------------------------

def classification_strings(probabilities: np.ndarray, classes: list[str], k: int) -> list[list[bytes]]:
    """Each row's top ``k`` as Triton's ``"score:index:label"``, highest first."""
    rows = []
    for row in probabilities:
        order = np.argsort(-row, kind="stable")[:k]
        rows.append([f"{row[i]:f}:{i}:{classes[i]}".encode() for i in order])
    return rows


def extra_tensor(name: str, classified: Classified, sets: list[PredictionSet] | None,
                 classes: int) -> tuple[str, np.ndarray]:
    """(datatype, values) of an output beyond the probabilities."""
    if name == SET_OUTPUT:
        members = np.zeros((len(sets), classes), dtype=bool)
        for row, prediction_set in zip(members, sets):
            row[prediction_set.indices] = True
        return "BOOL", members
    if name == UNSURE_OUTPUT:
        return "BOOL", np.array([bool(s.unsure) for s in sets], dtype=bool)
    values = classified.ood_scores if name == OOD_SCORE_OUTPUT else classified.ood_p_values
    return "FP32", np.asarray(values, dtype=np.float32)


def output_tensor(output: RequestedOutput, model: LoadedModel, classified: Classified,
                  sets: list[PredictionSet] | None) -> tuple[str, list[int], np.ndarray | list[bytes]]:
    """An answer's output, whatever carries it: its datatype, shape and values (an array, or for BYTES the
    elements in row-major order)."""
    if output.name != OUTPUT:
        datatype, values = extra_tensor(output.name, classified, sets, len(model.classes))
        return datatype, list(values.shape), values
    if output.classification:
        k = min(output.classification, len(model.classes))
        rows = classification_strings(classified.probabilities, model.classes, k)
        return "BYTES", [len(rows), k], [s for row in rows for s in row]
    return "FP32", list(classified.probabilities.shape), classified.probabilities


def raw_contents(datatype: str, values: np.ndarray | list[bytes]) -> bytes:
    """An output's binary form, the same in REST's binary tensor data and gRPC's raw contents: each BYTES element
    after its 4-byte little-endian length; FP32 little-endian; BOOL a byte each."""
    if datatype == "BYTES":
        return b"".join(struct.pack("<I", len(element)) + element for element in values)
    return np.ascontiguousarray(values, dtype="<f4" if datatype == "FP32" else np.uint8).tobytes()


def encode_infer_response(model: LoadedModel, request_id: str | None, outputs: tuple[RequestedOutput, ...],
                          classified: Classified, sets: list[PredictionSet] | None = None) -> tuple[bytes, int | None]:
    """The response body, and the JSON header's length when binary tensor data follows it."""
    tensors, chunks = [], []
    for output in outputs:
        datatype, shape, values = output_tensor(output, model, classified, sets)
        tensor = {"name": output.name, "datatype": datatype, "shape": shape}
        if output.binary:
            chunk = raw_contents(datatype, values)
            tensor["parameters"] = {"binary_data_size": len(chunk)}
            chunks.append(chunk)
        else:
            tensor["data"] = [s.decode() for s in values] if datatype == "BYTES" else values.ravel().tolist()
        tensors.append(tensor)
    # The response's own parameters carry the prediction ids, in the order of the inputs.
    header = {"model_name": model.name, "model_version": str(model.version),
              "parameters": {"prediction_ids": ",".join(classified.ids)}, "outputs": tensors}
    if request_id is not None:
        header = {"id": request_id, **header}
    encoded = orjson.dumps(header)
    if not chunks:
        return encoded, None
    return encoded + b"".join(chunks), len(encoded)


def server_version() -> str:
    """This package's version, as the server metadata of either transport reports it."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(SERVER_NAME)
    except PackageNotFoundError:
        return "unknown"


def model_metadata(model: LoadedModel) -> dict:
    shape = list(model.input_spec.shape)
    return {
        "name": model.name,
        "versions": [str(model.version)],
        "platform": PLATFORMS.get(model.runtime.kind, model.runtime.kind),
        "inputs": [{"name": PIXELS_INPUT, "datatype": "FP32", "shape": [-1, *shape]},
                   {"name": IMAGE_INPUT, "datatype": "BYTES", "shape": [-1]}],
        "outputs": [{"name": OUTPUT, "datatype": "FP32", "shape": [-1, len(model.classes)]},
                    *([{"name": SET_OUTPUT, "datatype": "BOOL", "shape": [-1, len(model.classes)]},
                       {"name": UNSURE_OUTPUT, "datatype": "BOOL", "shape": [-1]}]
                      if model.uncertainty.thresholds is not None else []),
                    *([{"name": OOD_SCORE_OUTPUT, "datatype": "FP32", "shape": [-1]},
                       {"name": OOD_P_OUTPUT, "datatype": "FP32", "shape": [-1]}]
                      if model.uncertainty.ood_reference is not None else [])],
    }
