"""The standard protocols against the real server: KServe V2 through tritonclient, TF Serving through requests,
with the bodies each documents; every answer compared with /predict's on real test images."""

from __future__ import annotations

import base64
import io
import json
import struct

import numpy as np
import pytest
import requests
from PIL import Image

from tests.conftest import png_bytes

httpclient = pytest.importorskip("tritonclient.http")
from tritonclient.utils import InferenceServerException  # noqa: E402

BATCH = 50


@pytest.fixture(scope="module")
def triton(shipped_server):
    client = httpclient.InferenceServerClient(f"127.0.0.1:{shipped_server.port}", connection_timeout=30,
                                              network_timeout=60)
    yield client
    client.close()


def fashion_images(fashion, count):
    pixels = fashion.x_test[:count]
    return pixels, [png_bytes(p) for p in pixels], fashion.y_test[:count]


def cifar_images(cifar_folder, count):
    """The JPEG files as they are, and their pixels as Pillow decodes them."""
    paths = sorted((cifar_folder / "test").glob("*/*.jpg"))[::10][:count]
    files = [p.read_bytes() for p in paths]
    pixels = np.stack([np.asarray(Image.open(io.BytesIO(f)).convert("RGB")) for f in files])
    return pixels, files


def predict_probabilities(server, model, files, content_type):
    """/predict's probabilities, in batches of BATCH multipart images."""
    rows = []
    for start in range(0, len(files), BATCH):
        chunk = files[start:start + BATCH]
        response = requests.post(f"{server.url}/predict?model={model}",
                                 files=[("image", (f"{i}", data, content_type)) for i, data in enumerate(chunk)],
                                 timeout=60)
        assert response.status_code == 200, response.text
        rows += [p["probabilities"] for p in response.json()["predictions"]]
    return np.asarray(rows, dtype=np.float32)


def bytes_input(files, binary=True):
    tensor = httpclient.InferInput("image", [len(files)], "BYTES")
    if binary:
        tensor.set_data_from_numpy(np.array(files, dtype=np.object_), binary_data=True)
    else:  # JSON carries text only: each file in base64
        tensor.set_data_from_numpy(np.array([base64.b64encode(f) for f in files], dtype=np.object_),
                                   binary_data=False)
    return tensor


def pixels_input(pixels, binary=True):
    scaled = pixels.astype(np.float32) / np.float32(255.0)
    tensor = httpclient.InferInput("pixels", list(scaled.shape), "FP32")
    tensor.set_data_from_numpy(scaled, binary_data=binary)
    return tensor


def v2_probabilities(client, model, make_input, items, binary_output=True):
    rows = []
    for start in range(0, len(items), BATCH):
        result = client.infer(model, [make_input(items[start:start + BATCH])],
                              outputs=[httpclient.InferRequestedOutput("probabilities", binary_data=binary_output)])
        rows.append(result.as_numpy("probabilities"))
    return np.concatenate(rows)


def tf_serving_probabilities(server, model, items, layout="instances"):
    rows = []
    for start in range(0, len(items), BATCH):
        response = requests.post(f"{server.url}/v1/models/{model}:predict",
                                 json={layout: items[start:start + BATCH]}, timeout=60)
        assert response.status_code == 200, response.text
        rows += response.json()["predictions" if layout == "instances" else "outputs"]
    return np.asarray(rows, dtype=np.float32)


def b64(files):
    return [{"b64": base64.b64encode(f).decode()} for f in files]


def scaled_lists(pixels):
    return (pixels.astype(np.float32) / np.float32(255.0)).tolist()


def assert_same(probabilities, expected):
    assert probabilities.shape == expected.shape
    assert (probabilities.argmax(axis=1) == expected.argmax(axis=1)).all()
    np.testing.assert_allclose(probabilities, expected, rtol=0, atol=1e-6)


# --- KServe V2 through tritonclient ---------------------------------------------------------------------------

