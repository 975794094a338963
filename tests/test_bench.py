"""The benchmark's own parts run against the shipped models (figures are printed by bench/run.py, never asserted)."""

import io
from pathlib import Path

import numpy as np

from bench.bare_app import create_app as create_bare_app
from bench.peers import BOUNDARY, multipart
from bench.run import floors_table, in_process_costs, load_images, served_model_file
from tests.conftest import SHIPPED_MODELS, datasets_dir


def test_the_in_process_step_costs_cover_every_step_of_both_models(fashion, cifar_folder):
    images = load_images(datasets_dir(), 8)
    assert [len(blobs) for blobs, _, _ in images.values()] == [8, 8]
    costs = in_process_costs(images, SHIPPED_MODELS, repeat=8)
    for name in ("fashion_mnist", "cifar10"):
        steps = costs[name]
        assert steps.pop("runtime") == "onnx_int8"
        assert set(steps) == {"parse_us", "parse_werkzeug_us", "decode_us", "decode_pillow_us", "normalize_us",
                              "inference_us", "json_us", "json_stdlib_us", "metrics_us", "monitoring_us",
                              "prediction_id_us", "inference_us_per_image_in_batch_of_32", "decoder_alone_us",
                              "weight_bytes"}
        assert all(np.isfinite(value) for value in steps.values())
        assert 0 < steps["decoder_alone_us"] < steps["decode_us"] + steps["normalize_us"]
        served_file = served_model_file(SHIPPED_MODELS, name)
        assert 0.5 * served_file.stat().st_size < steps["weight_bytes"] <= served_file.stat().st_size


def test_the_floors_table_sets_each_step_beside_its_floor():
    """Figures shaped as bench/run.py gathers them; the table only divides and subtracts them."""
    row = {"server_cpu_us_per_request": 700.0}
    summary = {"models": {"m": {"service": row, "unmonitored": {"server_cpu_us_per_request": 650.0},
                                "bare": {"server_cpu_us_per_request": 400.0},
                                "fixed": {"server_cpu_us_per_request": 550.0}}},
               "served_us_per_request": {"m": {"inference_us": 80.0, "decode_us": 70.0}},
               "in_process_us_per_image": {"m": {"inference_us": 30.0, "weight_bytes": 1_000_000,
                                                 "inference_us_per_image_in_batch_of_32": 5.0, "decode_us": 20.0,
                                                 "normalize_us": 5.0, "decoder_alone_us": 15.0, "metrics_us": 10.0,
                                                 "monitoring_us": 4.0, "json_us": 8.0, "prediction_id_us": 3.0}}}
    table = floors_table(summary)
    bandwidth = table["read_bandwidth_gb_per_s"]
    assert 0.5 < bandwidth < 1000
    steps = table["models"]["m"]
    assert steps["inference"] == {"under_load": 80.0, "in_process": 30.0, "floor_memory": 1e6 / (bandwidth * 1e3),
                                  "floor_batch_of_32": 5.0}
    assert steps["decode_and_normalize"] == {"under_load": 70.0, "in_process": 25.0, "floor": 15.0}
    assert steps["http"] == {"under_load": 550.0, "floor": 400.0}
    assert steps["own_logic"] == {"in_process": 25.0, "under_load": 50.0}


def test_the_bare_app_reads_the_whole_upload(fashion):
    (png, *_), content_type, _ = load_images(datasets_dir(), 1)["fashion_mnist"]
    response = create_bare_app().test_client().post(
        "/predict", data=multipart([png, png], content_type),
        headers={"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"})
    assert response.status_code == 200 and response.json == {"ok": True, "bytes": 2 * len(png)}


def test_served_step_means_come_from_the_services_own_metrics(shipped_server, fashion):
    import requests

    from bench.run import served_step_means
    from tests.conftest import png_bytes

    for pixels in fashion.x_test[:3]:
        requests.post(shipped_server.url + "/predict", files={"image": png_bytes(pixels)}, timeout=10)
    means = served_step_means(shipped_server.port)
    assert set(means["fashion_mnist"]) == {"decode_us", "inference_us"}
    assert all(0 < value < 1e6 for value in means["fashion_mnist"].values())


def test_the_fixed_answer_app_is_the_service_without_its_models_work(fashion):
    from bench.fixed_answer_app import create_app as create_fixed_app
    from tests.conftest import png_bytes

    client = create_fixed_app().test_client()
    bodies = [client.post("/predict?model=fashion_mnist", data={"image": (io.BytesIO(png_bytes(pixels)), "x.png")},
                          content_type="multipart/form-data").json for pixels in fashion.x_test[:3]]
    assert [body["model"] for body in bodies] == ["fashion_mnist"] * 3
    probabilities = [body["predictions"][0]["probabilities"] for body in bodies]
    assert probabilities[0] == probabilities[1] == probabilities[2]
    assert len(probabilities[0]) == 10 and abs(sum(probabilities[0]) - 1) < 1e-5
    bad = client.post("/predict?model=fashion_mnist", data={"image": (io.BytesIO(b"not an image"), "x.png")},
                      content_type="multipart/form-data")
    assert bad.status_code == 400 and bad.json["error"]["code"] == "invalid_image"


