"""API keys against the real server: every protocol refuses a missing key (401), a wrong one or a model outside
its scope (403) and a quota overrun (429 with Retry-After) in its own error shape; quotas hold across workers and,
in PostgreSQL, across replicas; a revoked key stops within 2 s while other keys see no failure."""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import requests
import tritonclient.http as httpclient
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.utils import InferenceServerException

from tests.conftest import (
    API_KEYS_SECRET,
    ROOT,
    SHIPPED_MODELS,
    GunicornServer,
    free_port,
    png_bytes,
    write_api_keys,
)


@pytest.fixture(scope="module")
def keyed(tmp_path_factory):
    """Two workers reading one keys file; the keys by name."""
    folder = tmp_path_factory.mktemp("keys")
    keys = write_api_keys(
        folder / "keys.json", full={}, narrow={"models": ("cifar10",)}, slow={"requests_per_second": 0.001, "burst": 1},
        few={"images_per_minute": 40}, doomed={}, bystander={})
    metrics_dir = Path(tempfile.mkdtemp(prefix="keyed-metrics-"))
    server = GunicornServer(SHIPPED_MODELS, workers=2, API_KEYS_FILE=str(folder / "keys.json"),
                            API_KEYS_SECRET=API_KEYS_SECRET, PROMETHEUS_MULTIPROC_DIR=str(metrics_dir)).start()
    server.keys, server.keys_file, server.metrics_dir = keys, folder / "keys.json", metrics_dir
    yield server
    server.stop()
    shutil.rmtree(metrics_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def image(fashion):
    return png_bytes(fashion.x_test[0])


def pixels_v2(fashion, count):
    pixels = (fashion.x_test[:count].astype(np.float32) / 255).tolist()
    return {"inputs": [{"name": "pixels", "shape": [count, 28, 28], "datatype": "FP32", "data": pixels}]}


# The inference call of each protocol, and how it words an error: (status, JSON) -> the error's code or message.
def native(url, model, image, headers):
    return requests.post(f"{url}/predict?model={model}", files={"image": ("x.png", image, "image/png")},
                         headers=headers, timeout=30)


def kserve_v2(url, model, image, headers):
    body = {"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES",
                        "data": [base64.b64encode(image).decode()]}]}
    return requests.post(f"{url}/v2/models/{model}/infer", json=body, headers=headers, timeout=30)


def tf_serving(url, model, image, headers):
    return requests.post(f"{url}/v1/models/{model}:predict",
                         json={"instances": [{"b64": base64.b64encode(image).decode()}]}, headers=headers, timeout=30)


def native_metadata(url, model, image, headers):
    return requests.get(f"{url}/models/{model}", headers=headers, timeout=30)


def v2_metadata(url, model, image, headers):
    return requests.get(f"{url}/v2/models/{model}", headers=headers, timeout=30)


def tf_metadata(url, model, image, headers):
    return requests.get(f"{url}/v1/models/{model}/metadata", headers=headers, timeout=30)


CALLS = [native, kserve_v2, tf_serving, native_metadata, v2_metadata, tf_metadata]


def error_of(response) -> tuple[str, str]:
    """(code, message) from either error shape: native ``{"error": {code, message}}``, the standard protocols'
    ``{"error": message}``; the shape is checked by the caller's protocol."""
    error = response.json()["error"]
    return (error["code"], error["message"]) if isinstance(error, dict) else ("", error)


def assert_shape(call, response):
    error = response.json()["error"]
    native_shape = call in (native, native_metadata)
    assert isinstance(error, dict) == native_shape, response.text
    if native_shape:
        assert set(error) == {"code", "message"}


def test_health_metrics_and_the_pages_are_open(keyed):
    for path in ("/healthz", "/readyz", "/metrics", "/v2/health/live", "/v2/health/ready", "/", "/openapi.json",
                 "/static/app.js", "/docs/"):
        assert requests.get(keyed.url + path, timeout=30).status_code == 200, path
    for path in ("/models", "/v2", "/feedback/stats", "/v1/models/fashion_mnist", "/nowhere"):
        assert requests.get(keyed.url + path, timeout=30).status_code == 401, path


