"""Zero-downtime reload: versions published, refused and rolled back while a real server is under load."""

import threading
import time

import requests

from contract.layout import point_current
from tests.conftest import GunicornServer, copy_current_version, png_bytes, publish_copy


def served_version(server, image):
    response = requests.post(server.url + "/predict", files={"image": image}, timeout=10)
    assert response.status_code == 200, response.text
    return response.json()["version"]


def wait_for_version(server, image, version, timeout=20):
    """True once ``version`` answers, and then, after every worker has had time to poll, many times in a row."""
    deadline, streak = time.monotonic() + timeout, 0
    while time.monotonic() < deadline and served_version(server, image) != version:
        time.sleep(0.05)
    time.sleep(1.5)  # three reload intervals: every worker has looked at the pointer
    while time.monotonic() < deadline and streak < 20:
        streak = streak + 1 if served_version(server, image) == version else 0
    return streak >= 20


def test_new_versions_refusals_and_rollbacks_under_load(tmp_path, fashion):
    models_dir = tmp_path / "models"
    version = copy_current_version(models_dir, "fashion_mnist")
    image = png_bytes(fashion.x_test[0])

    server = GunicornServer(models_dir, workers=2).start()
    try:
        results: list[tuple[int, int]] = []
        stop = threading.Event()

        def load():
            # Bounded in count and time: at most 400 requests or 30 s per thread.
            deadline = time.monotonic() + 30
            for _ in range(400):
                if stop.is_set() or time.monotonic() > deadline:
                    break
                try:
                    response = requests.post(server.url + "/predict", files={"image": image}, timeout=10)
                    results.append((response.status_code, response.json().get("version", -1)))
                except requests.RequestException:
                    results.append((0, -1))

        threads = [threading.Thread(target=load) for _ in range(4)]
        for thread in threads:
            thread.start()
        time.sleep(0.5)
        publish_copy(models_dir, "fashion_mnist", version, version + 1)
        assert wait_for_version(server, image, version + 1)
        stop.set()
        for thread in threads:
            thread.join()
        assert len(results) > 20 and all(status == 200 for status, _ in results)
        assert {v for _, v in results} <= {version, version + 1}

        # A tampered version is refused; the good one keeps serving and the refusal is visible.
        publish_copy(models_dir, "fashion_mnist", version, version + 2, damage="tampered")
        time.sleep(2)
        assert wait_for_version(server, image, version + 1, timeout=5)
        assert requests.get(server.url + "/readyz").status_code == 200
        detail = requests.get(server.url + "/models/fashion_mnist").json()
        assert detail["version"] == version + 1 and "does not match its recorded hash" in detail["last_refused"]
        metrics = requests.get(server.url + "/metrics").text
        assert 'classifier_model_reloads_total{model="fashion_mnist",result="refused"}' in metrics

        # Rolling the pointer back is picked up like any other change.
        point_current(models_dir, "fashion_mnist", version)
        assert wait_for_version(server, image, version)
    finally:
        server.stop()
