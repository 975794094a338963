"""The Dockerfile and docker-compose.yml, built and run for real with podman (slow: CI runs it)."""

import os
import shutil
import subprocess
import time
import uuid

import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient
from prometheus_client.parser import text_string_to_metric_families

from bench import hostile
from tests.conftest import ROOT, free_port, png_bytes, wait_until_ready

pytestmark = pytest.mark.slow


def _require_podman():
    if shutil.which("podman") and shutil.which("podman-compose"):
        return
    message = "podman and podman-compose are needed (bash ../shared/container/setup-podman.sh)"
    if os.environ.get("REQUIRE_CONTAINERS") == "1":
        pytest.fail(message)
    pytest.skip(message)


def run(*command, timeout=1200, env=None, check=True):
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(command)} failed ({result.returncode}):\n{result.stdout[-3000:]}\n"
                             f"{result.stderr[-3000:]}")
    return result


def test_images_build_and_the_compose_stack_serves_and_retrains(fashion, fashion_dir):
    _require_podman()
    run("podman", "build", "--format", "docker", "--target", "serve", "-t", "image-classifier-service:latest", ".")
    run("podman", "build", "--format", "docker", "--target", "train", "-t", "image-classifier-train:latest", ".")
    size = int(run("podman", "image", "inspect", "--format", "{{.Size}}", "image-classifier-service:latest")
               .stdout.strip())
    print(f"serving image: {size / 1e6:.0f} MB")
    assert run("podman", "run", "--rm", "image-classifier-service:latest", "python", "-c",
               "import importlib.util as u; print(u.find_spec('tensorflow'))").stdout.strip() == "None"
    assert run("podman", "run", "--rm", "image-classifier-service:latest", "id", "-u").stdout.strip() == "10001"

    project = f"ics-test-{uuid.uuid4().hex[:8]}"
    port, grpc_port = free_port(), free_port()
    env = {**os.environ, "API_PORT": str(port), "API_GRPC_PORT": str(grpc_port), "RETRAIN_INTERVAL": "1h", "DATASETS_DIR": str(fashion_dir.parent),
           "RETRAIN_DATA_DIR": "/datasets"}
    compose = ("podman-compose", "-p", project, "-f", "docker-compose.yml")
    try:
        run(*compose, "up", "-d", "--no-build", env=env, timeout=300)
        url = f"http://127.0.0.1:{port}"
        if not wait_until_ready(url, timeout=120, interval=1):
            logs = run(*compose, "logs", env=env, check=False)
            raise AssertionError(f"api never became ready:\n{logs.stdout[-3000:]}{logs.stderr[-3000:]}")

        response = requests.post(url + "/predict", files={"image": png_bytes(fashion.x_test[0])}, timeout=10)
        assert response.status_code == 200
        assert response.json()["predictions"][0]["top"][0]["label"] == "Ankle boot"
        # KServe V2 over gRPC, published beside HTTP.
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not _grpc_ready(client):
            time.sleep(1)
        image = grpcclient.InferInput("image", [1], "BYTES")
        image.set_data_from_numpy(np.array([png_bytes(fashion.x_test[0])], dtype=np.object_))
        top = client.infer("fashion_mnist", [image], outputs=[
            grpcclient.InferRequestedOutput("probabilities", class_count=1)]).as_numpy("probabilities")
        assert top[0][0].decode().endswith(":Ankle boot")
        families = {f.name: f for f in text_string_to_metric_families(requests.get(url + "/metrics").text)}
        assert "classifier_http_requests" in families and "classifier_model_info" in families
        # The page, the API description, Swagger UI's files and the guides come with the image, not from a CDN.
        for path in ("/", "/static/app.js", "/openapi.json", "/docs/", "/docs/swagger-ui-bundle.js",
                     "/guides/operations.md"):
            assert requests.get(url + path, timeout=10).status_code == 200, path

        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            logs = run("podman", "logs", f"{project}_retrain_1", check=False)
            if "scheduling retrains" in logs.stdout + logs.stderr:
                break
            time.sleep(1)
        else:
            raise AssertionError(f"the retrain service did not start:\n{logs.stdout}{logs.stderr}")
        state = run("podman", "inspect", "--format", "{{.State.Running}}", f"{project}_retrain_1").stdout
        assert state.strip() == "true"
    finally:
        run(*compose, "down", "-v", env=env, check=False, timeout=300)


