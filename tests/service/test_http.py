"""The real service under gunicorn (2 workers) on a loopback port, driven over HTTP with real images."""

import io

import numpy as np
import pytest
import requests
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from service.settings import Settings
from tests.conftest import SHIPPED_MODELS, png_bytes, shipped_metadata


def metadata(name):
    return shipped_metadata(name)


def served_runtime(server, name):
    """What the served runtime (int8 by default) was measured to do at publish time."""
    kind = requests.get(f"{server.url}/models/{name}", timeout=10).json()["runtime"]
    return kind, metadata(name)["runtimes"][kind]


def samples(server, name):
    """Every sample of every metric, keyed by (sample name, sorted labels)."""
    text = requests.get(server.url + "/metrics", timeout=10).text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples if s.name.startswith(name)}


def post_images(server, images, model="fashion_mnist", **params):
    files = [("image", (f"{i}.png", data, "image/png")) for i, data in enumerate(images)]
    return requests.post(server.url + "/predict", params={"model": model, **params}, files=files, timeout=30)


def test_health_readiness_and_model_metadata(shipped_server):
    assert requests.get(shipped_server.url + "/healthz").json() == {"status": "ok"}
    ready = requests.get(shipped_server.url + "/readyz")
    assert ready.status_code == 200 and set(ready.json()["models"]) == {"fashion_mnist", "cifar10", "mnist"}
    listing = requests.get(shipped_server.url + "/models").json()
    assert {m["name"] for m in listing["models"]} == {"fashion_mnist", "cifar10", "mnist"}
    detail = requests.get(shipped_server.url + "/models/cifar10").json()
    assert detail["classes"][3] == "cat" and detail["input"]["shape"] == [32, 32, 3]
    assert detail["metrics"]["test"]["accuracy"] == metadata("cifar10")["metrics"]["test"]["accuracy"]
    assert detail["preprocessing"]["invert_light_background"] is False and detail["runtime"] == "onnx_int8"
    assert detail["metrics"]["served_test_accuracy"] == metadata("cifar10")["runtimes"]["onnx_int8"]["test_accuracy"]


def test_predict_returns_sorted_classes_and_a_full_distribution(shipped_server, fashion):
    response = post_images(shipped_server, [png_bytes(fashion.x_test[0])], top_k=3)
    assert response.status_code == 200
    body = response.json()
    assert body["model"] == "fashion_mnist" and body["version"] == metadata("fashion_mnist")["version"]
    (prediction,) = body["predictions"]
    top = prediction["top"]
    assert len(top) == 3 and [t["probability"] for t in top] == sorted((t["probability"] for t in top), reverse=True)
    assert top[0]["label"] == "Ankle boot" and top[0]["index"] == int(fashion.y_test[0])
    assert len(prediction["probabilities"]) == 10 and sum(prediction["probabilities"]) == pytest.approx(1, abs=1e-5)


def test_several_images_give_one_result_each_in_order(shipped_server, fashion):
    picks = [fashion.x_test[i] for i in range(8)]
    body = post_images(shipped_server, [png_bytes(p) for p in picks]).json()
    single = [post_images(shipped_server, [png_bytes(p)]).json()["predictions"][0] for p in picks]
    # Exactly the same numbers: an image's result never depends on the others in its request.
    assert body["predictions"] == single
    assert np.allclose([p["probabilities"] for p in body["predictions"]], [s["probabilities"] for s in single],
                       atol=1e-6)


def test_a_raw_image_body_is_accepted(shipped_server, cifar_folder):
    jpeg = next((cifar_folder / "test" / "horse").glob("*.jpg")).read_bytes()
    response = requests.post(shipped_server.url + "/predict?model=cifar10", data=jpeg,
                             headers={"Content-Type": "image/jpeg"}, timeout=10)
    assert response.status_code == 200 and len(response.json()["predictions"][0]["probabilities"]) == 10