@pytest.mark.parametrize("call", CALLS)
def test_no_key_is_401_with_a_challenge(keyed, image, call):
    response = call(keyed.url, "fashion_mnist", image, {})
    assert response.status_code == 401, response.text
    assert response.headers["WWW-Authenticate"].startswith("Bearer ")
    assert_shape(call, response)
    assert "API key" in error_of(response)[1]


@pytest.mark.parametrize("call", CALLS)
@pytest.mark.parametrize("wrong", ["ick_000000000000_" + "A" * 43, "not-a-key", "revoked", "other scheme"])
def test_a_wrong_or_revoked_key_is_403(keyed, image, call, wrong):
    headers = {"X-API-Key": wrong}
    if wrong == "revoked":  # a key of the right form, right id and wrong secret part
        good = keyed.keys["full"]
        headers = {"X-API-Key": good[:-4] + ("AAAA" if not good.endswith("AAAA") else "BBBB")}
    elif wrong == "other scheme":
        headers = {"Authorization": "Basic " + base64.b64encode(keyed.keys["full"].encode()).decode()}
    response = call(keyed.url, "fashion_mnist", image, headers)
    assert response.status_code == 403, response.text
    assert_shape(call, response)
    assert "not valid" in error_of(response)[1]


@pytest.mark.parametrize("call", CALLS)
def test_a_model_outside_the_keys_scope_is_403_whether_it_exists_or_not(keyed, image, call, cifar_folder):
    headers = {"X-API-Key": keyed.keys["narrow"]}
    for model in ("fashion_mnist", "no_such_model"):
        response = call(keyed.url, model, image, headers)
        assert response.status_code == 403, response.text
        assert_shape(call, response)
        assert f"may not call model '{model}'" in error_of(response)[1]
    cifar = (next((cifar_folder / "test").glob("*/*.jpg"))).read_bytes()
    assert call(keyed.url, "cifar10", cifar, headers).status_code == 200


@pytest.mark.parametrize("header", ["X-API-Key", "Authorization"])
def test_the_right_key_is_served_in_every_protocol(keyed, image, header):
    key = keyed.keys["full"]
    headers = {header: key if header == "X-API-Key" else f"Bearer {key}"}
    for call in CALLS:
        response = call(keyed.url, "fashion_mnist", image, headers)
        assert response.status_code == 200, (call.__name__, response.text)


def test_models_lists_only_what_the_key_may_call(keyed):
    listed = requests.get(keyed.url + "/models", headers={"X-API-Key": keyed.keys["narrow"]}, timeout=30).json()
    assert [m["name"] for m in listed["models"]] == ["cifar10"]
    listed = requests.get(keyed.url + "/models", headers={"X-API-Key": keyed.keys["full"]}, timeout=30).json()
    assert sorted(m["name"] for m in listed["models"]) == ["cifar10", "fashion_mnist", "mnist"]


def test_past_the_request_quota_every_protocol_answers_429_with_retry_after(keyed, image):
    headers = {"X-API-Key": keyed.keys["slow"]}  # one request, then one every 1,000 s
    assert native(keyed.url, "fashion_mnist", image, headers).status_code == 200
    for call in CALLS:
        response = call(keyed.url, "fashion_mnist", image, headers)
        assert response.status_code == 429, response.text
        assert_shape(call, response)
        assert 900 <= int(response.headers["Retry-After"]) <= 1000
        assert "quota of 0.001 requests a second" in error_of(response)[1]


