"""monitoring/: the rules under promtool, the dashboard's and rules' metric names against what the service
really exposes, and Debian's real Prometheus server scraping a live service with the project's config and rules.

promtool and prometheus come from Debian's `prometheus` package; the tests skip without it, except with
REQUIRE_PROMETHEUS=1 (CI), where that fails.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
import requests
import yaml

from tests.conftest import ROOT, SHIPPED_MODELS, GunicornServer, free_port, png_bytes

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
    from training.publish import append_history

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


def test_every_dashboard_expression_uses_names_the_service_exposes(exposed_names):
    dashboard = json.loads(DASHBOARD.read_text())
    expressions = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
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


def test_the_real_prometheus_scrapes_the_service_and_evaluates_the_rules(shipped_server, fashion, cifar_folder):
    binary = _require("prometheus")
    config = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
    # The project's config as it is, with the target pointed at the live test server and faster intervals.
    config["global"] |= {"scrape_interval": "1s", "evaluation_interval": "1s"}
    config["rule_files"] = [str(MONITORING / pattern) for pattern in config["rule_files"]]
    config["scrape_configs"][0]["static_configs"] = [{"targets": [f"127.0.0.1:{shipped_server.port}"]}]
    workdir = Path(tempfile.mkdtemp(prefix="prometheus-test-"))
    (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = open(workdir / "prometheus.log", "w")
    process = subprocess.Popen([binary, f"--config.file={workdir / 'prometheus.yml'}",
                                f"--storage.tsdb.path={workdir / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
                               stdout=log, stderr=subprocess.STDOUT)
    try:
        def target_up():
            try:
                targets = requests.get(url + "/api/v1/targets", timeout=2).json()["data"]["activeTargets"]
            except (requests.RequestException, ValueError, KeyError):
                return None
            return targets if targets and targets[0]["health"] == "up" else None

        targets = wait_for(target_up)
        assert targets, (workdir / "prometheus.log").read_text()[-3000:]
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
                           "classifier_reference_top1_probability", "classifier_ready"):
            assert wait_for(lambda: query(url, expression)), expression
        # Recording rules evaluate over what was scraped: request rates, and the mean top-1 probability.
        def positive(expression):
            result = query(url, expression)
            return result if result and float(result[0]["value"][1]) > 0 else None

        assert wait_for(lambda: positive('classifier:http_requests:rate5m{model="fashion_mnist",protocol="native"}'))
        mean = wait_for(lambda: positive('classifier:top1_probability:mean_1h{model="fashion_mnist"}'))
        assert mean and 0 < float(mean[0]["value"][1]) <= 1
        rules = requests.get(url + "/api/v1/rules", timeout=10).json()["data"]["groups"]
        assert sum(len(group["rules"]) for group in rules) == 18
        assert all(rule["health"] == "ok" for group in rules for rule in group["rules"])
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()
        shutil.rmtree(workdir, ignore_errors=True)
