"""``/feedback`` on the real server (gunicorn, 2 workers) with real Fashion-MNIST images: ids across the
protocols, the token, validation, injection, the flood limit, retention, stats and metrics, concurrent writers."""

import base64
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import SHIPPED_MODELS, GunicornServer, free_port, png_bytes

TOKEN = "feedback-test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def feedback_server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("feedback")
    server = GunicornServer(SHIPPED_MODELS, FEEDBACK_TOKEN=TOKEN, FEEDBACK_DIR=str(folder),
                            RETAIN_PREDICTIONS="1").start()
    server.folder = folder
    yield server
    server.stop()


def send(server, image=None, label=None, headers=AUTH, **fields):
    files = {"image": ("x.png", image, "image/png")} if image is not None else None
    data = {**({"label": label} if label is not None else {}), **fields}
    return requests.post(server.url + "/feedback", files=files, data=data if files else None,
                         json=None if files else data, headers=headers, timeout=30)


def predict_id(server, image, model="fashion_mnist"):
    response = requests.post(server.url + "/predict", params={"model": model},
                             files={"image": ("x.png", image, "image/png")}, timeout=30)
    assert response.status_code == 200
    return response.json()["predictions"][0]["id"]


def test_every_protocol_gives_the_same_id_and_feedback_answers_with_it(feedback_server, fashion):
    images = [png_bytes(fashion.x_test[i]) for i in range(3)]
    files = [("image", (f"{i}.png", data, "image/png")) for i, data in enumerate(images)]
    native = requests.post(feedback_server.url + "/predict", files=files, timeout=30).json()
    native_ids = [p["id"] for p in native["predictions"]]
    assert len(set(native_ids)) == 3 and all(len(i) == 64 for i in native_ids)

    encoded = [base64.b64encode(data).decode() for data in images]
    v2 = requests.post(feedback_server.url + "/v2/models/fashion_mnist/infer", timeout=30, json={
        "inputs": [{"name": "image", "datatype": "BYTES", "shape": [3], "data": encoded}]}).json()
    assert v2["parameters"]["prediction_ids"].split(",") == native_ids

    tf = requests.post(feedback_server.url + "/v1/models/fashion_mnist:predict", timeout=30,
                       json={"instances": [{"b64": item} for item in encoded]})
    assert tf.headers["X-Prediction-Ids"].split(",") == native_ids

    # The same picture as JPEG is another input, so another id; as the same PNG it is the same one.
    answer = send(feedback_server, images[0], label=str(int(fashion.y_test[0])))
    assert answer.status_code in (200, 201) and answer.json()["id"] == native_ids[0]


def test_feedback_needs_the_bearer_token(feedback_server, fashion):
    image = png_bytes(fashion.x_test[10])
    missing = send(feedback_server, image, "Coat", headers={})
    assert missing.status_code == 401 and missing.json()["error"]["code"] == "unauthorized"
    wrong = send(feedback_server, image, "Coat", headers={"Authorization": "Bearer " + TOKEN[:-1] + "x"})
    assert wrong.status_code == 403 and wrong.json()["error"]["code"] == "forbidden"
    basic = send(feedback_server, image, "Coat", headers={"Authorization": "Basic " + TOKEN})
    assert basic.status_code == 401
    assert requests.delete(f"{feedback_server.url}/feedback/fashion_mnist/{'0' * 64}", timeout=10).status_code == 401


def test_feedback_is_off_without_a_token(shipped_server, fashion):
    response = send(shipped_server, png_bytes(fashion.x_test[0]), "Ankle boot")
    assert response.status_code == 403 and response.json()["error"]["code"] == "feedback_disabled"
    assert "FEEDBACK_TOKEN" in response.json()["error"]["message"]
    assert requests.get(shipped_server.url + "/feedback/stats", timeout=10).json() == {"enabled": False,
                                                                                    "models": []}


def test_the_same_image_and_label_are_stored_once_and_labels_take_names_or_indexes(feedback_server, fashion):
    image = png_bytes(fashion.x_test[20])
    first = send(feedback_server, image, "sneaker")  # case-insensitive name
    assert first.status_code == 201, first.text
    body = first.json()
    assert body["stored"] is True and body["label"] == "Sneaker" and body["index"] == 7
    assert body["model"] == "fashion_mnist" and isinstance(body["model_version"], int) and body["predicted_label"]
    again = send(feedback_server, image, "7")
    assert again.status_code == 200 and again.json()["stored"] is False and again.json()["id"] == body["id"]
    other = send(feedback_server, image, "Sandal")
    assert other.status_code == 201 and other.json()["stored"] is True


