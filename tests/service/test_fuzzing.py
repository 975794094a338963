"""Property-based fuzzing of everything that parses client input: whatever arrives, a parser either returns its
value or raises a ``ClientError`` (a 4xx with a message), never anything that would become a 500.

Bounded and repeatable: hypothesis runs a fixed number of examples per parser from a derandomized seed.
"""

from __future__ import annotations

import io
import json
import struct

import numpy as np
import pytest
from flask import Flask
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image

from service.errors import ClientError
from service.feedback.labels import parse_label
from contract.metadata import InputSpec
from service.inference.images import DecodeLimits, inspect_image
from service.inference.classify import check_pixels
from service.inference.uploads import whole_number
from service.protocols.kserve_v2 import codec as kserve_v2
from service.protocols.native import codec as native
from service.protocols.tf_serving import codec as tf_serving
from service.inference.registry import ModelRegistry
from service.settings import Settings
from service.inference.uploads import read_form
from tests.conftest import SHIPPED_MODELS

FUZZ = settings(max_examples=300, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
LIMITS = DecodeLimits.from_settings(Settings())

# Any JSON value, with the keys the protocols look for among the random ones.
KEYS = st.sampled_from(["inputs", "outputs", "name", "datatype", "shape", "data", "parameters", "id",
                        "binary_data_size", "binary_data", "binary_data_output", "classification", "instances",
                        "examples", "signature_name", "b64", "image", "pixels"]) | st.text(max_size=8)
SCALARS = (st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=True)
           | st.text(max_size=20) | st.sampled_from(["image", "pixels", "probabilities", "FP32", "BYTES", "aGk="]))
JSON = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=6) | st.dictionaries(KEYS, inner, max_size=6),
                    max_leaves=40)


@pytest.fixture(scope="module")
def models():
    registry = ModelRegistry(SHIPPED_MODELS)
    registry.refresh()
    return registry.snapshot()


def refuses_cleanly(call):
    try:
        return call()
    except ClientError as error:
        assert error.status in range(400, 600) and error.message
        return None


def _encode(document) -> bytes:
    return json.dumps(document, allow_nan=True).encode()


DEEP = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": "aGk="}]}
for _ in range(1000):
    DEEP["inputs"][0]["data"] = [DEEP["inputs"][0]["data"]]
HEADER_LENGTHS = st.none() | st.text(max_size=30) | st.sampled_from(["\u00b2", "1\u00b2", "9" * 6000, "-1", "+5"])


@FUZZ
@given(document=JSON, binary=st.binary(max_size=64), header_length=HEADER_LENGTHS)
@example(document=DEEP, binary=b"", header_length=None)  # reported: 500s, each of them
@example(document={}, binary=b"", header_length="9" * 6000)
@example(document={}, binary=b"", header_length="1\u00b2")
def test_kserve_v2_requests(document, binary, header_length):
    body = _encode(document)
    refuses_cleanly(lambda: kserve_v2.parse_infer_request(body + binary, header_length, 64))
    refuses_cleanly(lambda: kserve_v2.parse_infer_request(body, str(len(body)), 64))


@FUZZ
@given(tensor=st.fixed_dictionaries({"name": st.sampled_from(["image", "pixels"]),
                                     "datatype": st.sampled_from(["BYTES", "FP32", "INT8"]),
                                     "shape": st.lists(st.integers(-1, 70), max_size=70)},
                                    optional={"data": JSON, "parameters": JSON}),
       outputs=st.none() | st.lists(st.dictionaries(KEYS, JSON, max_size=3), max_size=4),
       binary=st.binary(max_size=200))
@example(tensor={"name": "pixels", "datatype": "FP32", "shape": [1] * 65, "data": [0.5]}, outputs=None, binary=b"")
@example(tensor={"name": "image", "datatype": "BYTES", "shape": [1], "data": ["aGk="]},
         outputs=[{"name": "probabilities"}] * 5000, binary=b"")
def test_kserve_v2_tensors_and_outputs(tensor, outputs, binary, models):
    document = {"inputs": [tensor]} if outputs is None else {"inputs": [tensor], "outputs": outputs}
    body = _encode(document)
    parsed = refuses_cleanly(lambda: kserve_v2.parse_infer_request(body + binary, str(len(body)), 64))
    if parsed is not None and parsed.input.datatype == "FP32":
        refuses_cleanly(lambda: check_pixels(models["fashion_mnist"], parsed.input.value))


