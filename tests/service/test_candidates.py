"""A candidate version on trial beside the current one, on the real server: loaded and verified like any
version, shadowed on live traffic with its figures correct across workers, answering a sticky canary share when
asked to, refused when broken, and ended under load without a failed request."""

from __future__ import annotations

import base64
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient
from prometheus_client.parser import text_string_to_metric_families

from contract.layout import point_candidate, point_current, read_history
from service.inference.registry import load_version
from service.inference.trial import in_canary
from tests.conftest import ROOT, SHIPPED_MODELS, GunicornServer, png_bytes, publish_copy
from tests.service.test_grpc import bytes_input, start_with_grpc

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

        # Each worker counts its shadowed images in batches, at least every reload interval.
        assert wait_for(lambda: detail(server)["candidate"]["shadow"]["images"] == 300)
        figures = detail(server)["candidate"]
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


def test_a_broken_candidate_is_refused_and_a_trial_under_load_fails_no_request(models_dir, fashion):
    """Loaded, shadowed, canaried, rejected, loaded again and promoted, under load from four clients: every answer
    is a 200 from a version that was serving at the time."""
    publish_copy(models_dir, "fashion_mnist", CANDIDATE, 7, damage="tampered", promote=False)
    point_candidate(models_dir, "fashion_mnist", 7)
    server = GunicornServer(models_dir, workers=2, CANARY_PERCENT="50").start()
    try:
        body = detail(server)
        assert body["candidate"] is None and "does not match its recorded hash" in body["candidate_refused"]
        assert body["version"] == SERVED

        results, stop, phase = [], threading.Event(), ["refused"]
        images = [png_bytes(pixels) for pixels in fashion.x_test[:16]]  # about half of them canaried

        def load(offset):
            deadline = time.monotonic() + 60
            session = requests.Session()
            while not stop.is_set() and time.monotonic() < deadline:
                offset += 1
                response = session.post(server.url + "/predict", files={"image": images[offset % 16]}, timeout=10)
                results.append((phase[0], response.status_code, response.json().get("version")))

        threads = [threading.Thread(target=load, args=(n * 4,)) for n in range(4)]
        for thread in threads:
            thread.start()

        def settle(condition, name):
            """Once every worker is there, label the answers that follow ``name`` (until then, "moving")."""
            assert wait_for(condition)
            time.sleep(1)  # two reload intervals: every worker is there
            phase[0] = name
            time.sleep(1.5)

        assert wait_for(lambda: len(results) >= 20)  # answers with the broken candidate refused
        phase[0] = "moving"
        point_candidate(models_dir, "fashion_mnist", CANDIDATE)  # a good one: on trial
        settle(lambda: (detail(server)["candidate"] or {}).get("version") == CANDIDATE, "trial")
        phase[0] = "moving"
        point_candidate(models_dir, "fashion_mnist", None)  # rejected
        settle(lambda: detail(server)["candidate"] is None, "rejected")
        phase[0] = "moving"
        point_candidate(models_dir, "fashion_mnist", CANDIDATE)  # on trial again, then promoted (as end_trial does)
        settle(lambda: (detail(server)["candidate"] or {}).get("version") == CANDIDATE, "trial again")
        phase[0] = "moving"
        point_current(models_dir, "fashion_mnist", CANDIDATE)
        point_candidate(models_dir, "fashion_mnist", None)
        settle(lambda: detail(server)["version"] == CANDIDATE and detail(server)["candidate"] is None, "promoted")
        stop.set()
        for thread in threads:
            thread.join(60)

        assert {status for _, status, _ in results} == {200}
        versions = {}
        for name, _, version in results:
            versions.setdefault(name, set()).add(version)
        assert versions["refused"] == versions["rejected"] == {SERVED}
        assert versions["trial"] == versions["trial again"] == {SERVED, CANDIDATE}  # the canary answers its share
        assert versions["promoted"] == {CANDIDATE}
        assert len(results) > 200
    finally:
        server.stop()


def metric_values(server, name: str) -> list:
    text = requests.get(server.url + "/metrics", timeout=30).text
    return [sample for family in text_string_to_metric_families(text) for sample in family.samples
            if sample.name == name]


