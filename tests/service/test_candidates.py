"""A candidate version on trial beside the current one, on the real server: loaded and verified like any
version, shadowed on live traffic with its figures correct across workers, refused when broken, and ended
under load without a failed request."""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from contract.layout import point_candidate, point_current, read_history
from service.inference.registry import load_version
from tests.conftest import ROOT, SHIPPED_MODELS, GunicornServer, png_bytes, publish_copy

SERVED, CANDIDATE = 5, 6  # two real fashion_mnist versions, both shipped


@pytest.fixture()
def models_dir(tmp_path):
    folder = tmp_path / "models"
    shutil.copytree(SHIPPED_MODELS / "fashion_mnist", folder / "fashion_mnist")
    point_current(folder, "fashion_mnist", SERVED)
    return folder


def detail(server) -> dict:
    return requests.get(server.url + "/models/fashion_mnist", timeout=30).json()


def wait_for(condition, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return False


def test_a_candidate_is_shadowed_on_live_traffic_and_its_figures_add_up_across_workers(models_dir, fashion):
    point_candidate(models_dir, "fashion_mnist", CANDIDATE)
    server = GunicornServer(models_dir, workers=2).start()
    try:
        assert wait_for(lambda: (detail(server)["candidate"] or {}).get("version") == CANDIDATE)
        images = fashion.x_test[:300]
        for start in range(0, len(images), 30):  # new connections: both workers shadow some
            chunk = images[start:start + 30]
            answer = requests.post(server.url + "/predict?model=fashion_mnist", timeout=30, files=[
                ("image", (f"{i}.png", png_bytes(p), "image/png")) for i, p in enumerate(chunk)]).json()
            assert answer["version"] == SERVED  # the candidate never answers

        # The same inputs through both versions, outside the server.
        pixels = images.astype(np.float32) / np.float32(255.0)
        served = load_version(models_dir, "fashion_mnist", SERVED, "auto").runtime.run(pixels)[0]
        trial = load_version(models_dir, "fashion_mnist", CANDIDATE, "auto").runtime.run(pixels)[0]
        agreement = float((served.argmax(1) == trial.argmax(1)).mean())
        assert 0.5 < agreement < 1  # two different versions, mostly agreeing: the figure can tell them apart

        figures = detail(server)["candidate"]
        assert figures["shadow"]["images"] == 300
        assert figures["shadow"]["agreement"] == pytest.approx(agreement, abs=1e-9)
        assert figures["shadow"]["mean_top1"]["served"] == pytest.approx(float(served.max(1).mean()), abs=1e-5)
        assert figures["shadow"]["mean_top1"]["candidate"] == pytest.approx(float(trial.max(1).mean()), abs=1e-5)
        pairs = {}
        for family in text_string_to_metric_families(requests.get(server.url + "/metrics", timeout=30).text):
            for sample in family.samples:
                if sample.name == "classifier_shadow_labels_total" and sample.value:
                    pairs[(sample.labels["served_label"], sample.labels["candidate_label"])] = sample.value
        assert sum(pairs.values()) == 300
        classes = detail(server)["classes"]
        expected = {}
        for a, b in zip(served.argmax(1), trial.argmax(1)):
            expected[(classes[a], classes[b])] = expected.get((classes[a], classes[b]), 0) + 1
        assert pairs == expected

        # Promoted by hand on this evidence: the live figures go to the history, the service moves to it.
        subprocess.run([sys.executable, "-m", "training", "--models-dir", str(models_dir), "trial", "fashion_mnist",
                        "promote", "--url", server.url], cwd=ROOT, check=True, capture_output=True, timeout=120)
        record = read_history(models_dir, "fashion_mnist")[-1]
        assert (record["event"], record["outcome"], record["version"]) == ("trial", "promoted", CANDIDATE)
        assert record["evidence"]["shadow"]["images"] == 300 and record["evidence"]["version"] == CANDIDATE
        assert wait_for(lambda: detail(server)["version"] == CANDIDATE and detail(server)["candidate"] is None)
    finally:
        server.stop()


def test_a_broken_candidate_is_refused_and_ending_a_trial_under_load_fails_no_request(models_dir, fashion):
    publish_copy(models_dir, "fashion_mnist", CANDIDATE, 7, damage="tampered", promote=False)
    point_candidate(models_dir, "fashion_mnist", 7)
    server = GunicornServer(models_dir, workers=2).start()
    try:
        body = detail(server)
        assert body["candidate"] is None and "does not match its recorded hash" in body["candidate_refused"]
        assert body["version"] == SERVED

        results, stop = [], threading.Event()
        image = png_bytes(fashion.x_test[0])

        def load():
            deadline = time.monotonic() + 30
            while not stop.is_set() and time.monotonic() < deadline:
                response = requests.post(server.url + "/predict", files={"image": image}, timeout=10)
                results.append((response.status_code, response.json().get("version")))

        threads = [threading.Thread(target=load) for _ in range(4)]
        for thread in threads:
            thread.start()
        point_candidate(models_dir, "fashion_mnist", CANDIDATE)  # a good one: on trial
        assert wait_for(lambda: (detail(server)["candidate"] or {}).get("version") == CANDIDATE)
        time.sleep(1)  # two reload intervals: every worker has it
        assert wait_for(lambda: (detail(server)["candidate"] or {"shadow": {"images": 0}})["shadow"]["images"] > 20)
        point_candidate(models_dir, "fashion_mnist", None)  # and the trial ends
        assert wait_for(lambda: detail(server)["candidate"] is None)
        time.sleep(1)  # every worker has looked again
        stop.set()
        for thread in threads:
            thread.join(60)
        assert len(results) > 50 and set(results) == {(200, SERVED)}
    finally:
        server.stop()
