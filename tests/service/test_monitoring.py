"""Monitoring: the drift arithmetic, what an upload was, and the live metrics of a real server: confidence, input
statistics, drift against the training reference, the retraining job's runs, across workers and restarts."""

from __future__ import annotations

import io
import json
import shutil
import time

import numpy as np
import pytest
import requests
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from contract.metadata import InputSpec
from service.inference.images import DecodeLimits, inspect_image
from service.settings import Settings
from service.observability.metrics import state_families
from contract.reference import Reference, population_stability_index, reference_profile
from service.observability.drift import DriftWindow
from tests.conftest import SHIPPED_MODELS, GunicornServer, png_bytes
from contract.layout import current_version

GRAY = InputSpec((28, 28), "grayscale", True)
LIMITS = DecodeLimits.from_settings(Settings())


# --- pure parts -----------------------------------------------------------------------------------------------

def test_psi_is_zero_for_the_same_distribution_and_large_for_a_shift():
    expected = np.full(10, 0.1)
    assert population_stability_index(expected, expected) == pytest.approx(0.0)
    shifted = np.array([0.0, 0.0, 0.0, 0.0, 0.0, 0.1, 0.1, 0.2, 0.3, 0.3])
    assert population_stability_index(shifted, expected) > 0.25
    assert np.isfinite(population_stability_index(np.zeros(10), expected))


def test_the_reference_profile_bins_its_own_images_evenly(fashion):
    batch = fashion.x_train[:2000].astype(np.float32) / 255
    probabilities = np.random.default_rng(0).dirichlet(np.ones(10), size=len(batch))
    profile = reference_profile(batch, probabilities, 0.5, source="test")
    for name in ("mean_intensity", "contrast"):
        assert profile[name]["edges"] == sorted(profile[name]["edges"])
        assert profile[name]["fractions"] == pytest.approx([0.1] * 10, abs=0.01)
    assert sum(profile["predicted_class"]["fractions"]) == pytest.approx(1.0)
    assert 0 < profile["top1_probability_mean"] < 1


def test_the_drift_window_keeps_counts_of_the_last_images_only():
    reference = Reference({"mean_intensity": np.array([0.5]), "contrast": np.array([0.5])},
                          {"mean_intensity": np.array([0.5, 0.5]), "contrast": np.array([0.5, 0.5]),
                           "predicted_class": np.array([0.5, 0.5])}, 0.9)
    window = DriftWindow(reference, size=10)
    window.add(np.full(30, 0.2), np.full(30, 0.2), np.zeros(30, dtype=int))
    window.add(np.full(10, 0.8), np.full(10, 0.8), np.ones(10, dtype=int))
    assert window.filled == 10
    assert window.counts["mean_intensity"] == [0, 10]
    assert window.counts["predicted_class"] == [0, 10]
    assert window.psi()["predicted_class"] > 1


def _add_from_another_process(path, reference, size, seed):
    window = DriftWindow(reference, size, path)
    rng = np.random.default_rng(seed)
    for _ in range(25):
        window.add(rng.random(8), rng.random(8), rng.integers(0, 2, 8))


def test_windows_on_one_file_are_one_window_whatever_process_adds_to_it(tmp_path):
    """Like the workers: four processes add 200 images each to a window of 500 on the same file at once."""
    import multiprocessing

    reference = Reference({"mean_intensity": np.array([0.5]), "contrast": np.array([0.5])},
                          {"mean_intensity": np.array([0.5, 0.5]), "contrast": np.array([0.5, 0.5]),
                           "predicted_class": np.array([0.5, 0.5])}, 0.9, samples=5000)
    path = tmp_path / "drift-m-1.window"
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_add_from_another_process, args=(path, reference, 500, seed))
               for seed in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
        assert worker.exitcode == 0
    counts, filled = DriftWindow(reference, 500, path).read()
    assert filled == 500
    assert all(sum(values) == 500 for values in counts.values()), counts  # every image in each signal, once
    window = DriftWindow(reference, 500, path)
    window.add(np.full(500, 0.9), np.full(500, 0.9), np.ones(500, dtype=int))  # a whole window of new images
    assert window.read() == ({"mean_intensity": [0, 500], "contrast": [0, 500], "predicted_class": [0, 500]}, 500)