@pytest.mark.parametrize("label", ["Boot", "10", "-1", "'; DROP TABLE feedback; --", "Coat\x00", "x" * 500])
def test_an_unknown_label_is_422_and_injection_stays_data(feedback_server, fashion, label):
    response = send(feedback_server, png_bytes(fashion.x_test[30]), label)
    assert response.status_code == 422 and response.json()["error"]["code"] == "unknown_label"
    assert "Ankle boot" in response.json()["error"]["message"]
    stats = requests.get(feedback_server.url + "/feedback/stats", timeout=10)
    assert stats.status_code == 200 and stats.json()["enabled"] is True  # the table is still there


def test_bad_uploads_get_the_same_errors_as_predict(feedback_server, fashion):
    image = png_bytes(fashion.x_test[40])
    bad = send(feedback_server, b"not an image at all", "Coat")
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_image"
    assert send(feedback_server, image).status_code == 400  # no label
    assert send(feedback_server, image, "Coat", model="no_such_model").status_code == 404
    oversized = requests.post(feedback_server.url + "/feedback", data=b"\x89PNG" + b"0" * (11 << 20),
                              headers={**AUTH, "Content-Type": "image/png"}, params={"label": "Coat"}, timeout=30)
    assert oversized.status_code == 413
    both = send(feedback_server, image, "Coat", id="0" * 64)
    assert both.status_code == 400 and "not both" in both.json()["error"]["message"]
    two = requests.post(feedback_server.url + "/feedback", headers=AUTH, data={"label": "Coat"}, timeout=30,
                        files=[("image", ("a.png", image, "image/png")), ("image", ("b.png", image, "image/png"))])
    assert two.status_code == 400


@pytest.mark.parametrize("image_id", ["0" * 64, "../../../etc/passwd", "ab/../../feedback.db", "A" * 64, ""])
def test_an_unknown_or_forged_id_is_404_or_400(feedback_server, image_id):
    response = send(feedback_server, None, "Coat", id=image_id)
    assert response.status_code == (400 if image_id == "" else 404)
    assert (feedback_server.folder / "feedback.db").exists()


def test_path_injection_in_delete_touches_nothing(feedback_server):
    for image_id in ("..%2F..%2Ffeedback.db", "0" * 63 + "/", "0" * 64):
        response = requests.delete(f"{feedback_server.url}/feedback/fashion_mnist/{image_id}", headers=AUTH,
                                   timeout=10)
        assert response.status_code == 404
    assert (feedback_server.folder / "feedback.db").exists()


def test_feedback_by_the_id_of_a_retained_prediction_then_deleted(feedback_server, fashion):
    image = png_bytes(fashion.x_test[50])
    image_id = predict_id(feedback_server, image)
    response = send(feedback_server, None, "Ankle boot", id=image_id)
    assert response.status_code == 201, response.text
    assert response.json()["id"] == image_id
    stored = list(feedback_server.folder.glob(f"images/{image_id[:2]}/{image_id}.png"))
    assert stored, "the picture is kept, content-addressed"
    deleted = requests.delete(f"{feedback_server.url}/feedback/fashion_mnist/{image_id}", headers=AUTH, timeout=10)
    assert deleted.status_code == 200 and deleted.json()["deleted"] == 1
    assert requests.delete(f"{feedback_server.url}/feedback/fashion_mnist/{image_id}", headers=AUTH,
                           timeout=10).status_code == 404


def test_stats_and_metrics_show_production_accuracy(feedback_server, fashion):
    images = [png_bytes(fashion.x_test[i]) for i in range(100, 140)]
    truths = [fashion.spec.classes[int(fashion.y_test[i])] for i in range(100, 140)]
    answers = [send(feedback_server, image, label).json() for image, label in zip(images, truths)]
    assert all(a["label"] == t for a, t in zip(answers, truths))
    stats = requests.get(feedback_server.url + "/feedback/stats", params={"model": "fashion_mnist"},
                         timeout=10).json()
    (model,) = stats["models"]
    stored = requests.get(feedback_server.url + "/feedback/stats", timeout=10).json()
    assert {m["model"] for m in stored["models"]} == {"fashion_mnist", "cifar10", "mnist"}
    assert model["items"] >= 40 and sum(v["items"] for v in model["per_label"].values()) == model["items"]
    assert 0.5 < model["agreement"] <= 1
    families = {f.name: f for f in text_string_to_metric_families(
        requests.get(feedback_server.url + "/metrics", timeout=10).text)}
    items = {s.labels["label"]: s.value for s in families["classifier_feedback_items"].samples
             if s.labels["model"] == "fashion_mnist"}
    assert items == {label: v["items"] for label, v in model["per_label"].items()}
    (agreement,) = [s.value for s in families["classifier_feedback_agreement_ratio"].samples
                    if s.labels["model"] == "fashion_mnist"]
    assert agreement == pytest.approx(model["agreement"])