def test_tritonclient_sees_a_live_ready_server_and_its_models(triton):
    assert triton.is_server_live() and triton.is_server_ready()
    server = triton.get_server_metadata()
    assert server["name"] == "image-classifier-service" and "classification" in server["extensions"]
    assert "binary_tensor_data" in server["extensions"]
    for name, shape in (("fashion_mnist", [-1, 28, 28]), ("cifar10", [-1, 32, 32, 3])):
        assert triton.is_model_ready(name)
        metadata = triton.get_model_metadata(name)
        version = metadata["versions"][0]
        assert triton.is_model_ready(name, model_version=version)
        assert metadata["name"] == name and metadata["platform"] == "onnxruntime_onnx"
        assert {(i["name"], i["datatype"]) for i in metadata["inputs"]} == {("pixels", "FP32"), ("image", "BYTES")}
        assert next(i["shape"] for i in metadata["inputs"] if i["name"] == "pixels") == shape
        assert metadata["outputs"] == [
            {"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]},
            {"name": "prediction_set", "datatype": "BOOL", "shape": [-1, 10]},
            {"name": "unsure", "datatype": "BOOL", "shape": [-1]},
            {"name": "ood_score", "datatype": "FP32", "shape": [-1]},
            {"name": "ood_p_value", "datatype": "FP32", "shape": [-1]}]
        assert triton.get_model_metadata(name, model_version=version) == metadata


def test_v2_answers_equal_predict_on_1000_fashion_images_in_every_encoding(shipped_server, triton, fashion):
    pixels, files, labels = fashion_images(fashion, 1000)
    expected = predict_probabilities(shipped_server, "fashion_mnist", files, "image/png")
    assert (expected.argmax(axis=1) == labels).mean() > 0.85
    assert_same(v2_probabilities(triton, "fashion_mnist", pixels_input, pixels), expected)
    assert_same(v2_probabilities(triton, "fashion_mnist", bytes_input, files), expected)
    # JSON both ways, on a slice: the same numbers.
    assert_same(v2_probabilities(triton, "fashion_mnist", lambda p: pixels_input(p, binary=False), pixels[:100],
                                 binary_output=False), expected[:100])
    assert_same(v2_probabilities(triton, "fashion_mnist", lambda f: bytes_input(f, binary=False), files[:100],
                                 binary_output=False), expected[:100])


def test_v2_answers_equal_predict_on_1000_cifar_jpegs(shipped_server, triton, cifar_folder):
    pixels, files = cifar_images(cifar_folder, 1000)
    expected = predict_probabilities(shipped_server, "cifar10", files, "image/jpeg")
    assert_same(v2_probabilities(triton, "cifar10", bytes_input, files), expected)
    assert_same(v2_probabilities(triton, "cifar10", pixels_input, pixels), expected)


def test_v2_classification_extension_as_triton_does_it(shipped_server, triton, fashion):
    _, files, _ = fashion_images(fashion, 8)
    classes = requests.get(f"{shipped_server.url}/models/fashion_mnist", timeout=10).json()["classes"]
    for binary in (True, False):
        result = triton.infer("fashion_mnist", [bytes_input(files)], outputs=[
            httpclient.InferRequestedOutput("probabilities", binary_data=binary, class_count=3)])
        top = result.as_numpy("probabilities")
        assert top.shape == (8, 3)
        probabilities = triton.infer("fashion_mnist", [bytes_input(files)]).as_numpy("probabilities")
        for row, expected in zip(top, probabilities):
            fields = [(item.decode() if isinstance(item, bytes) else item).split(":", 2) for item in row]
            assert [int(index) for _, index, _ in fields] == list(np.argsort(-expected, kind="stable")[:3])
            assert all(abs(float(score) - expected[int(index)]) < 1e-6 for score, index, _ in fields)
            assert [label for _, _, label in fields] == [classes[int(index)] for _, index, _ in fields]


def test_v2_nested_json_data_and_the_request_id(shipped_server, fashion):
    pixels = fashion.x_test[:2].astype(np.float32) / np.float32(255.0)
    body = {"id": "req-7", "inputs": [{"name": "pixels", "datatype": "FP32", "shape": [2, 28, 28],
                                       "data": pixels.tolist()}]}
    nested = requests.post(f"{shipped_server.url}/v2/models/fashion_mnist/infer", json=body, timeout=10)
    body["inputs"][0]["data"] = pixels.ravel().tolist()
    flat = requests.post(f"{shipped_server.url}/v2/models/fashion_mnist/infer", json=body, timeout=10)
    assert nested.status_code == flat.status_code == 200
    assert nested.json() == flat.json()
    assert nested.json()["id"] == "req-7" and nested.json()["outputs"][0]["shape"] == [2, 10]


def test_v2_binary_bytes_by_hand_length_prefixed(shipped_server, fashion):
    """The binary extension without tritonclient: header length, binary_data_size, 4-byte LE prefixes."""
    _, files, _ = fashion_images(fashion, 3)
    payload = b"".join(struct.pack("<I", len(f)) + f for f in files)
    header = json.dumps({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [3],
                                     "parameters": {"binary_data_size": len(payload)}}],
                         "parameters": {"binary_data_output": True}}).encode()
    response = requests.post(f"{shipped_server.url}/v2/models/fashion_mnist/infer", data=header + payload,
                             headers={"Inference-Header-Content-Length": str(len(header)),
                                      "Content-Type": "application/octet-stream"}, timeout=10)
    assert response.status_code == 200
    size = int(response.headers["Inference-Header-Content-Length"])
    head = json.loads(response.content[:size])
    assert head["outputs"][0]["parameters"]["binary_data_size"] == 3 * 10 * 4
    probabilities = np.frombuffer(response.content[size:], dtype="<f4").reshape(3, 10)
    assert_same(probabilities, predict_probabilities(shipped_server, "fashion_mnist", files, "image/png"))