def test_counting_in_memory_then_writing_equals_observing_each_value():
    """write_histogram writes through prometheus-client's internals; this catches a version that moves them."""
    from prometheus_client import CollectorRegistry, Histogram, generate_latest

    from service.observability.model_monitor import write_histogram

    values = [0.0, 0.05, 0.1, 0.1000001, 0.5, 0.99, 1.0, 3.0]
    direct_registry, pending_registry = CollectorRegistry(), CollectorRegistry()
    buckets = (0.1, 0.5, 1.0)
    direct = Histogram("h", "h", ["model"], buckets=buckets, registry=direct_registry).labels("m")
    bulk = Histogram("h", "h", ["model"], buckets=buckets, registry=pending_registry).labels("m")
    for value in values:
        direct.observe(value)
    write_histogram(bulk, np.array(values))
    write_histogram(bulk, np.array([]))

    def values(registry):
        return {s.name + str(sorted(s.labels.items())): s.value
                for f in text_string_to_metric_families(generate_latest(registry).decode()) for s in f.samples
                if not s.name.endswith("_created")}
    bulk_values, direct_values = values(pending_registry), values(direct_registry)
    assert bulk_values == pytest.approx(direct_values, rel=1e-12) and len(bulk_values) == 6


def test_upload_facts_say_what_each_upload_was(fashion):
    _, facts = inspect_image(png_bytes(fashion.x_test[0]), GRAY, LIMITS)
    assert (facts.format, facts.width, facts.height, facts.color, facts.inverted) == ("PNG", 28, 28, False, False)
    photo = np.full((90, 120, 3), 235, dtype=np.uint8)
    photo[20:70, 40:80] = (40, 30, 120)
    buffer = io.BytesIO()
    Image.fromarray(photo).save(buffer, format="JPEG")
    _, facts = inspect_image(buffer.getvalue(), GRAY, LIMITS)
    assert (facts.format, facts.width, facts.height, facts.color, facts.inverted) == ("JPEG", 120, 90, True, True)


def test_retraining_metrics_come_from_the_history():
    history = [
        {"event": "train", "version": 1, "promoted": True, "time": "2026-11-20T00:00:00Z"},
        {"event": "retrain", "outcome": "promoted", "version": 2, "promoted": True, "time": "2026-11-21T00:00:00Z",
         "candidate": {"accuracy": 0.91}, "champion": {"accuracy": 0.90}},
        {"event": "retrain", "outcome": "failed", "version": None, "promoted": False,
         "time": "2026-11-22T00:00:00Z", "reason": "OSError: disk full"},
    ]
    families = {f.name: f for f in state_families(True, {"cifar10": history, "fashion_mnist": []})}
    value = {name: {s.labels.get("outcome", ""): s.value for s in f.samples if s.labels.get("model") == "cifar10"}
             for name, f in families.items()}
    assert value["classifier_retrain_last_run_failed"] == {"": 1.0}
    assert value["classifier_retrain_last_success_timestamp_seconds"] == {"": 1795219200.0}
    assert value["classifier_retrain_last_run_timestamp_seconds"] == {"": 1795305600.0}
    assert value["classifier_retrain_candidate_accuracy"] == {"": 0.91}
    assert value["classifier_retrain_runs"] == {"promoted": 1, "kept": 0, "failed": 1}
    assert not [s for f in families.values() for s in f.samples if s.labels.get("model") == "fashion_mnist"]
    assert families["classifier_ready"].samples[0].value == 1.0


# --- the live service -----------------------------------------------------------------------------------------

def scrape(server) -> dict[str, list]:
    text = requests.get(server.url + "/metrics", timeout=10).text
    return {f.name: f.samples for f in text_string_to_metric_families(text)}