def test_a_canary_answers_its_share_of_inputs_sticky_by_prediction_id_and_says_so_in_every_protocol(
        models_dir, fashion):
    point_candidate(models_dir, "fashion_mnist", CANDIDATE)
    server = start_with_grpc(models_dir, workers=2, CANARY_PERCENT="20")
    try:
        assert wait_for(lambda: (detail(server)["candidate"] or {}).get("version") == CANDIDATE)
        time.sleep(1.5)  # every worker and gRPC process has loaded it
        images = [png_bytes(pixels) for pixels in fashion.x_test[:2000]]
        session = requests.Session()

        def native(image: bytes) -> tuple[str, int, list]:
            body = session.post(server.url + "/predict", files={"image": image}, timeout=30).json()
            prediction = body["predictions"][0]
            return prediction["id"], body["version"], prediction["probabilities"]

        with ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(native, images))
        ids = [answer[0] for answer in answers]
        distinct = len(set(ids))
        by_candidate = sum(version == CANDIDATE for _, version, _ in answers)
        assert {version for _, version, _ in answers} == {SERVED, CANDIDATE}
        share = by_candidate / len(answers)
        assert 0.17 <= share <= 0.23, share  # 2,000 requests: within 3 points of CANARY_PERCENT
        # Which version answered is a function of the input: the pure rule the server follows, and the same
        # again on retry, on any worker (new connections) and in every protocol.
        assert all((version == CANDIDATE) == in_canary(id_, 20) for id_, version, _ in answers)
        assert distinct > 1900
        retried = list(range(0, 2000, 10))
        for index in retried:
            assert native(images[index])[:2] == answers[index][:2]
            v2 = requests.post(server.url + "/v2/models/fashion_mnist/infer", timeout=30, json={"inputs": [
                {"name": "image", "shape": [1], "datatype": "BYTES", "data": [base64.b64encode(images[index]).decode()]}]})
            assert v2.status_code == 200, v2.text
            assert v2.json()["model_version"] == str(answers[index][1])
        grpc_client = grpcclient.InferenceServerClient(server.grpc_target)
        pixels = fashion.x_test[:2000].astype(np.float32) / np.float32(255.0)
        for index in retried[:50]:
            result = grpc_client.infer("fashion_mnist", [bytes_input([images[index]])])
            assert result.get_response().model_version == str(answers[index][1])
            tf = requests.post(server.url + "/v1/models/fashion_mnist:predict", timeout=30,
                               json={"instances": [pixels[index].tolist()]})
            assert tf.headers["X-Model-Version"] == str(answers[index][1])
            assert tf.headers["X-Prediction-Ids"] == ids[index]

        # The canary's answers are the candidate's own probabilities.
        trial = load_version(models_dir, "fashion_mnist", CANDIDATE, "auto").runtime.run(pixels)[0]
        served = load_version(models_dir, "fashion_mnist", SERVED, "auto").runtime.run(pixels)[0]
        for index, (_, version, probabilities) in enumerate(answers[:300]):
            expected = trial if version == CANDIDATE else served
            np.testing.assert_allclose(probabilities, expected[index], atol=1e-5)

        # A request that names its version is never moved to the canary.
        for index in retried[:40]:
            pinned = requests.post(server.url + f"/v2/models/fashion_mnist/versions/{SERVED}/infer", timeout=30,
                                   json={"inputs": [{"name": "pixels", "shape": [1, 28, 28], "datatype": "FP32",
                                                     "data": pixels[index].ravel().tolist()}]})
            assert pinned.json()["model_version"] == str(SERVED)

        # Counted: the canary's images, and both versions compared on every request whichever answered.
        canary = sum(s.value for s in metric_values(server, "classifier_canary_images_total"))
        assert canary >= by_candidate
        figures = detail(server)["candidate"]
        assert figures["canary_percent"] == 20
        assert figures["shadow"]["images"] >= len(answers) + len(retried)  # SHADOW_FRACTION=1: every request
        assert 0.5 < figures["shadow"]["agreement"] < 1
        psi = {s.labels["signal"]: s.value for s in metric_values(server, "classifier_candidate_drift_psi")
               if s.labels["candidate"] == str(CANDIDATE)}
        assert set(psi) == {"mean_intensity", "contrast", "predicted_class"} and all(v >= 0 for v in psi.values())
        assert figures["shadow"]["drift_psi"].keys() == psi.keys()
    finally:
        server.stop()


FEEDBACK_TOKEN = "trial-feedback-token-0123456789"


def shadow_traffic(server, images) -> None:
    for start in range(0, len(images), 25):
        response = requests.post(server.url + "/predict", timeout=30, files=[
            ("image", (f"{i}.png", png_bytes(p), "image/png")) for i, p in enumerate(images[start:start + 25])])
        assert response.status_code == 200