def test_a_batch_of_32_counts_32_images(keyed, fashion):
    headers = {"X-API-Key": keyed.keys["few"]}  # 40 images a minute
    url = keyed.url + "/v2/models/fashion_mnist/infer"
    too_many = requests.post(url, json=pixels_v2(fashion, 41), headers=headers, timeout=30)
    assert too_many.status_code == 413 and "more than the API key 'few' may send at once" in too_many.json()["error"]
    assert requests.post(url, json=pixels_v2(fashion, 32), headers=headers, timeout=30).status_code == 200
    again = requests.post(url, json=pixels_v2(fashion, 32), headers=headers, timeout=30)
    assert again.status_code == 429 and "40 images a minute" in again.json()["error"]
    assert 30 <= int(again.headers["Retry-After"]) <= 37  # 24 images short at 40 a minute: 36 s
    assert requests.post(url, json=pixels_v2(fashion, 8), headers=headers, timeout=30).status_code == 200


class ApiKeyPlugin(httpclient.InferenceServerClientPlugin):
    """How a tritonclient user sends the key (docs/api.md#api-keys): on every call the client makes."""

    def __init__(self, key: str):
        self.key = key

    def __call__(self, request):
        request.headers["X-API-Key"] = self.key


def test_tritonclient_sends_the_key_with_a_plugin(keyed, image):
    client = httpclient.InferenceServerClient(keyed.url.removeprefix("http://"))
    tensor = httpclient.InferInput("image", [1], "BYTES")
    tensor.set_data_from_numpy(np.array([image], dtype=np.object_), binary_data=True)
    with pytest.raises(InferenceServerException, match="needs an API key"):
        client.infer("fashion_mnist", [tensor])
    client.register_plugin(ApiKeyPlugin(keyed.keys["full"]))
    assert client.is_model_ready("fashion_mnist")
    assert client.infer("fashion_mnist", [tensor]).as_numpy("probabilities").shape == (1, 10)
    client.unregister_plugin()
    client.register_plugin(ApiKeyPlugin(keyed.keys["narrow"]))
    with pytest.raises(InferenceServerException, match="may not call model"):
        client.infer("fashion_mnist", [tensor])


def per_worker_requests(metrics_dir: Path, key: str) -> dict[str, float]:
    """Requests each worker admitted for ``key``, from its own file in the shared metrics folder."""
    counts = {}
    for path in metrics_dir.glob("counter_*.db"):
        alone = Path(tempfile.mkdtemp(prefix="one-worker-"))
        try:
            shutil.copy(path, alone)
            registry = CollectorRegistry()
            MultiProcessCollector(registry, path=str(alone))
            counts[path.stem] = sum(s.value for metric in registry.collect() for s in metric.samples
                                    if s.name == "classifier_api_key_requests_total" and s.labels.get("key") == key)
        finally:
            shutil.rmtree(alone, ignore_errors=True)
    return counts