def test_the_peers_shared_classifier_agrees_with_the_service_on_real_images(fashion, monkeypatch):
    """What every peer serves: the same int8 model, giving the labels the benchmark's label check expects."""
    import importlib
    import sys

    from service.inference.registry import ModelRegistry
    from tests.conftest import png_bytes

    monkeypatch.setenv("PEER_MODEL", str(served_model_file(SHIPPED_MODELS, "fashion_mnist")))
    monkeypatch.setenv("PEER_COLOR_MODE", "L")
    sys.modules.pop("bench.peer_servers.classifier", None)
    classifier = importlib.import_module("bench.peer_servers.classifier")
    images = [png_bytes(pixels) for pixels in fashion.x_test[:50]]
    peer_labels = classifier.classify(classifier.load_session(), images).argmax(axis=1)
    registry = ModelRegistry(SHIPPED_MODELS, "onnx_int8")
    registry.refresh()
    model = registry.get("fashion_mnist")
    served = model.runtime.predict(fashion.x_test[:50].astype(np.float32) / 255.0).argmax(axis=1)
    assert (peer_labels == served).mean() >= 0.98


def test_each_peers_request_carries_the_image_in_its_own_format():
    import base64
    import json
    import struct

    from bench.peers import MULTIPART_TYPE, PEERS

    image = b"\x89PNG fake image bytes"
    formats = {peer.key: peer.request(image, "image/png") for peer in PEERS}
    triton = formats["triton"]
    size = int(triton.headers["Inference-Header-Content-Length"])
    header = json.loads(triton.body[:size])
    assert header["inputs"][0]["datatype"] == "BYTES"
    assert header["inputs"][0]["parameters"]["binary_data_size"] == len(image) + 4
    assert struct.unpack("<I", triton.body[size:size + 4])[0] == len(image) and triton.body.endswith(image)
    mlserver = json.loads(formats["mlserver"].body)
    assert base64.b64decode(mlserver["inputs"][0]["data"][0]) == image
    for key in ("litserve", "bentoml"):
        assert formats[key].headers["Content-Type"] == MULTIPART_TYPE and image in formats[key].body
    probabilities = [0.1, 0.7, 0.2]
    binary = struct.pack("<3f", *probabilities)
    assert PEERS[0].top1(b"{}" + binary, {"Inference-Header-Content-Length": "2"}) == 1


def test_the_protocol_requests_of_the_benchmark_are_answered_like_predict(fashion):
    from bench.peers import v2_binary_request
    from bench.run import tf_serving_request
    from service.app import create_app
    from tests.conftest import png_bytes

    client = create_app(watch=False).test_client()
    image = png_bytes(fashion.x_test[0])
    expected = client.post("/predict", data=image, content_type="image/png").json["predictions"][0]["probabilities"]
    v2 = v2_binary_request("/v2/models/fashion_mnist/infer", image)
    response = client.post(v2.path, data=v2.body, headers=v2.headers)
    size = int(response.headers["Inference-Header-Content-Length"])
    assert np.frombuffer(response.data[size:], "<f4").tolist() == np.float32(expected).tolist()
    tf = tf_serving_request("fashion_mnist", image)
    assert client.post(tf.path, data=tf.body, headers=tf.headers).json["predictions"] == [expected]


def test_compare_targets_name_a_models_folder_and_settings():
    import argparse

    import pytest

    from bench.compare import parse_target

    assert parse_target("after=models") == ("after", Path("models"), {})
    assert parse_target("bare=models:APP=bench.bare_app:create_app(),WORKER_CLASS=sync") == (
        "bare", Path("models"), {"APP": "bench.bare_app:create_app()", "WORKER_CLASS": "sync"})
    with pytest.raises(argparse.ArgumentTypeError, match="expected NAME=MODELS_DIR"):
        parse_target("models")


def test_the_bare_wsgi_app_reads_the_whole_upload_without_a_framework():
    from werkzeug.test import Client

    from bench.bare_wsgi_app import create_app as create_wsgi_app

    client = Client(create_wsgi_app())
    response = client.post("/predict", data=b"x" * 1000, headers={"Content-Type": "image/png"})
    assert response.status_code == 200 and response.json == {"ok": True, "bytes": 1000}
    assert client.get("/readyz").json == {"status": "ready"}


def test_the_shadowed_server_has_a_version_on_trial_beside_each_current_one(tmp_path):
    from bench.run import models_on_trial
    from contract.layout import candidate_version, current_version
    from service.inference.registry import ModelRegistry
    from tests.conftest import SHIPPED_MODELS

    folder = models_on_trial(SHIPPED_MODELS, tmp_path)
    registry = ModelRegistry(folder)
    registry.refresh()
    for name in ("fashion_mnist", "cifar10", "mnist"):
        assert candidate_version(folder, name) not in (None, current_version(folder, name))
        assert registry.candidate(name).version == candidate_version(folder, name)  # loaded and verified
    assert candidate_version(SHIPPED_MODELS, "fashion_mnist") is None  # the shipped folder is untouched
