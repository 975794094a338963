"""deploy/kubernetes: every kustomization rendered by kubectl and checked object by object, then the rendered api
Deployment and models PVC played with podman (as pods: podman 4.3 plays Pods, Deployments and PVCs), several
replicas on one models volume, all switching to a newly promoted version, then all loading a candidate on trial,
shadowing it, and switching to it once it is decided on their summed live figures."""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest
import requests
import yaml

from contract.layout import current_version, point_candidate, read_history
from service.settings import ENVIRONMENT
from tests.conftest import ROOT, SHIPPED_MODELS, free_port, png_bytes, publish_copy, wait_until_ready
from training.settings import TrainingSettings
from training.trial import TrialRules, decide

KUSTOMIZE = ROOT / "deploy" / "kubernetes"
KUSTOMIZATIONS = ["base", "overlays/baked-models", "overlays/online-data", "kserve"]
SERVING_IMAGE, TRAINING_IMAGE = "image-classifier-service:latest", "image-classifier-train:latest"
DATASETS = sorted(p.name for p in SHIPPED_MODELS.iterdir() if p.is_dir() and not p.name.startswith("."))


def _require(tool: str, hint: str) -> None:
    if shutil.which(tool):
        return
    message = f"{tool} is needed ({hint})"
    if os.environ.get("REQUIRE_CONTAINERS") == "1":
        pytest.fail(message)
    pytest.skip(message)


def render(kustomization: str) -> list[dict]:
    _require("kubectl", "kubectl with its built-in kustomize")
    output = subprocess.run(["kubectl", "kustomize", str(KUSTOMIZE / kustomization)], capture_output=True,
                            text=True, check=True, timeout=60).stdout
    return [doc for doc in yaml.safe_load_all(output) if doc]


def by_kind(objects: list[dict]) -> dict[tuple[str, str], dict]:
    return {(o["kind"], o["metadata"]["name"]): o for o in objects}


def env_of(container: dict) -> dict[str, str]:
    return {e["name"]: e.get("value") for e in container.get("env", [])}


def check_restricted(pod_spec: dict, containers: list[dict]) -> None:
    assert pod_spec["securityContext"]["runAsNonRoot"] is True
    assert pod_spec["securityContext"]["runAsUser"] == 10001
    assert pod_spec["automountServiceAccountToken"] is False
    for container in containers:
        context = container["securityContext"]
        assert context["readOnlyRootFilesystem"] is True, container["name"]
        assert context["allowPrivilegeEscalation"] is False, container["name"]
        assert context["capabilities"]["drop"] == ["ALL"], container["name"]
        assert "limits" in container["resources"] and "requests" in container["resources"]


# --- rendered manifests -------------------------------------------------------------------------------------

@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_every_kustomization_renders(kustomization):
    assert render(kustomization)


def test_the_base_has_the_api_its_scaling_and_the_retraining_job():
    objects = by_kind(render("base"))
    assert set(objects) == {("Deployment", "api"), ("Service", "api"), ("HorizontalPodAutoscaler", "api"),
                            ("PodDisruptionBudget", "api"), ("CronJob", "retrain"),
                            ("PersistentVolumeClaim", "models"), ("PersistentVolumeClaim", "training-data")}
    assert objects[("PersistentVolumeClaim", "models")]["spec"]["accessModes"] == ["ReadWriteMany"]
    deployment = objects[("Deployment", "api")]
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert objects[("Service", "api")]["spec"]["selector"] == selector
    assert objects[("PodDisruptionBudget", "api")]["spec"]["selector"]["matchLabels"] == selector
    assert objects[("HorizontalPodAutoscaler", "api")]["spec"]["scaleTargetRef"]["name"] == "api"
    assert objects[("HorizontalPodAutoscaler", "api")]["spec"]["metrics"][0]["resource"]["name"] == "cpu"
    # HTTP and gRPC are named ports of the container, and the Service routes each by name.
    container_ports = {p["name"]: p["containerPort"] for p in deployment["spec"]["template"]["spec"]["containers"][0]
                       ["ports"]}
    assert container_ports == {"http": 8000, "grpc": 8081}
    service_ports = {p["name"]: p["targetPort"] for p in objects[("Service", "api")]["spec"]["ports"]}
    assert service_ports == {"http": "http", "grpc": "grpc"}