def test_a_dark_on_light_photo_is_classified_like_the_original(shipped_server, fashion):
    agree = 0
    for pixels in fashion.x_test[:50]:
        photo = Image.fromarray(255 - pixels).resize((224, 224), Image.Resampling.BICUBIC).convert("RGB")
        buffer = io.BytesIO()
        photo.save(buffer, format="JPEG", quality=90)
        original, inverted = (post_images(shipped_server, [data]).json()["predictions"][0]["top"][0]["index"]
                              for data in (png_bytes(pixels), buffer.getvalue()))
        agree += original == inverted
    assert agree >= 45  # resampling and JPEG change a few borderline images, inversion must not


def _served_accuracy(server, model, encoded, labels, batch=50):
    correct = 0
    for start in range(0, len(encoded), batch):
        response = post_images(server, encoded[start:start + batch], model=model)
        assert response.status_code == 200, response.text
        predicted = [p["top"][0]["index"] for p in response.json()["predictions"]]
        correct += int(np.sum(np.array(predicted) == labels[start:start + batch]))
    return correct


def test_served_accuracy_on_the_fashion_test_set_equals_the_recorded_one(shipped_server, fashion):
    _, recorded = served_runtime(shipped_server, "fashion_mnist")
    assert recorded["samples"] == 10000
    encoded = [png_bytes(pixels) for pixels in fashion.x_test]
    assert _served_accuracy(shipped_server, "fashion_mnist", encoded, fashion.y_test) == recorded["correct"]


def test_served_accuracy_on_the_cifar_jpeg_files_equals_the_recorded_one(shipped_server, cifar_folder):
    from training.datasets import SPECS

    _, recorded = served_runtime(shipped_server, "cifar10")
    files = sorted((cifar_folder / "test").glob("*/*.jpg"), key=lambda p: (SPECS["cifar10"].classes.index(
        p.parent.name), p.name))
    labels = np.array([SPECS["cifar10"].classes.index(p.parent.name) for p in files])
    assert len(files) == recorded["samples"] == 10000
    correct = _served_accuracy(shipped_server, "cifar10", [p.read_bytes() for p in files], labels)
    assert correct == recorded["correct"]


def _error(response, status, code):
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"] == "application/json"
    body = response.json()
    assert body["error"]["code"] == code and body["error"]["message"]


def test_errors_are_json_with_the_right_status(shipped_server, fashion):
    url = shipped_server.url + "/predict"
    _error(requests.post(url, files={"photo": ("a.png", png_bytes(fashion.x_test[0]))}), 400, "missing_image")
    _error(requests.post(url), 400, "missing_image")
    _error(requests.post(url, files={"image": ("a.png", b"GIF89a but not really")}), 400, "invalid_image")
    _error(requests.post(url, files={"image": ("a.png", png_bytes(fashion.x_test[0])[:80])}), 400, "invalid_image")
    _error(requests.post(url, params={"top_k": "11"}, files={"image": png_bytes(fashion.x_test[0])}), 400,
           "invalid_parameter")
    _error(requests.post(url, params={"model": "svhn"}, files={"image": png_bytes(fashion.x_test[0])}), 404,
           "unknown_model")
    _error(requests.get(url), 405, "method_not_allowed")
    _error(requests.get(shipped_server.url + "/nowhere"), 404, "not_found")
    _error(requests.post(url, files={"image": ("big.png", b"\0" * (11 * 1024 * 1024))}), 413, "payload_too_large")
    _error(requests.post(url, json={"image": "base64?"}), 415, "unsupported_media_type")
    _error(requests.post(url, data=b"--b\r\nContent-Disposition: form-data; name=image\r\n",
                         headers={"Content-Type": "multipart/form-data; boundary=b"}), 400, "invalid_upload")
    ico = io.BytesIO()
    Image.fromarray(fashion.x_test[0]).save(ico, format="ICO")
    _error(requests.post(url, files={"image": ("a.ico", ico.getvalue())}), 415, "unsupported_media_type")
    bomb = png_bytes(np.zeros((7000, 7000), np.uint8))  # 49 megapixels in a small file
    _error(requests.post(url, files={"image": ("bomb.png", bomb)}), 422, "image_too_large")
    _error(post_images(shipped_server, [png_bytes(fashion.x_test[0])] * 65), 400, "too_many_images")
    # Nothing above hurt the workers.
    assert requests.get(shipped_server.url + "/readyz").status_code == 200
    statuses = {dict(labels).get("status") for (name, labels) in samples(shipped_server, "classifier_http_requests")}
    assert "500" not in statuses


