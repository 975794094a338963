"""The third shipped model, MNIST digits, served like the others: its accuracy over HTTP equals the recorded one
on every test digit, a standard protocol gives /predict's answers, and digits written dark on light paper are
read like the originals."""

from __future__ import annotations

import io

import numpy as np
import pytest
import requests
from PIL import Image

from tests.conftest import png_bytes
from tests.service.test_protocols import assert_same, bytes_input, pixels_input, predict_probabilities, v2_probabilities

httpclient = pytest.importorskip("tritonclient.http")


def served_record(server) -> dict:
    """What the served runtime was measured to do on the test digits at publish time."""
    detail = requests.get(f"{server.url}/models/mnist", timeout=10).json()
    return detail["runtimes"][detail["runtime"]]


def test_mnist_is_served_beside_the_others_and_says_its_test_set_is_a_subset(shipped_server):
    listing = requests.get(f"{shipped_server.url}/models", timeout=10).json()
    assert sorted(m["name"] for m in listing["models"]) == ["cifar10", "fashion_mnist", "mnist"]
    detail = requests.get(f"{shipped_server.url}/models/mnist", timeout=10).json()
    assert detail["classes"] == [str(d) for d in range(10)] and detail["input"]["shape"] == [28, 28]
    assert detail["preprocessing"]["invert_light_background"] is True
    assert "subset" in detail["data"]["note"] and "not comparable" in detail["data"]["note"]
    assert detail["metrics"]["test"]["samples"] == 1996
    assert detail["calibration"]["served"]["ece"] <= 0.015
    assert detail["metrics"]["test"]["accuracy"] >= 0.975
    assert abs(detail["metrics"]["served_test_accuracy"] - detail["metrics"]["test"]["accuracy"]) <= 0.003
    baseline = detail["metrics"]["baseline"]  # the course's Dense(512) model, trained on the same images
    assert detail["training"]["config"]["course_baseline"] and baseline["test_samples"] == 1996
    assert 0.9 < baseline["test_accuracy"] < detail["metrics"]["test"]["accuracy"]
    v2 = requests.get(f"{shipped_server.url}/v2/models/mnist", timeout=10).json()
    assert v2["outputs"][0]["shape"] == [-1, 10]
    tf = requests.get(f"{shipped_server.url}/v1/models/mnist/metadata", timeout=10).json()
    assert tf["model_spec"]["name"] == "mnist"


def test_served_accuracy_on_every_test_digit_equals_the_recorded_one(shipped_server, mnist):
    files = [png_bytes(pixels) for pixels in mnist.x_test]
    probabilities = predict_probabilities(shipped_server, "mnist", files, "image/png")
    correct = int(np.sum(probabilities.argmax(axis=1) == mnist.y_test))
    assert len(files) == served_record(shipped_server)["samples"] == 1996
    assert correct == served_record(shipped_server)["correct"]


def test_kserve_v2_gives_predicts_answers_on_every_test_digit(shipped_server, mnist):
    client = httpclient.InferenceServerClient(f"127.0.0.1:{shipped_server.port}", network_timeout=60)
    try:
        files = [png_bytes(pixels) for pixels in mnist.x_test]
        expected = predict_probabilities(shipped_server, "mnist", files, "image/png")
        assert_same(v2_probabilities(client, "mnist", bytes_input, files), expected)
        assert_same(v2_probabilities(client, "mnist", pixels_input, mnist.x_test), expected)
    finally:
        client.close()


def written_on_paper(digit: np.ndarray, rng: np.random.Generator, side: int = 112) -> np.ndarray:
    """A digit as if written in dark ink on light, slightly uneven paper and photographed: ink 0-40, paper
    212-238 with a gentle gradient and noise, upscaled."""
    size = digit.shape[0]
    paper = rng.uniform(212, 238) + rng.uniform(-12, 12) * np.linspace(-1, 1, size)[None, :] \
        + rng.uniform(-12, 12) * np.linspace(-1, 1, size)[:, None] + rng.normal(0, 3, (size, size))
    ink = rng.uniform(0, 40)
    strength = digit.astype(np.float64) / 255.0
    image = np.clip(paper * (1 - strength) + ink * strength, 200 * (1 - strength), 250)
    return np.asarray(Image.fromarray(image.astype(np.uint8)).resize((side, side), Image.Resampling.BICUBIC))


def test_digits_written_dark_on_light_paper_are_read_like_the_originals(shipped_server, mnist):
    """200 real test digits, 20 of each class, drawn dark on light paper (half PNG, half JPEG): the service
    inverts them, and the label must be the original digit's on at least 95% of them."""
    rng = np.random.default_rng(0)
    chosen = np.concatenate([rng.choice(np.flatnonzero(mnist.y_test == d), 20, replace=False) for d in range(10)])
    originals, photos = [], []
    for n, index in enumerate(chosen):
        digit = mnist.x_test[index]
        originals.append(png_bytes(digit))
        buffer = io.BytesIO()
        Image.fromarray(written_on_paper(digit, rng)).save(buffer, format="PNG" if n % 2 else "JPEG", quality=90)
        photos.append(buffer.getvalue())
    original = predict_probabilities(shipped_server, "mnist", originals, "image/png").argmax(axis=1)
    photographed = predict_probabilities(shipped_server, "mnist", photos, "application/octet-stream").argmax(axis=1)
    agree = int(np.sum(original == photographed))
    print(f"dark on light: {agree} of 200 read like the original digit")
    assert agree >= 190