def test_the_api_deployment_rolls_safely_probes_and_runs_restricted():
    deployment = by_kind(render("base"))[("Deployment", "api")]
    spec, pod = deployment["spec"], deployment["spec"]["template"]["spec"]
    assert spec["replicas"] >= 2 and spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    (api,) = pod["containers"]
    assert api["image"] == SERVING_IMAGE and pod["initContainers"][0]["image"] == SERVING_IMAGE
    assert api["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert api["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert api["startupProbe"]["httpGet"]["path"] == "/healthz"
    check_restricted(pod, pod["containers"] + pod["initContainers"])

    env = env_of(api)
    assert set(env) <= set(ENVIRONMENT.values()) | {"PROMETHEUS_MULTIPROC_DIR"}, "unknown settings"
    # The pod outlives the drain and the grace period the server gives requests in flight.
    assert pod["terminationGracePeriodSeconds"] > int(env["DRAIN_SECONDS"]) + int(env["GRACEFUL_TIMEOUT_SECONDS"])
    mounts = {m["mountPath"]: m for m in api["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert mounts[env["MODELS_DIR"]]["readOnly"] is True
    assert volumes[mounts[env["MODELS_DIR"]]["name"]]["persistentVolumeClaim"]["claimName"] == "models"
    for writable in ("/tmp", env["PROMETHEUS_MULTIPROC_DIR"]):  # the read-only root needs these
        assert "emptyDir" in volumes[mounts[writable]["name"]], writable


def test_the_retrain_cronjob_retrains_every_dataset_into_the_shared_models_volume():
    objects = by_kind(render("base"))
    cronjob = objects[("CronJob", "retrain")]
    assert cronjob["spec"]["concurrencyPolicy"] == "Forbid"
    pod = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == TRAINING_IMAGE
    assert container["command"] == ["python", "-m", "training", "schedule", "--once"]  # decides due trials too
    env = env_of(container)
    settings = TrainingSettings.from_env(env)  # what the job's process reads
    assert sorted(settings.retrain_datasets) == DATASETS and settings.retrain_max_retries == 0
    assert settings.retrain_stage == "current" and settings.trial_service_urls == ("http://api",)
    check_restricted(pod, pod["containers"])
    claims = {v["name"]: v.get("persistentVolumeClaim", {}).get("claimName") for v in pod["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert claims[mounts[env["MODELS_DIR"]]] == "models", "the api's models volume"
    assert claims[mounts[env["DATA_DIR"]]] == "training-data"


def test_the_baked_models_overlay_serves_the_image_models_without_volumes_or_retraining():
    objects = by_kind(render("overlays/baked-models"))
    assert not [key for key in objects if key[0] in ("CronJob", "PersistentVolumeClaim")]
    pod = objects[("Deployment", "api")]["spec"]["template"]["spec"]
    assert not pod.get("initContainers")
    assert env_of(pod["containers"][0])["MODELS_DIR"] == "/app/models"
    assert all("persistentVolumeClaim" not in v for v in pod["volumes"])


def test_the_online_data_overlay_lets_keras_download():
    objects = by_kind(render("overlays/online-data"))
    assert ("PersistentVolumeClaim", "training-data") not in objects
    container = objects[("CronJob", "retrain")]["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    assert "DATA_DIR" not in env_of(container)
    assert env_of(container)["KERAS_HOME"].startswith("/cache")


def test_the_kserve_example_runs_the_serving_image_as_a_v2_predictor():
    (service,) = render("kserve")
    assert service["kind"] == "InferenceService"
    (container,) = service["spec"]["predictor"]["containers"]
    assert container["image"] == SERVING_IMAGE
    assert env_of(container)["PORT"] == str(container["ports"][0]["containerPort"])
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"


# --- played with podman -------------------------------------------------------------------------------------

def podman(*args, check=True, timeout=600):
    result = subprocess.run(["podman", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)} failed:\n{result.stdout[-3000:]}{result.stderr[-3000:]}")
    return result


def replica_manifest(deployment: dict, name: str, claim: str, port: int) -> dict:
    """The rendered Deployment as one podman replica, changed only where podman 4.3 differs from Kubernetes:
    - ports on 127.0.0.1 stand in for the Service (podman publishes each declared port on the host);
    - restartPolicy OnFailure, since podman applies the pod's policy to init containers too and would run
      the seed again and again;
    - emptyDirs named per replica, since podman 4.3 plays an emptyDir as a named volume that pods would share."""
    manifest = copy.deepcopy(deployment)
    manifest["metadata"]["name"] = name
    manifest["spec"]["replicas"] = 1
    pod = manifest["spec"]["template"]["spec"]
    pod["restartPolicy"] = "OnFailure"
    renames = {v["name"]: f"{name}-{v['name']}" for v in pod["volumes"] if "emptyDir" in v}
    for volume in pod["volumes"]:
        volume["name"] = renames.get(volume["name"], volume["name"])
        if "persistentVolumeClaim" in volume:
            volume["persistentVolumeClaim"]["claimName"] = claim
    for container in pod["containers"] + pod.get("initContainers", []):
        for mount in container.get("volumeMounts", []):
            mount["name"] = renames.get(mount["name"], mount["name"])
    http, *others = pod["containers"][0]["ports"]
    http.update(hostPort=port, hostIP="127.0.0.1")
    for other in others:  # podman publishes every declared port: each replica gets free ones of its own
        other.update(hostPort=free_port(), hostIP="127.0.0.1")
    return manifest


@pytest.mark.slow
def test_played_replicas_share_the_models_volume_and_all_switch_to_a_promoted_version(fashion, tmp_path):
    _require("podman", "bash ../shared/container/setup-podman.sh")
    podman("build", "--format", "docker", "--target", "serve", "-t", SERVING_IMAGE, ".", timeout=1200)
    objects = by_kind(render("base"))
    deployment = objects[("Deployment", "api")]
    replicas = deployment["spec"]["replicas"] + 1  # what the HPA would add under load
    reload_seconds = float(env_of(deployment["spec"]["template"]["spec"]["containers"][0])["MODEL_RELOAD_SECONDS"])

    prefix = f"ics-k8s-{uuid.uuid4().hex[:8]}"
    claim = f"{prefix}-models"
    pvc = copy.deepcopy(objects[("PersistentVolumeClaim", "models")])
    pvc["metadata"]["name"] = claim
    (tmp_path / "pvc.yaml").write_text(yaml.safe_dump(pvc))
    played, urls = [], []
    try:
        podman("kube", "play", str(tmp_path / "pvc.yaml"))
        volume = Path(podman("volume", "inspect", "--format", "{{.Mountpoint}}", claim).stdout.strip())
        os.chown(volume, 10001, 10001)  # what fsGroup does on a cluster; podman 4.3 does not apply it
        for index in range(replicas):
            port = free_port()
            manifest = tmp_path / f"api-{index}.yaml"
            manifest.write_text(yaml.safe_dump(replica_manifest(deployment, f"{prefix}-api-{index}", claim, port)))
            podman("kube", "play", str(manifest))
            played.append(manifest)
            urls.append(f"http://127.0.0.1:{port}")

        image = png_bytes(fashion.x_test[0])
        for url in urls:
            assert wait_until_ready(url), f"{url} never became ready:\n{logs(prefix)}"
            answer = requests.post(url + "/predict", files={"image": ("boot.png", image)}, timeout=10).json()
            assert answer["predictions"][0]["top"][0]["label"] == "Ankle boot"
        # The seed copied the image's models into the empty volume, once.
        shipped = current_version(SHIPPED_MODELS, "fashion_mnist")
        assert {served_version(url) for url in urls} == {shipped}
        container = f"{prefix}-api-0-pod-0-api"
        assert podman("exec", container, "id", "-u").stdout.strip() == "10001"
        assert podman("exec", container, "touch", "/app/written", check=False).returncode != 0, "root fs writable"

        # The retraining job promotes a version on the shared volume; every replica switches to it.
        publish_copy(volume, "fashion_mnist", shipped, shipped + 1)
        promoted_at = time.monotonic()
        switched = {}
        while len(switched) < len(urls) and time.monotonic() - promoted_at < reload_seconds * 3 + 30:
            for url in urls:
                if url not in switched and served_version(url) == shipped + 1:
                    switched[url] = time.monotonic() - promoted_at
            time.sleep(0.1)
        print(f"{replicas} replicas, MODEL_RELOAD_SECONDS={reload_seconds:g}: switched after "
              + ", ".join(f"{seconds:.2f} s" for seconds in sorted(switched.values())))
        assert len(switched) == len(urls), f"not every replica switched:\n{logs(prefix)}"

        # A candidate on trial on the shared volume: every replica loads it and shadows its own traffic; the
        # decision sums the replicas' live figures, and every replica then serves it.
        publish_copy(volume, "fashion_mnist", shipped, shipped + 2, promote=False)
        point_candidate(volume, "fashion_mnist", shipped + 2)
        assert converge(urls, lambda url: (detail(url)["candidate"] or {}).get("version") == shipped + 2,
                        reload_seconds), f"not every replica put it on trial:\n{logs(prefix)}"
        time.sleep(reload_seconds * 2)  # every worker of every replica has it
        for url in urls:
            for start in range(0, 60, 20):
                files = [("image", (f"{i}.png", png_bytes(p))) for i, p in enumerate(fashion.x_test[start:start + 20])]
                assert requests.post(url + "/predict", files=files, timeout=30).status_code == 200
        assert converge(urls, lambda url: detail(url)["candidate"]["shadow"]["images"] == 60, reload_seconds)
        decision = decide("fashion_mnist", volume, TrialRules(min_images=len(urls) * 60), service_urls=urls,
                          report=lambda line: None)
        assert decision.promote, decision.reason
        assert read_history(volume, "fashion_mnist")[-1]["evidence"]["shadow"]["images"] == len(urls) * 60
        assert converge(urls, lambda url: detail(url)["version"] == shipped + 2 and detail(url)["candidate"] is None,
                        reload_seconds), f"not every replica promoted it:\n{logs(prefix)}"
    finally:
        for manifest in played:
            podman("kube", "down", str(manifest), check=False)
        podman("volume", "rm", "-f", claim, check=False)
        for index in range(replicas):
            for name in ("metrics", "tmp"):
                podman("volume", "rm", "-f", f"{prefix}-api-{index}-{name}", check=False)


def served_version(url: str) -> int:
    return detail(url)["version"]


def detail(url: str) -> dict:
    return requests.get(url + "/models/fashion_mnist", timeout=5).json()


def converge(urls: list[str], condition, reload_seconds: float) -> bool:
    """Whether every replica meets ``condition`` within a few reload intervals."""
    deadline = time.monotonic() + reload_seconds * 3 + 30
    while time.monotonic() < deadline:
        if all(condition(url) for url in urls):
            return True
        time.sleep(0.2)
    return False


def logs(prefix: str) -> str:
    names = podman("ps", "-a", "--format", "{{.Names}}", check=False).stdout.split()
    return "\n".join(f"--- {n}\n" + podman("logs", "--tail", "30", n, check=False).stderr
                     for n in names if n.startswith(prefix))