def _grpc_ready(client) -> bool:
    try:
        return client.is_server_ready()
    except Exception:  # not listening yet
        return False


def test_the_serving_image_under_the_kubernetes_memory_limit_survives_the_hostile_corpus(fashion):
    """The Deployment's limits (512 Mi, 2 CPUs) on one container, sized by them to two workers: every hostile case
    gets its answer, no process is killed for memory, no worker is replaced, and other clients keep being served."""
    _require_podman()
    run("podman", "build", "--format", "docker", "--target", "serve", "-t", "image-classifier-service:latest", ".")
    name, port = f"ics-hostile-{uuid.uuid4().hex[:8]}", free_port()
    run("podman", "run", "-d", "--name", name, "--memory", "512m", "--memory-swap", "512m", "--cpus", "2",
        "-p", f"127.0.0.1:{port}:8000", "-e", "FEEDBACK_TOKEN=hostile-token", "-e", "BODY_TIMEOUT_SECONDS=2",
        "image-classifier-service:latest")
    try:
        assert wait_until_ready(f"http://127.0.0.1:{port}", timeout=120, interval=1), \
            run("podman", "logs", name, check=False).stderr[-3000:]
        hostile.prepare()
        for case in hostile.CASES:
            result = hostile.run_case(case, ("127.0.0.1", port), "hostile-token", None)
            statuses = {answer.status for answer in result.answers}
            assert statuses <= set(case.expect), (case.name, statuses)
            assert result.probe_failures == [], (case.name, result.probe_failures)
        state = run("podman", "inspect", "--format", "{{.State.Running}} {{.State.OOMKilled}} {{.RestartCount}}",
                    name).stdout.split()
        assert state == ["true", "false", "0"], state
        logs = run("podman", "logs", name).stderr
        assert logs.count("Booting worker with pid") == 2, logs[-3000:]
        assert "SIGKILL" not in logs and "out of memory" not in logs.lower(), logs[-3000:]
        peak = run("podman", "exec", name, "sh", "-c", "cat /sys/fs/cgroup/memory/memory.max_usage_in_bytes "
                   "2>/dev/null || cat /sys/fs/cgroup/memory.peak", check=False).stdout.strip()
        print(f"the container's peak memory over the corpus: {int(peak or 0) / 2**20:.0f} MiB of 512 MiB")
    finally:
        run("podman", "rm", "-f", name, check=False, timeout=120)


def test_the_serving_image_sizes_its_workers_from_the_cpu_limit():
    """With `--cpus 1` and no WEB_CONCURRENCY the container starts one worker, and says why."""
    _require_podman()
    run("podman", "build", "--format", "docker", "--target", "serve", "-t", "image-classifier-service:latest", ".")
    name, port = f"ics-sizing-{uuid.uuid4().hex[:8]}", free_port()
    run("podman", "run", "-d", "--name", name, "--cpus", "1", "-p", f"127.0.0.1:{port}:8000",
        "image-classifier-service:latest")
    try:
        assert wait_until_ready(f"http://127.0.0.1:{port}", timeout=120, interval=1), \
            run("podman", "logs", name, check=False).stderr[-3000:]
        serving = requests.get(f"http://127.0.0.1:{port}/models", timeout=10).json()["serving"]
        assert (serving["workers"], serving["runtime_threads"], serving["cpus"]) == (1, 1, 1.0), serving
        assert "cgroup" in serving["source"], serving
        logs = run("podman", "logs", name).stderr
        assert logs.count("Booting worker with pid") == 1 and "sizing: 1 worker(s) x 1" in logs, logs[-3000:]
    finally:
        run("podman", "rm", "-f", name, check=False, timeout=120)