def test_two_workers_spend_from_one_quota(keyed, image):
    """30 requests a key may send at once, 90 sent at once on new connections: exactly 30 pass, and both workers
    admitted some (each worker's own bucket would have let up to 60 through). Which worker accepts a connection is
    the kernel's choice: a round in which one worker took them all proves nothing, and is run again with a new key."""
    for attempt in range(5):
        name = f"shared{attempt}"
        key = write_api_keys(keyed.keys_file, **{name: {"requests_per_second": 0.001, "burst": 30}})[name]
        time.sleep(1.2)  # the workers read the keys file again at most every second
        statuses = Counter()
        lock = threading.Lock()

        def send(count):
            for _ in range(count):
                response = requests.get(keyed.url + "/models/fashion_mnist", headers={"X-API-Key": key}, timeout=30)
                with lock:
                    statuses[response.status_code] += 1

        threads = [threading.Thread(target=send, args=(9,)) for _ in range(10)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert statuses == {200: 30, 429: 60}
        admitted = per_worker_requests(keyed.metrics_dir, name)
        assert sum(admitted.values()) == 30, admitted
        if sum(1 for n in admitted.values() if n) == 2:
            return
    pytest.fail("in 5 rounds of 90 requests on new connections, one worker always took every admitted request")


def refusal_counts(url: str) -> dict[tuple[str, str], float]:
    text = requests.get(url + "/metrics", timeout=30).text
    return {(s.labels["key"], s.labels["reason"]): s.value for family in text_string_to_metric_families(text)
            for s in family.samples if s.name == "classifier_api_key_refusals_total"}


def test_per_key_metrics_count_requests_images_and_refusals_by_reason(keyed, image):
    def counts():
        text = requests.get(keyed.url + "/metrics", timeout=30).text
        found = Counter()
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                if s.name in ("classifier_api_key_requests_total", "classifier_api_key_images_total"):
                    found[(s.name, s.labels["key"])] = s.value
        return found, refusal_counts(keyed.url)

    (before, refused_before) = counts()
    headers = {"X-API-Key": keyed.keys["bystander"]}
    for _ in range(3):
        assert native(keyed.url, "fashion_mnist", image, headers).status_code == 200
    native(keyed.url, "fashion_mnist", image, {})
    native(keyed.url, "fashion_mnist", image, {"X-API-Key": "wrong"})
    native(keyed.url, "fashion_mnist", image, {"X-API-Key": keyed.keys["narrow"]})
    after, refused = counts()
    assert after[("classifier_api_key_requests_total", "bystander")] - \
        before[("classifier_api_key_requests_total", "bystander")] == 3
    assert after[("classifier_api_key_images_total", "bystander")] - \
        before[("classifier_api_key_images_total", "bystander")] == 3
    for label in (("", "missing"), ("", "invalid"), ("narrow", "model")):
        assert refused.get(label, 0) - refused_before.get(label, 0) == 1, label


def test_metrics_can_have_a_port_of_their_own(tmp_path, image):
    keys = write_api_keys(tmp_path / "keys.json", full={})
    metrics_port = free_port()
    server = GunicornServer(SHIPPED_MODELS, workers=1, API_KEYS_FILE=str(tmp_path / "keys.json"),
                            API_KEYS_SECRET=API_KEYS_SECRET, METRICS_PORT=str(metrics_port)).start()
    try:
        metrics_url = f"http://127.0.0.1:{metrics_port}"
        assert native(server.url, "fashion_mnist", image, {"X-API-Key": keys["full"]}).status_code == 200
        scraped = requests.get(metrics_url + "/metrics", timeout=30)  # no key: a scraper has none
        assert scraped.status_code == 200
        families = {f.name for f in text_string_to_metric_families(scraped.text)}
        assert "classifier_api_key_requests" in families and "classifier_http_requests" in families
        hidden = requests.get(server.url + "/metrics", timeout=30)
        assert hidden.status_code == 404 and "METRICS_PORT" in hidden.json()["error"]["message"]
        for path in ("/predict", "/models", "/healthz"):  # the metrics port serves /metrics and nothing else
            response = requests.get(metrics_url + path, headers={"X-API-Key": keys["full"]}, timeout=30)
            assert response.status_code == 404, path
        # The port is the listening socket's, not the Host header's.
        assert requests.get(server.url + "/metrics", headers={"Host": f"127.0.0.1:{metrics_port}"},
                            timeout=30).status_code == 404
    finally:
        server.stop()


def keys_cli(env: dict, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "service", "keys", *args], cwd=ROOT, env={**os.environ, **env},
                          capture_output=True, text=True, check=True, timeout=60)