def test_metrics_count_every_request_across_workers(shipped_server, fashion):
    before = samples(shipped_server, "classifier_")
    images = [png_bytes(pixels) for pixels in fashion.x_test[:3]]
    for _ in range(20):
        assert post_images(shipped_server, images).status_code == 200
    after = samples(shipped_server, "classifier_")

    def delta(name, **labels):
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0) - before.get(key, 0)

    assert delta("classifier_http_requests_total", protocol="native", endpoint="/predict", model="fashion_mnist", status="200") == 20
    predicted = sum(after[k] - before.get(k, 0) for k in after if k[0] == "classifier_predictions_total")
    assert predicted == 60
    assert delta("classifier_images_per_request_count", model="fashion_mnist") == 20
    assert delta("classifier_images_per_request_sum", model="fashion_mnist") == 60
    assert delta("classifier_inference_duration_seconds_count", model="fashion_mnist") == 20
    assert delta("classifier_decode_duration_seconds_count", model="fashion_mnist") == 20
    version = str(metadata("fashion_mnist")["version"])
    assert after[("classifier_model_info", (("model", "fashion_mnist"), ("version", version)))] == 1
    labels = {dict(k[1]).get("label") for k in after if k[0] == "classifier_predictions_total"}
    assert labels <= {label for name in ("fashion_mnist", "cifar10", "mnist") for label in metadata(name)["classes"]}


def test_served_probabilities_are_the_calibrated_ones_and_models_show_calibration(shipped_server, fashion):
    """/predict gives what the served graph computes offline, and that graph has the temperature baked in:
    its ECE/NLL on these images equal what the recorded served figures' recipe gives."""
    import onnxruntime

    from training.evaluation import calibration_figures

    meta = metadata("fashion_mnist")
    kind, _ = served_runtime(shipped_server, "fashion_mnist")
    model_file = {"onnx_int8": "model.int8.onnx", "onnx": "model.onnx"}[kind]
    count = 300
    per_request = Settings.max_images_per_request  # the server runs with the default limit
    served = np.array([p["probabilities"] for start in range(0, count, per_request) for p in post_images(
        shipped_server, [png_bytes(fashion.x_test[i]) for i in range(start, min(start + per_request, count))]
    ).json()["predictions"]])
    session = onnxruntime.InferenceSession(str(SHIPPED_MODELS / "fashion_mnist" / str(meta["version"]) / model_file))
    offline = session.run(None, {session.get_inputs()[0].name: fashion.x_test[:count].astype(np.float32) / 255})[0]
    assert np.max(np.abs(served - offline)) < 1e-5
    assert calibration_figures(fashion.y_test[:count], served) == pytest.approx(
        calibration_figures(fashion.y_test[:count], offline), abs=1e-5)

    calibration = meta["calibration"]
    assert calibration["served"]["runtime"] == kind and calibration["temperature"] > 0
    detail = requests.get(shipped_server.url + "/models/fashion_mnist", timeout=10).json()
    assert detail["metrics"]["calibration"] == {k: calibration["served"][k] for k in ("runtime", "ece", "nll")}
    assert detail["calibration"]["temperature"] == calibration["temperature"]
    brief = requests.get(shipped_server.url + "/models", timeout=10).json()["models"]
    assert all(m["metrics"]["calibration"]["ece"] >= 0 for m in brief)
