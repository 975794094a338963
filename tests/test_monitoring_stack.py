"""monitoring/: the rules under promtool, the dashboard's and rules' metric names against what the service
really exposes, and Debian's real Prometheus server scraping a live service with the project's config and rules.

promtool and prometheus come from Debian's `prometheus` package; the tests skip without it, except with
REQUIRE_PROMETHEUS=1 (CI), where that fails.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import requests
import yaml

from tests.conftest import ROOT, SHIPPED_MODELS, GunicornServer, free_port, png_bytes, publish_copy

MONITORING = ROOT / "monitoring"
RULES = MONITORING / "rules" / "classifier.rules.yml"
DASHBOARD = MONITORING / "grafana" / "dashboards" / "image-classifier.json"
PROMQL_WORDS = {"sum", "by", "rate", "increase", "histogram_quantile", "max", "min", "time", "and", "on",
                "group_left", "le", "bool", "or", "without", "avg", "count", "irate", "abs", "offset"}


def _require(tool: str) -> str:
    path = shutil.which(tool)
    if path:
        return path
    message = f"{tool} is needed (Debian's prometheus package)"
    if os.environ.get("REQUIRE_PROMETHEUS") == "1":
        pytest.fail(message)
    pytest.skip(message)


def test_promtool_checks_the_config_and_the_rules():
    promtool = _require("promtool")
    result = subprocess.run([promtool, "check", "config", "prometheus.yml"], cwd=MONITORING, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 18 rules found" in result.stdout + result.stderr


def test_promtool_rule_tests_pass():
    """Every alert with series that fire it and series that must not (monitoring/tests/rules.test.yml)."""
    promtool = _require("promtool")
    result = subprocess.run([promtool, "test", "rules", "tests/rules.test.yml"], cwd=MONITORING,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr


# --- the names the dashboard and the rules use, against the live service ----------------------------------

def recorded_names() -> set[str]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return {rule["record"] for group in groups for rule in group["rules"] if "record" in rule}


def metric_names(expression: str) -> set[str]:
    """Metric names in a PromQL expression: identifiers outside label matchers, strings and durations."""
    stripped = re.sub(r"\{[^}]*\}|\[[^\]]*\]|\"[^\"]*\"", " ", expression)
    names = set(re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", stripped))
    by_clauses = set(re.findall(r"(?:by|on|without|group_left)\s*\(([^)]*)\)", stripped))
    labels = {label.strip() for clause in by_clauses for label in clause.split(",")}
    return {n for n in names - PROMQL_WORDS - labels if not re.fullmatch(r"\d+[smhdw]?|e\d*", n)}


def family_of(name: str) -> str:
    return re.sub(r"_(bucket|sum|count|total)$", "", name)


@pytest.fixture(scope="module")
def exposed_names(tmp_path_factory, fashion):
    """Every family a service exposes once it has served images and has a retrain in its history."""
    from contract.layout import append_history

    models = tmp_path_factory.mktemp("monitored") / "models"
    shutil.copytree(SHIPPED_MODELS, models)
    append_history(models, "fashion_mnist", {"event": "retrain", "outcome": "promoted", "version": 2,
                                             "promoted": True, "candidate": {"accuracy": 0.91},
                                             "champion": {"accuracy": 0.90}})
    server = GunicornServer(models, workers=2, DRIFT_WINDOW_IMAGES="10", HEADER_TIMEOUT_SECONDS="1",
                            LOW_CONFIDENCE_THRESHOLD="0.99").start()
    try:
        for pixels in [*fashion.x_test[:40], 255 - fashion.x_test[0]]:  # the last on a light background
            requests.post(server.url + "/predict", files={"image": ("x.png", png_bytes(pixels))}, timeout=30)
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as slow:  # a 408, to count
            slow.sendall(b"POST /predict HTTP/1.1\r\nHost: test\r\n")
            assert b" 408 " in slow.recv(1024)
        time.sleep(1)  # every worker has written what it counted (MODEL_RELOAD_SECONDS is 0.5 here)
        text = requests.get(server.url + "/metrics", timeout=10).text
    finally:
        server.stop()
    return {family_of(line.split("{")[0].split(" ")[0]) for line in text.splitlines() if line and line[0] != "#"}


def dashboard_expressions() -> list[tuple[str, str]]:
    """(panel title, PromQL) for every query of every panel."""
    dashboard = json.loads(DASHBOARD.read_text())
    return [(p["title"], t["expr"]) for p in dashboard["panels"] for t in p.get("targets", [])]


def test_every_dashboard_expression_uses_names_the_service_exposes(exposed_names):
    dashboard = json.loads(DASHBOARD.read_text())
    expressions = [expression for _, expression in dashboard_expressions()]
    assert len(expressions) >= 20
    known = exposed_names | recorded_names() | {"up"}
    for expression in expressions:
        unknown = {n for n in metric_names(expression) if family_of(n) not in known}
        assert not unknown, f"{expression}: {unknown}"
    titles = " ".join(p["title"].lower() for p in dashboard["panels"])
    for topic in ("requests", "error", "latency", "top-1", "drift", "reload", "retrain"):
        assert topic in titles, topic


def test_every_rule_expression_uses_names_the_service_exposes(exposed_names):
    known = exposed_names | recorded_names() | {"up"}
    for group in yaml.safe_load(RULES.read_text())["groups"]:
        for rule in group["rules"]:
            unknown = {n for n in metric_names(rule["expr"]) if family_of(n) not in known}
            assert not unknown, f"{rule.get('record') or rule.get('alert')}: {unknown}"


# --- the real Prometheus server ------------------------------------------------------------------------------

def query(prometheus_url: str, expression: str) -> list:
    body = requests.get(prometheus_url + "/api/v1/query", params={"query": expression}, timeout=10).json()
    assert body["status"] == "success", body
    return body["data"]["result"]


def wait_for(check, seconds: float = 60):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.5)
    return None


class Prometheus:
    """Debian's Prometheus with the project's prometheus.yml, scraping live services (one, or several replicas)
    every second.

    ``rules_dir``: the rule files to load instead of monitoring/rules (a copy whose ``for:`` is shortened)."""

    def __init__(self, service_port: int | list[int], rules_dir: Path | None = None):
        ports = [service_port] if isinstance(service_port, int) else service_port
        binary = _require("prometheus")
        config = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
        config["global"] |= {"scrape_interval": "1s", "evaluation_interval": "1s"}
        rules = rules_dir or MONITORING / "rules"
        config["rule_files"] = [str(rules / Path(pattern).name) for pattern in config["rule_files"]]
        config["scrape_configs"][0]["static_configs"] = [{"targets": [f"127.0.0.1:{port}" for port in ports]}]
        self.workdir = Path(tempfile.mkdtemp(prefix="prometheus-test-"))
        (self.workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.log = open(self.workdir / "prometheus.log", "w")
        self.process = subprocess.Popen(
            [binary, f"--config.file={self.workdir / 'prometheus.yml'}", f"--storage.tsdb.path={self.workdir / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}"], stdout=self.log, stderr=subprocess.STDOUT)

    def target_up(self):
        try:
            targets = requests.get(self.url + "/api/v1/targets", timeout=2).json()["data"]["activeTargets"]
        except (requests.RequestException, ValueError, KeyError):
            return None
        return targets if targets and all(target["health"] == "up" for target in targets) else None

    def wait_until_scraping(self) -> list:
        targets = wait_for(self.target_up)
        assert targets, (self.workdir / "prometheus.log").read_text()[-3000:]
        return targets

    def query(self, expression: str) -> list:
        return query(self.url, expression)

    def firing(self, alert: str, **labels) -> list[dict]:
        alerts = requests.get(self.url + "/api/v1/alerts", timeout=10).json()["data"]["alerts"]
        return [a for a in alerts if a["labels"]["alertname"] == alert and a["state"] == "firing"
                and all(a["labels"].get(k) == v for k, v in labels.items())]

    def wait_firing(self, alert: str, seconds: float = 60, **labels) -> dict:
        found = wait_for(lambda: self.firing(alert, **labels), seconds)
        assert found, f"{alert} {labels} never fired; pending or firing now: " + json.dumps(
            requests.get(self.url + "/api/v1/alerts", timeout=10).json()["data"]["alerts"])[:3000]
        return found[0]

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()
        shutil.rmtree(self.workdir, ignore_errors=True)


def test_the_real_prometheus_scrapes_the_service_and_evaluates_the_rules(shipped_server, fashion, cifar_folder):
    prometheus = Prometheus(shipped_server.port)
    try:
        targets = prometheus.wait_until_scraping()
        assert targets[0]["labels"]["job"] == "image-classifier-service"

        jpeg = next((cifar_folder / "test").glob("ship/*.jpg")).read_bytes()
        for start in (0, 15):  # in two bursts, scrapes apart: a rate needs the counter to grow between scrapes
            for pixels in fashion.x_test[start:start + 15]:
                requests.post(shipped_server.url + "/predict", files={"image": ("x.png", png_bytes(pixels))},
                              timeout=30)
                requests.post(shipped_server.url + "/predict?model=cifar10", files={"image": ("x.jpg", jpeg)},
                              timeout=30)
            time.sleep(2.5)

        for expression in ('classifier_top1_probability_count{model="fashion_mnist"}',
                           'classifier_input_uploads_total{model="cifar10",format="jpeg",color="color"}',
                           'classifier_drift_psi{model="fashion_mnist",signal="mean_intensity"}',
                           'classifier_drift_reference_images{model="fashion_mnist"}',
                           "classifier_reference_top1_probability", "classifier_ready"):
            assert wait_for(lambda: prometheus.query(expression)), expression
        # Recording rules evaluate over what was scraped: request rates, and the mean top-1 probability.
        def positive(expression):
            result = prometheus.query(expression)
            return result if result and float(result[0]["value"][1]) > 0 else None

        assert wait_for(lambda: positive('classifier:http_requests:rate5m{model="fashion_mnist",protocol="native"}'))
        mean = wait_for(lambda: positive('classifier:top1_probability:mean_1h{model="fashion_mnist"}'))
        assert mean and 0 < float(mean[0]["value"][1]) <= 1
        rules = requests.get(prometheus.url + "/api/v1/rules", timeout=10).json()["data"]["groups"]
        assert sum(len(group["rules"]) for group in rules) == 18
        assert all(rule["health"] == "ok" for group in rules for rule in group["rules"])
    finally:
        prometheus.stop()


# --- every alert, fired by driving the live service into its condition ----------------------------------------

def alert_names() -> list[str]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return sorted(rule["alert"] for group in groups for rule in group["rules"] if "alert" in rule)


def rules_with_short_for(folder: Path) -> Path:
    """The project's rules with every ``for:`` at 1s, and nothing else changed."""
    text = RULES.read_text()
    shortened = re.sub(r"(?m)^(\s+for: )\S+$", r"\g<1>1s", text)
    assert shortened.count("for: 1s") == text.count("for: ")
    original, changed = yaml.safe_load(text), yaml.safe_load(shortened)
    for group, group_changed in zip(original["groups"], changed["groups"]):
        for rule, rule_changed in zip(group["rules"], group_changed["rules"]):
            assert {k: v for k, v in rule.items() if k != "for"} == {k: v for k, v in rule_changed.items()
                                                                      if k != "for"}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / RULES.name).write_text(shortened)
    return folder