@FUZZ
@given(document=JSON)
def test_tf_serving_requests(document):
    body = _encode(document)
    parsed = refuses_cleanly(lambda: tf_serving.parse_body(body))
    if parsed is not None:
        items = refuses_cleanly(lambda: tf_serving.predict_items(parsed))
        if items is not None:
            refuses_cleanly(lambda: tf_serving.decode_instances(items[0], 64))


@FUZZ
@given(raw=st.none() | st.text(max_size=30) | st.sampled_from(["\u00b3", "9" * 6000, "07", "1e3", " 3"]))
def test_query_values_and_labels(raw, models):
    model = models["fashion_mnist"]
    refuses_cleanly(lambda: native.parse_top_k(raw, model, 5))
    refuses_cleanly(lambda: native.parse_include(raw))
    refuses_cleanly(lambda: parse_label(raw, model))
    assert whole_number(raw) is None or 0 <= whole_number(raw) < 10**18


@FUZZ
@given(body=st.binary(max_size=400), boundary=st.text(min_size=0, max_size=12),
       content_type=st.sampled_from(["multipart/form-data", "image/png", "application/octet-stream", "text/plain",
                                     ""]),
       parts=st.lists(st.tuples(st.sampled_from(["image", "label", "id", "x"]), st.binary(max_size=60)),
                      max_size=5))
def test_uploads(body, boundary, content_type, parts):
    app = Flask(__name__)
    well_formed = b"".join(f"--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n".encode()
                           + data + b"\r\n" for name, data in parts) + f"--{boundary}--\r\n".encode()
    full_type = f"{content_type}; boundary={boundary}" if content_type.startswith("multipart") else content_type
    for data in (body, well_formed, well_formed[:len(well_formed) // 2]):
        with app.test_request_context("/predict", method="POST", data=data, content_type=full_type or None):
            from flask import request

            refuses_cleanly(lambda: read_form(request, 4, 1 << 20))


def _real_files() -> list[bytes]:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (40, 30, 3), dtype=np.uint8)
    files = []
    for fmt, mode in (("PNG", "RGB"), ("PNG", "L"), ("JPEG", "RGB"), ("GIF", "P"), ("BMP", "RGB"), ("WEBP", "RGB"),
                      ("TIFF", "RGB"), ("PNG", "RGBA")):
        buffer = io.BytesIO()
        Image.fromarray(pixels).convert(mode).save(buffer, format=fmt)
        files.append(buffer.getvalue())
    return files


REAL_FILES = _real_files()
GRAY = InputSpec((28, 28), "grayscale", True)
RGB = InputSpec((32, 32, 3), "rgb", False)


@FUZZ
@given(index=st.integers(0, len(REAL_FILES) - 1), cut=st.integers(0, 4000),
       flips=st.lists(st.tuples(st.integers(0, 4000), st.integers(0, 255)), max_size=6),
       tail=st.binary(max_size=16))
def test_damaged_image_files(index, cut, flips, tail):
    """Real files of every supported format, cut short, with bytes changed, with bytes appended."""
    data = bytearray(REAL_FILES[index][:max(cut, 1)] if cut else REAL_FILES[index])
    for position, value in flips:
        if position < len(data):
            data[position] = value
    data = bytes(data) + tail
    for spec in (GRAY, RGB):
        result = refuses_cleanly(lambda: inspect_image(data, spec, LIMITS))
        if result is not None:
            array, _ = result
            assert array.shape == spec.shape and np.isfinite(array).all()
            assert 0.0 <= array.min() and array.max() <= 1.0


@FUZZ
@given(header=st.binary(min_size=0, max_size=64))
def test_image_headers_that_claim_anything(header):
    """A PNG signature and IHDR with random fields, or a JPEG start with random markers."""
    for prefix in (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", b"\xff\xd8\xff", b"GIF89a", b"RIFF\x00\x00\x00\x00WEBPVP8L"):
        data = prefix + header + struct.pack(">I", len(header))
        refuses_cleanly(lambda: inspect_image(data, GRAY, LIMITS))