def test_two_workers_writing_at_once_lose_nothing(feedback_server, cifar_folder):
    paths = sorted((cifar_folder / "test" / "cat").glob("*.jpg"))[:60]

    def post(path):
        response = requests.post(feedback_server.url + "/feedback", headers=AUTH, timeout=60,
                                 data={"label": "cat", "model": "cifar10"},
                                 files={"image": (path.name, path.read_bytes(), "image/jpeg")})
        return response.status_code, response.json()["id"]

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(post, paths))
    assert {status for status, _ in results} <= {200, 201}
    distinct = {image_id for _, image_id in results}
    stats = requests.get(feedback_server.url + "/feedback/stats", params={"model": "cifar10"}, timeout=10).json()
    assert stats["models"][0]["per_label"]["cat"]["items"] == len(distinct)


def test_a_flood_is_cut_off_with_429_and_the_store_has_a_cap(tmp_path, fashion):
    server = GunicornServer(SHIPPED_MODELS, workers=1, FEEDBACK_TOKEN=TOKEN, FEEDBACK_DIR=str(tmp_path),
                            FEEDBACK_RATE_PER_MINUTE="10", FEEDBACK_MAX_ITEMS="4").start()
    try:
        statuses = []
        for i in range(16):  # bounded: 16 requests at most
            response = send(server, png_bytes(fashion.x_test[200 + i]), "Coat")
            statuses.append(response.status_code)
            if response.status_code == 429:
                assert int(response.headers["Retry-After"]) >= 1
                assert response.json()["error"]["code"] == "rate_limited"
        # A bucket of 10 refilled at one per 6 s: 4 stored, then full, then cut off.
        assert statuses[:4] == [201] * 4 and set(statuses[4:10]) == {507}
        assert 429 in statuses[10:] and set(statuses[10:]) <= {429, 507}
    finally:
        server.stop()


def test_a_database_that_is_down_costs_feedback_not_predictions(fashion, tmp_path):
    closed = f"postgresql://feedback@127.0.0.1:{free_port()}/feedback"  # nothing listens there
    server = GunicornServer(SHIPPED_MODELS, workers=1, FEEDBACK_TOKEN=TOKEN, DATABASE_URL=closed,
                            FEEDBACK_DIR=str(tmp_path), RETAIN_PREDICTIONS="1").start()
    try:
        image = png_bytes(fashion.x_test[0])
        assert predict_id(server, image)  # retention fails quietly; the answer does not
        response = send(server, image, "Ankle boot")
        assert response.status_code == 503 and response.json()["error"]["code"] == "feedback_unavailable"
        stats = requests.get(server.url + "/feedback/stats", timeout=30)
        assert stats.status_code == 503
        scrape = requests.get(server.url + "/metrics", timeout=30)
        assert scrape.status_code == 200 and "classifier_http_requests_total" in scrape.text
    finally:
        log = server.stop()
    assert "feedback database" in log


def test_without_feedback_a_worker_never_imports_the_database_layer(tmp_path):
    """SQLAlchemy is about 20 MB of every worker's memory; with feedback off (no FEEDBACK_TOKEN) it is not loaded,
    and with it on it is."""
    script = ("import sys; from service.app import create_app; create_app(watch=False); "
              "print('sqlalchemy' in sys.modules)")
    root = Path(__file__).resolve().parents[2]
    base = {k: v for k, v in os.environ.items() if k not in ("FEEDBACK_TOKEN", "DATABASE_URL")}
    off = subprocess.run([sys.executable, "-c", script], cwd=root, env=base, capture_output=True, text=True,
                         timeout=120)
    on = subprocess.run([sys.executable, "-c", script], cwd=root, capture_output=True, text=True, timeout=120,
                        env={**base, "FEEDBACK_TOKEN": "t" * 32, "FEEDBACK_DIR": str(tmp_path)})
    assert (off.returncode, on.returncode) == (0, 0), off.stderr + on.stderr
    assert (off.stdout.strip(), on.stdout.strip()) == ("False", "True")