def revoke_under_load(servers: list, keys: dict, cli_env: dict, image: bytes) -> None:
    """Load with two keys; revoke one with the CLI: it is refused within 2 s on every server, and the other key
    never sees anything but 200."""
    results = {"doomed": [], "bystander": []}
    stop = threading.Event()
    revoked_at = []

    def load(name, server):
        session = requests.Session()
        deadline = time.monotonic() + 60
        while not stop.is_set() and time.monotonic() < deadline:
            response = native(server.url, "fashion_mnist", image, {"X-API-Key": keys[name]}) if name == "bystander" \
                else session.get(server.url + "/models/fashion_mnist", headers={"X-API-Key": keys[name]}, timeout=30)
            results[name].append((time.monotonic(), response.status_code))

    threads = [threading.Thread(target=load, args=(name, server)) for server in servers
               for name in ("doomed", "bystander", "bystander")]
    for thread in threads:
        thread.start()
    try:
        time.sleep(1.5)
        revoked_at.append(time.monotonic())
        keys_cli(cli_env, "revoke", "doomed")
        revoked_at.append(time.monotonic())  # the CLI has returned
        time.sleep(3)
    finally:
        stop.set()
        for thread in threads:
            thread.join(60)
    assert {status for _, status in results["bystander"]} == {200}
    assert len(results["bystander"]) > 50
    doomed = results["doomed"]
    assert {status for at, status in doomed if at < revoked_at[0]} == {200}
    assert {status for at, status in doomed if at > revoked_at[1] + 2} == {403}
    assert sum(1 for at, _ in doomed if at > revoked_at[1] + 2) > 5


def test_a_revoked_key_stops_within_2_s_and_no_other_request_fails(keyed, image):
    revoke_under_load([keyed], keyed.keys, {"API_KEYS_FILE": str(keyed.keys_file),
                                            "API_KEYS_SECRET": API_KEYS_SECRET}, image)


# --- keys and quotas in PostgreSQL: two replicas ---------------------------------------------------------------

@pytest.fixture(scope="module")
def replicas(postgres_url, tmp_path_factory):
    """Two servers (replicas, a worker each and their own folders) on one PostgreSQL database."""
    env = {"API_KEYS_DATABASE": "1", "DATABASE_URL": postgres_url, "API_KEYS_SECRET": API_KEYS_SECRET}
    keys = {}
    for name, options in (("full", []), ("shared", ["--requests-per-second", "0.001", "--burst", "20"]),
                          ("narrow", ["--models", "cifar10"]), ("doomed", []), ("bystander", [])):
        keys[name] = keys_cli(env, "add", name, *options).stdout.strip()
    servers = [GunicornServer(SHIPPED_MODELS, workers=1, **env, FEEDBACK_DIR=str(tmp_path_factory.mktemp("fb")))
               for _ in range(2)]
    try:
        for server in servers:
            server.start()
        yield servers, keys, env
    finally:
        for server in servers:
            server.stop()


def test_keys_in_postgresql_are_checked_on_every_replica(replicas, image):
    servers, keys, _ = replicas
    for server in servers:
        assert native(server.url, "fashion_mnist", image, {}).status_code == 401
        assert native(server.url, "fashion_mnist", image, {"X-API-Key": "wrong"}).status_code == 403
        assert native(server.url, "fashion_mnist", image, {"X-API-Key": keys["narrow"]}).status_code == 403
        assert native(server.url, "fashion_mnist", image, {"X-API-Key": keys["full"]}).status_code == 200
        assert kserve_v2(server.url, "fashion_mnist", image, {"X-API-Key": keys["full"]}).status_code == 200


def test_a_quota_in_postgresql_holds_across_replicas(replicas):
    """20 at once for the key, 30 sent to each of two replicas: exactly 20 pass in all."""
    servers, keys, _ = replicas
    statuses = {server.url: Counter() for server in servers}

    def send(server):
        for _ in range(10):
            response = requests.get(server.url + "/models/fashion_mnist", headers={"X-API-Key": keys["shared"]},
                                    timeout=30)
            statuses[server.url][response.status_code] += 1

    threads = [threading.Thread(target=send, args=(server,)) for server in servers for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    total = sum(statuses.values(), Counter())
    assert total == {200: 20, 429: 40}, statuses
    assert all(counts[200] > 0 for counts in statuses.values()), statuses  # both replicas spent from it


def test_a_key_revoked_in_postgresql_stops_on_every_replica_within_2_s(replicas, image):
    servers, keys, env = replicas
    revoke_under_load(servers, keys, env, image)