def sample(samples: list, name: str, **labels) -> float | None:
    for s in samples:
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
            return s.value
    return None


def post_fresh(server, image: bytes, model: str = "fashion_mnist") -> dict:
    """On a new connection each time, so requests spread over the workers."""
    with requests.Session() as session:
        response = session.post(f"{server.url}/predict?model={model}", files={"image": ("x.png", image)},
                                timeout=30, headers={"Connection": "close"})
    assert response.status_code == 200, response.text
    return response.json()


@pytest.fixture()
def models_copy(tmp_path):
    models = tmp_path / "models"
    shutil.copytree(SHIPPED_MODELS, models)
    return models


def test_every_image_is_counted_once_across_workers_and_a_restart_starts_clean(models_copy, fashion):
    server = GunicornServer(models_copy, workers=2).start()
    try:
        for pixels in fashion.x_test[:40]:
            post_fresh(server, png_bytes(pixels))
        # Each worker writes what it counted at least every MODEL_RELOAD_SECONDS (0.5 s here).
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            metrics = scrape(server)
            if sample(metrics["classifier_top1_probability"], "classifier_top1_probability_count",
                      model="fashion_mnist") == 40:
                break
            time.sleep(0.2)
        assert sample(metrics["classifier_top1_probability"], "classifier_top1_probability_count",
                      model="fashion_mnist") == 40
        assert sample(metrics["classifier_input_uploads"], "classifier_input_uploads_total",
                      model="fashion_mnist", format="png", color="gray") == 40
        assert sample(metrics["classifier_input_original_size_pixels"],
                      "classifier_input_original_size_pixels_bucket", model="fashion_mnist", le="28.0") == 40
        assert sample(metrics["classifier_input_resize_factor"], "classifier_input_resize_factor_bucket",
                      model="fashion_mnist", le="1.0") == 40
        current = current_version(models_copy, "fashion_mnist")
        reference = json.loads((models_copy / "fashion_mnist" / str(current) / "metadata.json").read_text())
        assert sample(metrics["classifier_reference_top1_probability"], "classifier_reference_top1_probability",
                      model="fashion_mnist") == pytest.approx(
            reference["monitoring_reference"]["top1_probability_mean"])
        assert sample(metrics["classifier_ready"], "classifier_ready") == 1
    finally:
        server.stop()
    server = GunicornServer(models_copy, workers=2).start()
    try:
        metrics = scrape(server)
        assert sample(metrics.get("classifier_top1_probability", []), "classifier_top1_probability_count",
                      model="fashion_mnist") in (None, 0)
    finally:
        server.stop()


def test_drift_stays_low_on_test_images_and_rises_on_darkened_ones(models_copy, fashion):
    """One worker, so one window; 200 images of it."""
    server = GunicornServer(models_copy, workers=1, DRIFT_WINDOW_IMAGES="200").start()
    try:
        with requests.Session() as session:
            def send(images):
                for start in range(0, len(images), 20):  # 20 images a request: the window counts images
                    files = [("image", (f"{i}.png", png_bytes(p))) for i, p in enumerate(images[start:start + 20])]
                    assert session.post(server.url + "/predict", files=files, timeout=30).status_code == 200

            send(fashion.x_test[:200])
            psi = {s.labels["signal"]: s.value for s in scrape(server)["classifier_drift_psi"]
                   if s.labels["model"] == "fashion_mnist"}
            print("test images:", psi)
            assert max(psi.values()) < 0.1, psi
            assert sample(scrape(server)["classifier_drift_window_images"], "classifier_drift_window_images",
                          model="fashion_mnist") == 200

            send((fashion.x_test[200:400] * 0.4).astype(np.uint8))  # a dimmer camera
            psi = {s.labels["signal"]: s.value for s in scrape(server)["classifier_drift_psi"]
                   if s.labels["model"] == "fashion_mnist"}
            print("darkened:", psi)
            assert psi["mean_intensity"] > 0.25 and psi["contrast"] > 0.25, psi
    finally:
        server.stop()