@pytest.mark.parametrize("path, body, headers, status, words", [
    ("/v2/models/fashion_mnist/infer", b"{not json", {}, 400, "not valid JSON"),
    ("/v2/models/fashion_mnist/infer", json.dumps({"inputs": [{"name": "pixels", "datatype": "FP32",
                                                               "shape": [1, 27, 28], "data": [0.0] * 756}]}),
     {}, 400, "do not fit"),
    ("/v2/models/fashion_mnist/infer", json.dumps({"inputs": [{"name": "pixels", "datatype": "INT64",
                                                               "shape": [1], "data": [1]}]}), {}, 400, "FP32"),
    ("/v2/models/fashion_mnist/infer", json.dumps({"inputs": [{"name": "pixels", "datatype": "FP32",
                                                               "shape": [1, 28, 28], "data": [2.0] * 784}]}),
     {}, 400, "[0, 1]"),
    ("/v2/models/fashion_mnist/infer", json.dumps({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1],
                                                               "data": [base64.b64encode(b"text").decode()]}]}),
     {}, 400, "not an image"),
    ("/v2/models/fashion_mnist/infer", json.dumps({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1],
                                                               "data": ["%%%"]}]}), {}, 400, "base64"),
    ("/v2/models/fashion_mnist/infer", json.dumps({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1],
                                                               "parameters": {"binary_data_size": 9}}]}),
     {"Inference-Header-Content-Length": "999999"}, 400, "Inference-Header-Content-Length"),
    ("/v2/models/fashion_mnist/infer", json.dumps({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1],
                                                               "data": ["aGk="]}],
                                                   "outputs": [{"name": "logits"}]}), {}, 400, "unknown output"),
    ("/v2/models/nope/infer", "{}", {}, 404, "no model named 'nope'"),
    ("/v2/models/fashion_mnist/versions/999/infer", "{}", {}, 404, "version 999"),
    ("/v2/models/fashion_mnist/versions/999/ready", None, {}, 404, "version 999"),
    ("/v2/models/nope", None, {}, 404, "no model named"),
    ("/v2/no/such/path", None, {}, 404, "not found"),
])
def test_v2_errors_are_a_message_string_with_the_right_status(shipped_server, path, body, headers, status, words):
    url = shipped_server.url + path
    response = (requests.get(url, timeout=10) if body is None
                else requests.post(url, data=body, headers={"Content-Type": "application/json", **headers},
                                   timeout=10))
    assert response.status_code == status
    error = response.json()["error"]
    assert isinstance(error, str) and words in error, error


