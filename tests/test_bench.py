"""The benchmark's own parts run against the shipped models (figures are printed by bench/run.py, never asserted)."""

import io

import numpy as np

from bench.bare_app import create_app as create_bare_app
from bench.run import BOUNDARY, in_process_costs, load_images, multipart
from tests.conftest import SHIPPED_MODELS, datasets_dir


def test_the_in_process_step_costs_cover_every_step_of_both_models(fashion, cifar_folder):
    images = load_images(datasets_dir(), 8)
    assert [len(blobs) for blobs, _ in images.values()] == [8, 8]
    costs = in_process_costs(images, SHIPPED_MODELS, repeat=8)
    for name in ("fashion_mnist", "cifar10"):
        steps = costs[name]
        assert steps.pop("runtime") == "onnx_int8"
        assert set(steps) == {"parse_us", "parse_werkzeug_us", "decode_us", "decode_pillow_us", "normalize_us",
                              "inference_us", "json_us", "json_stdlib_us", "metrics_us",
                              "inference_us_per_image_in_batch_of_32"}
        assert all(np.isfinite(value) for value in steps.values())


def test_the_bare_app_reads_the_whole_upload(fashion):
    (png, *_), content_type = load_images(datasets_dir(), 1)["fashion_mnist"]
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