# A counter's series appears with the first event counted; Prometheus sees no increase in a series' first sample,
# so each error below is sent once, then, scrapes later, in a burst.


def send_images(url: str, model: str, images: list[bytes], per_request: int = 32) -> None:
    with requests.Session() as session:
        for start in range(0, len(images), per_request):
            files = [("image", (f"{i}", data)) for i, data in enumerate(images[start:start + per_request])]
            response = session.post(f"{url}/predict?model={model}", files=files, timeout=60)
            assert response.status_code == 200, response.text


def drift(prometheus: Prometheus, model: str) -> tuple[dict[str, float], float]:
    psi = {r["metric"]["signal"]: float(r["value"][1])
           for r in prometheus.query(f'classifier_drift_psi{{model="{model}"}}')}
    window = prometheus.query(f'classifier_drift_window_images{{model="{model}"}}')
    return psi, float(window[0]["value"][1]) if window else 0.0


def wait_for_window(prometheus: Prometheus, model: str, images: int) -> dict[str, float]:
    """The PSI once Prometheus has scraped a window of ``images`` holding the latest images (the workers add what
    they classified at least every MODEL_RELOAD_SECONDS)."""
    time.sleep(2.5)
    found = wait_for(lambda: drift(prometheus, model)[1] >= images and drift(prometheus, model), 30)
    assert found, drift(prometheus, model)
    return found[0]