def test_low_confidence_predictions_are_counted_at_the_threshold(models_copy, fashion):
    server = GunicornServer(models_copy, workers=1, LOW_CONFIDENCE_THRESHOLD="0.9").start()
    try:
        top1 = [post_fresh(server, png_bytes(p))["predictions"][0]["top"][0]["probability"]
                for p in fashion.x_test[:30]]
        counted = sample(scrape(server)["classifier_low_confidence_predictions"],
                         "classifier_low_confidence_predictions_total", model="fashion_mnist")
        assert counted == sum(p < 0.9 for p in top1) > 0
    finally:
        server.stop()


def test_retraining_runs_in_the_history_are_exposed(models_copy):
    from contract.layout import append_history

    append_history(models_copy, "cifar10", {"event": "retrain", "outcome": "kept", "version": 3, "promoted": False,
                                            "candidate": {"accuracy": 0.60}, "champion": {"accuracy": 0.61}})
    append_history(models_copy, "cifar10", {"event": "retrain", "outcome": "failed", "version": None,
                                            "promoted": False, "reason": "RuntimeError: out of memory"})
    server = GunicornServer(models_copy, workers=1).start()
    try:
        metrics = scrape(server)
        assert sample(metrics["classifier_retrain_last_run_failed"], "classifier_retrain_last_run_failed",
                      model="cifar10") == 1
        assert sample(metrics["classifier_retrain_champion_accuracy"], "classifier_retrain_champion_accuracy",
                      model="cifar10") == 0.61
        assert sample(metrics["classifier_retrain_runs"], "classifier_retrain_runs", model="cifar10",
                      outcome="failed") == 1
    finally:
        server.stop()


def test_monitoring_can_be_switched_off(models_copy, fashion):
    server = GunicornServer(models_copy, workers=1, INPUT_MONITORING="off").start()
    try:
        post_fresh(server, png_bytes(fashion.x_test[0]))
        metrics = scrape(server)
        assert sample(metrics.get("classifier_top1_probability", []), "classifier_top1_probability_count",
                      model="fashion_mnist") in (None, 0)
        assert sample(metrics["classifier_predictions"], "classifier_predictions_total", model="fashion_mnist",
                      label="Ankle boot") == 1
    finally:
        server.stop()


def drift_after(server, images: list[bytes], keep_alive: bool) -> tuple[float, dict[str, float]]:
    """Send the images one per request, all on one kept-alive connection (one worker takes them all) or each on a
    new connection (the workers share them), then read the window and PSI from /metrics."""
    if keep_alive:
        with requests.Session() as session:
            for image in images:
                assert session.post(server.url + "/predict", files={"image": ("x.png", image)},
                                    timeout=30).status_code == 200
    else:
        for image in images:
            post_fresh(server, image)
    time.sleep(1.5)  # every worker has added what it classified (MODEL_RELOAD_SECONDS is 0.5 here)
    metrics = scrape(server)
    window = sample(metrics["classifier_drift_window_images"], "classifier_drift_window_images",
                    model="fashion_mnist")
    return window, {s.labels["signal"]: s.value for s in metrics["classifier_drift_psi"]
                    if s.labels["model"] == "fashion_mnist"}


def test_the_drift_window_is_the_services_not_a_workers_however_connections_fall(models_copy, fashion):
    """The same 600 images, once all on one worker, once spread over both: the same window and the same PSI."""
    images = [png_bytes(p) for p in fashion.x_test[:600]]
    results = []
    for keep_alive in (True, False):
        server = GunicornServer(models_copy, workers=2).start()
        try:
            results.append(drift_after(server, images, keep_alive))
        finally:
            server.stop()
    (window_one, psi_one), (window_spread, psi_spread) = results
    print("one worker:", window_one, psi_one, "both:", window_spread, psi_spread)
    assert window_one == window_spread == 600
    assert psi_one == pytest.approx(psi_spread, abs=1e-9)  # the same images, counted once each, in one window
    assert max(psi_one.values()) < 0.1