def test_a_trial_is_decided_on_live_evidence_by_hand_and_by_the_schedule(models_dir, fashion, monkeypatch):
    from training.schedule import RetrainScheduler
    from training.settings import TrainingSettings

    point_candidate(models_dir, "fashion_mnist", CANDIDATE)
    server = GunicornServer(models_dir, workers=2, FEEDBACK_TOKEN=FEEDBACK_TOKEN,
                            FEEDBACK_DIR=str(models_dir / ".feedback")).start()
    decide = [sys.executable, "-m", "training", "--models-dir", str(models_dir), "decide", "fashion_mnist",
              "--url", server.url, "--min-images", "300"]
    try:
        assert wait_for(lambda: (detail(server)["candidate"] or {}).get("version") == CANDIDATE)
        shadow_traffic(server, fashion.x_test[:400])
        assert wait_for(lambda: detail(server)["candidate"]["shadow"]["images"] == 400)
        # Labels arrive during the soak for images the current version gets right and the candidate wrong.
        pixels = fashion.x_test[:2000].astype(np.float32) / np.float32(255.0)
        served = load_version(models_dir, "fashion_mnist", SERVED, "auto").runtime.run(pixels)[0].argmax(1)
        trial = load_version(models_dir, "fashion_mnist", CANDIDATE, "auto").runtime.run(pixels)[0].argmax(1)
        favouring_champion = np.flatnonzero((served == fashion.y_test[:2000]) & (trial != fashion.y_test[:2000]))
        assert len(favouring_champion) >= 10
        for index in favouring_champion[:10]:
            answer = requests.post(server.url + "/feedback", timeout=30,
                                   headers={"Authorization": f"Bearer {FEEDBACK_TOKEN}"},
                                   files={"image": ("x.png", png_bytes(fashion.x_test[index]), "image/png")},
                                   data={"label": str(int(fashion.y_test[index]))})
            assert answer.status_code == 201, answer.text

        rejected = subprocess.run(decide, cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert rejected.returncode == 3, rejected.stderr
        record = read_history(models_dir, "fashion_mnist")[-1]
        assert (record["event"], record["outcome"], record["version"]) == ("trial", "rejected", CANDIDATE)
        assert record["reason"].startswith("rejected on live evidence: soak feedback: candidate right on ")
        feedback = record["evidence"]["feedback"]  # judged by the Keras models, near-ties may fall either way
        assert feedback["samples"] == 10 and feedback["candidate_correct"] < feedback["champion_correct"]
        assert record["evidence"]["shadow"]["images"] == 400
        assert wait_for(lambda: detail(server)["candidate"] is None)

        # The next candidate, and no feedback during its soak: the schedule decides it when the soak is over.
        publish_copy(models_dir, "fashion_mnist", CANDIDATE, 7, promote=False)
        point_candidate(models_dir, "fashion_mnist", 7)
        assert wait_for(lambda: (detail(server)["candidate"] or {}).get("version") == 7)
        time.sleep(1)  # every worker has it
        shadow_traffic(server, fashion.x_test[400:800])
        assert wait_for(lambda: detail(server)["candidate"]["shadow"]["images"] == 400)
        for name, value in {"TRIAL_SERVICE_URLS": server.url, "TRIAL_MIN_IMAGES": "300",
                            "FEEDBACK_DIR": str(models_dir / ".feedback")}.items():
            monkeypatch.setenv(name, value)
        scheduler = RetrainScheduler(TrainingSettings.from_env(models_dir=models_dir, trial_soak_seconds=0,
                                                               retrain_datasets=("fashion_mnist",)))
        assert scheduler.decide_due() == {"fashion_mnist": 0}
        record = read_history(models_dir, "fashion_mnist")[-1]
        assert (record["event"], record["outcome"], record["version"], record["previous"]) == \
            ("trial", "promoted", 7, SERVED)
        assert record["reason"].startswith("promoted on live evidence: 400 images shadowed (at least 300)")
        assert record["evidence"]["feedback"]["samples"] == 0
        assert record["evidence"]["shadow"]["sources"] == [server.url]
        assert wait_for(lambda: detail(server)["version"] == 7 and detail(server)["candidate"] is None)
        card = requests.get(server.url + "/models/fashion_mnist/files/MODEL_CARD.md", timeout=30)
        assert card.headers["Content-Type"].startswith("text/markdown")
        assert "## Live trial" in card.text and "promoted on live evidence" in card.text
        assert "400 images; top-1 agreement" in card.text
        events = requests.get(server.url + "/models/fashion_mnist/history", timeout=30).json()["events"]
        assert [e["outcome"] for e in events[:2]] == ["promoted", "rejected"]
    finally:
        server.stop()