def slow_upload(url: str, png: bytes, seconds: float) -> int:
    """One /predict whose body takes ``seconds`` to arrive, as from a slow client."""
    body = b"".join([b"--b\r\nContent-Disposition: form-data; name=\"image\"; filename=\"x\"\r\n\r\n", png,
                     b"\r\n--b--\r\n"])
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(f"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                     f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode())
        for piece in (body[:len(body) // 2], body[len(body) // 2:]):
            sock.sendall(piece)
            time.sleep(seconds / 2)
        return int(sock.recv(64).split()[1])


def test_every_alert_fires_against_the_live_service_and_none_on_in_distribution_traffic(tmp_path, fashion,
                                                                                         cifar_folder):
    from contract.layout import current_version

    models = tmp_path / "models"
    shutil.copytree(SHIPPED_MODELS, models)
    # A deployment whose retraining job last succeeded four days ago: fashion_mnist's history as it was then.
    history = models / "fashion_mnist" / "history.jsonl"
    old = [json.loads(line) for line in history.read_text().splitlines()]
    four_days_ago = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 4 * 86400))
    history.write_text("".join(json.dumps({**record, "time": min(record["time"], four_days_ago)}) + "\n"
                               for record in old))
    server = GunicornServer(models, workers=2, DRAIN_SECONDS="60").start()
    prometheus = Prometheus(server.port, rules_with_short_for(tmp_path / "rules"))
    fired = set()
    try:
        prometheus.wait_until_scraping()
        pngs = [png_bytes(p) for p in fashion.x_test[:1000]]

        # In-distribution traffic: 1,000 real test images leave every drift PSI under 0.1, and nothing fires.
        send_images(server.url, "fashion_mnist", pngs)
        psi = wait_for_window(prometheus, "fashion_mnist", 1000)
        assert set(psi) == {"mean_intensity", "contrast", "predicted_class"} and max(psi.values()) < 0.1, psi
        time.sleep(3)
        for alert in ("ClassifierInputDrift", "ClassifierPredictionDrift", "ClassifierConfidenceDrop",
                      "ClassifierHighServerErrorRatio", "ClassifierHighClientErrorRatio", "ClassifierSlowRequests",
                      "ClassifierNotReady", "ClassifierDown", "ClassifierModelReloadRefused"):
            assert not prometheus.firing(alert), alert

        # A gray haze over the same images: the input drifts.
        send_images(server.url, "fashion_mnist",
                    [png_bytes((p * 0.5 + 110).astype(np.uint8)) for p in fashion.x_test[1000:2000]])
        print("hazy:", wait_for_window(prometheus, "fashion_mnist", 1000))
        alert = prometheus.wait_firing("ClassifierInputDrift", model="fashion_mnist")
        assert alert["labels"]["signal"] in ("mean_intensity", "contrast") and alert["labels"]["severity"] == "warning"
        fired.add("ClassifierInputDrift")

        # Only trousers: what the model predicts drifts, though each image is an ordinary test image.
        trousers = [png_bytes(p) for p, label in zip(fashion.x_test, fashion.y_test) if label == 1][:1000]
        send_images(server.url, "fashion_mnist", trousers)
        print("trousers only:", wait_for_window(prometheus, "fashion_mnist", 1000))
        prometheus.wait_firing("ClassifierPredictionDrift", model="fashion_mnist")
        fired.add("ClassifierPredictionDrift")

        # Noise for cifar10, after a few real images (a rate needs the counter to exist before it grows): the
        # model is far less sure than on its training images. 600 images, over the rule's one image per 10 s.
        send_images(server.url, "cifar10", [p.read_bytes() for p in sorted((cifar_folder / "test").glob("*/*.jpg"))[:8]])
        time.sleep(3)
        rng = np.random.default_rng(0)
        send_images(server.url, "cifar10", [png_bytes(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
                                            for _ in range(600)])
        prometheus.wait_firing("ClassifierConfidenceDrop", model="cifar10")
        fired.add("ClassifierConfidenceDrop")

        # Slow clients: uploads whose bodies take half a second each, beside the fast traffic.
        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            assert set(pool.map(lambda _: slow_upload(server.url, pngs[0], 0.6), range(32))) == {200}
        prometheus.wait_firing("ClassifierSlowRequests")
        fired.add("ClassifierSlowRequests")

        # A broken client: uploads that are not images.
        with requests.Session() as session:
            for burst in (1, 300):  # the first creates the series, so the burst after it is an increase
                time.sleep(2.5)
                for _ in range(burst):
                    assert session.post(server.url + "/predict", data=b"not an image",
                                        headers={"Content-Type": "image/png"}, timeout=10).status_code == 400
        prometheus.wait_firing("ClassifierHighClientErrorRatio")
        fired.add("ClassifierHighClientErrorRatio")

        # A model file made unreadable under the running service: its card plot is now a folder.
        plot = models / "fashion_mnist" / str(current_version(models, "fashion_mnist")) / "confusion_matrix.png"
        plot.unlink()
        plot.mkdir()
        for burst in (1, 30):
            time.sleep(2.5)
            for _ in range(burst):
                response = requests.get(server.url + "/models/fashion_mnist/files/confusion_matrix.png", timeout=10)
                assert response.status_code == 500 and response.json()["error"]["code"] == "internal_error"
        prometheus.wait_firing("ClassifierHighServerErrorRatio")
        fired.add("ClassifierHighServerErrorRatio")

        # A corrupt version published: every worker refuses it and keeps serving the old one.
        version = current_version(models, "cifar10")
        publish_copy(models, "cifar10", version, max(int(p.name) for p in (models / "cifar10").iterdir()
                                                      if p.name.isdigit()) + 1, damage="tampered")
        prometheus.wait_firing("ClassifierModelReloadRefused", model="cifar10")
        fired.add("ClassifierModelReloadRefused")
        assert requests.get(server.url + "/models/cifar10", timeout=10).json()["version"] == version

        # A retrain that fails, run as the schedule runs it: its failure is in the history the service reads.
        failed = subprocess.run([sys.executable, "-m", "training", "--models-dir", str(models), "retrain", "cifar10",
                                 "--data-dir", str(tmp_path / "no-such-datasets")], capture_output=True, text=True,
                                timeout=300)
        assert failed.returncode != 0
        prometheus.wait_firing("ClassifierRetrainFailed", model="cifar10")
        fired.add("ClassifierRetrainFailed")

        # The deployment's last successful retrain, four days ago.
        prometheus.wait_firing("ClassifierNoRecentRetrain", model="fashion_mnist")
        fired.add("ClassifierNoRecentRetrain")

        # Every panel of the Grafana dashboard has data in this Prometheus, from what the service exposed above.
        for title, expression in dashboard_expressions():
            result = prometheus.query(expression.replace("$__rate_interval", "1m"))
            assert result, f"the panel {title!r} shows nothing: {expression}"

        # SIGTERM: the service drains, answering /readyz with 503 while it still serves; then it is stopped.
        server.process.send_signal(signal.SIGTERM)
        prometheus.wait_firing("ClassifierNotReady")
        fired.add("ClassifierNotReady")
        server.process.send_signal(signal.SIGINT)
        server.process.wait(timeout=60)
        prometheus.wait_firing("ClassifierDown", job="image-classifier-service")
        fired.add("ClassifierDown")
    finally:
        prometheus.stop()
        server.stop()
    assert fired == set(alert_names())


def test_a_trial_is_decided_on_the_figures_prometheus_sums_over_replicas(fashion, tmp_path):
    """Two replicas on one models folder, each shadowing its own share of traffic; Prometheus scrapes both, and
    the decision reads its sums: the same figures as the replicas' own, added up."""
    from contract.layout import point_candidate, point_current, read_history
    from training.trial import TrialRules, decide, figures_from_services

    models_dir = tmp_path / "models"
    shutil.copytree(SHIPPED_MODELS / "fashion_mnist", models_dir / "fashion_mnist")
    point_current(models_dir, "fashion_mnist", 5)
    point_candidate(models_dir, "fashion_mnist", 6)
    replicas = [GunicornServer(models_dir, workers=2).start() for _ in range(2)]
    prometheus = None
    try:
        for replica, (start, stop) in zip(replicas, [(0, 120), (120, 180)]):
            for first in range(start, stop, 20):
                files = [("image", (f"{i}.png", png_bytes(p), "image/png"))
                         for i, p in enumerate(fashion.x_test[first:first + 20])]
                assert requests.post(replica.url + "/predict", files=files, timeout=30).status_code == 200
        urls = [replica.url for replica in replicas]
        own = wait_for(lambda: (lambda f: f if f.images == 180 else None)(
            figures_from_services(urls, "fashion_mnist", 6)))
        assert own, "the replicas never counted all 180 shadowed images"
        prometheus = Prometheus([replica.port for replica in replicas])
        prometheus.wait_until_scraping()
        assert wait_for(lambda: prometheus.query(
            'sum(classifier_shadow_images_total{model="fashion_mnist",candidate="6"}) == 180'))

        decision = decide("fashion_mnist", models_dir, TrialRules(min_images=150), prometheus_url=prometheus.url,
                          report=lambda line: None)
        assert decision.promote, decision.reason
        shadow = read_history(models_dir, "fashion_mnist")[-1]["evidence"]["shadow"]
        assert shadow["images"] == 180 and shadow["agreement"] == pytest.approx(own.agreement)
        assert shadow["mean_top1"]["candidate"] == pytest.approx(own.mean_top1("candidate"), abs=1e-9)
        assert shadow["disagreements"] == own.disagreements
        assert sum(shadow["disagreements"].values()) == round(180 * (1 - own.agreement))
        assert set(shadow["drift_psi"][prometheus.url]) == {"mean_intensity", "contrast", "predicted_class"}
    finally:
        if prometheus is not None:
            prometheus.stop()
        for replica in replicas:
            replica.stop()