def test_v2_oversized_body_is_413_and_tritonclient_reads_every_error(shipped_server, triton):
    response = requests.post(f"{shipped_server.url}/v2/models/fashion_mnist/infer",
                             data=b"x" * (10 * 1024 * 1024 + 1), timeout=30)
    assert response.status_code == 413 and "MAX_UPLOAD_BYTES" in response.json()["error"]
    with pytest.raises(InferenceServerException, match="no model named 'nope'"):
        triton.infer("nope", [bytes_input([b"x"])])
    with pytest.raises(InferenceServerException, match="not an image"):
        triton.infer("fashion_mnist", [bytes_input([b"not an image"])])
    assert not triton.is_model_ready("fashion_mnist", model_version="999")


# --- TF Serving REST through requests -------------------------------------------------------------------------

def test_tf_serving_status_and_metadata(shipped_server):
    for name, shape in (("fashion_mnist", ["-1", "28", "28"]), ("cifar10", ["-1", "32", "32", "3"])):
        status = requests.get(f"{shipped_server.url}/v1/models/{name}", timeout=10).json()
        (entry,) = status["model_version_status"]
        assert entry["state"] == "AVAILABLE" and entry["status"]["error_code"] == "OK"
        versioned = requests.get(f"{shipped_server.url}/v1/models/{name}/versions/{entry['version']}", timeout=10)
        assert versioned.json() == status
        metadata = requests.get(f"{shipped_server.url}/v1/models/{name}/metadata", timeout=10).json()
        assert metadata["model_spec"] == {"name": name, "signature_name": "", "version": entry["version"]}
        signature = metadata["metadata"]["signature_def"]["signature_def"]["serving_default"]
        assert [d["size"] for d in signature["inputs"]["pixels"]["tensor_shape"]["dim"]] == shape
        assert signature["inputs"]["image"]["dtype"] == "DT_STRING"
        assert signature["outputs"]["probabilities"]["dtype"] == "DT_FLOAT"


def test_tf_serving_predict_equals_predict_on_1000_fashion_images(shipped_server, fashion):
    pixels, files, _ = fashion_images(fashion, 1000)
    expected = predict_probabilities(shipped_server, "fashion_mnist", files, "image/png")
    assert_same(tf_serving_probabilities(shipped_server, "fashion_mnist", b64(files)), expected)
    assert_same(tf_serving_probabilities(shipped_server, "fashion_mnist", scaled_lists(pixels)), expected)
    named = [{"image": item} for item in b64(files[:100])]
    assert_same(tf_serving_probabilities(shipped_server, "fashion_mnist", named), expected[:100])
    columnar = {"image": b64(files[:BATCH])}
    response = requests.post(f"{shipped_server.url}/v1/models/fashion_mnist:predict", json={"inputs": columnar},
                             timeout=30)
    assert_same(np.asarray(response.json()["outputs"], np.float32), expected[:BATCH])


def test_tf_serving_predict_equals_predict_on_1000_cifar_jpegs(shipped_server, cifar_folder):
    pixels, files = cifar_images(cifar_folder, 1000)
    expected = predict_probabilities(shipped_server, "cifar10", files, "image/jpeg")
    assert_same(tf_serving_probabilities(shipped_server, "cifar10", b64(files)), expected)
    assert_same(tf_serving_probabilities(shipped_server, "cifar10", scaled_lists(pixels), layout="inputs"),
                expected)


def test_tf_serving_classify_returns_label_score_pairs(shipped_server, fashion):
    _, files, labels = fashion_images(fashion, 5)
    version = requests.get(f"{shipped_server.url}/v1/models/fashion_mnist", timeout=10).json()
    version = version["model_version_status"][0]["version"]
    response = requests.post(f"{shipped_server.url}/v1/models/fashion_mnist/versions/{version}:classify",
                             json={"signature_name": "serving_default",
                                   "examples": [{"image": item} for item in b64(files)]}, timeout=10)
    assert response.status_code == 200
    expected = predict_probabilities(shipped_server, "fashion_mnist", files, "image/png")
    classes = requests.get(f"{shipped_server.url}/models/fashion_mnist", timeout=10).json()["classes"]
    for pairs, row in zip(response.json()["result"], expected):
        assert len(pairs) == 10 and [score for _, score in pairs] == sorted((s for _, s in pairs), reverse=True)
        assert pairs[0][0] == classes[int(row.argmax())]
        assert abs(pairs[0][1] - row.max()) < 1e-6


@pytest.mark.parametrize("path, body, status, words", [
    ("/v1/models/fashion_mnist:predict", b"[1, 2", 400, "not valid JSON"),
    ("/v1/models/fashion_mnist:predict", json.dumps({"instances": []}), 400, "non-empty list"),
    ("/v1/models/fashion_mnist:predict", json.dumps({"instances": [[0.5] * 10]}), 400, "do not fit"),
    ("/v1/models/fashion_mnist:predict", json.dumps({"instances": [{"b64": "@@@"}]}), 400, "base64"),
    ("/v1/models/fashion_mnist:predict", json.dumps({"instances": [{"b64": "dGV4dA=="}]}), 400, "not an image"),
    ("/v1/models/fashion_mnist:predict", json.dumps({"instances": [[[0.0] * 28] * 28], "inputs": []}), 400,
     "exactly one"),
    ("/v1/models/fashion_mnist:predict", json.dumps({"signature_name": "other", "instances": [1]}), 400,
     "signature_name"),
    ("/v1/models/fashion_mnist:regress", "{}", 404, "no such endpoint"),
    ("/v1/models/nope:predict", json.dumps({"instances": [{"b64": "dGV4dA=="}]}), 404, "no model named"),
    ("/v1/models/fashion_mnist/versions/999:predict", json.dumps({"instances": [[0.0]]}), 404, "version 999"),
    ("/v1/models/fashion_mnist/versions/999", None, 404, "version 999"),
])
def test_tf_serving_errors_are_a_message_string(shipped_server, path, body, status, words):
    url = shipped_server.url + path
    response = requests.get(url, timeout=10) if body is None else requests.post(url, data=body, timeout=10)
    assert response.status_code == status
    error = response.json()["error"]
    assert isinstance(error, str) and words in error, error


def test_protocol_is_a_label_of_the_request_counter(shipped_server, fashion):
    from prometheus_client.parser import text_string_to_metric_families

    _, files, _ = fashion_images(fashion, 1)
    requests.post(f"{shipped_server.url}/v1/models/fashion_mnist:predict", json={"instances": b64(files)}, timeout=10)
    requests.get(f"{shipped_server.url}/v2/health/live", timeout=10)
    text = requests.get(f"{shipped_server.url}/metrics", timeout=10).text
    protocols = {sample.labels["protocol"] for family in text_string_to_metric_families(text)
                 if family.name == "classifier_http_requests" for sample in family.samples}
    assert {"native", "kserve_v2", "tf_serving"} <= protocols


@pytest.mark.slow
def test_every_protocol_equals_predict_on_all_10000_test_images_of_both_models(shipped_server, triton, fashion,
                                                                                 cifar_folder):
    pixels, files, _ = fashion_images(fashion, 10_000)
    expected = predict_probabilities(shipped_server, "fashion_mnist", files, "image/png")
    assert_same(v2_probabilities(triton, "fashion_mnist", pixels_input, pixels), expected)
    assert_same(v2_probabilities(triton, "fashion_mnist", bytes_input, files), expected)
    assert_same(tf_serving_probabilities(shipped_server, "fashion_mnist", b64(files)), expected)
    paths = sorted((cifar_folder / "test").glob("*/*.jpg"))
    files = [p.read_bytes() for p in paths]
    expected = predict_probabilities(shipped_server, "cifar10", files, "image/jpeg")
    assert_same(v2_probabilities(triton, "cifar10", bytes_input, files), expected)
    assert_same(tf_serving_probabilities(shipped_server, "cifar10", b64(files)), expected)
