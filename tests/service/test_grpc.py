"""KServe V2 over gRPC against the real server (gunicorn's master starting the gRPC processes), through
tritonclient's gRPC client and the protocol's own stubs: every RPC, equality with /predict on 1,000 real images
per model, the refusals as status codes, API keys, health and drain, a version switch and a crashed process under
load with no failed call."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import Counter
from pathlib import Path

import grpc
import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.utils import InferenceServerException

from service.protocols.kserve_v2_grpc import grpc_predict_v2_pb2 as pb
from service.protocols.kserve_v2_grpc import grpc_predict_v2_pb2_grpc as pb_grpc
from tests.conftest import (
    API_KEYS_SECRET,
    SHIPPED_MODELS,
    GunicornServer,
    copy_current_version,
    free_port,
    png_bytes,
    publish_copy,
    write_api_keys,
)
from tests.service.test_protocols import cifar_images, fashion_images, predict_probabilities

BATCH = 50


def start_with_grpc(models_dir: Path, workers: int = 2, **env) -> GunicornServer:
    port = free_port()
    server = GunicornServer(models_dir, workers=workers, GRPC_PORT=str(port), **env).start()
    server.grpc_target = f"127.0.0.1:{port}"
    client = grpcclient.InferenceServerClient(server.grpc_target)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # the gRPC processes load the models after the HTTP workers
        try:
            if client.is_server_ready():
                return server
        except InferenceServerException:
            pass
        time.sleep(0.2)
    server.stop()
    raise RuntimeError("the gRPC side did not become ready in 60 s:\n" + server.output())


@pytest.fixture(scope="module")
def served():
    server = start_with_grpc(SHIPPED_MODELS)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def client(served):
    return grpcclient.InferenceServerClient(served.grpc_target)


@pytest.fixture(scope="module")
def stub(served):
    with grpc.insecure_channel(served.grpc_target) as channel:
        yield pb_grpc.GRPCInferenceServiceStub(channel)


def bytes_input(files):
    tensor = grpcclient.InferInput("image", [len(files)], "BYTES")
    tensor.set_data_from_numpy(np.array(files, dtype=np.object_))
    return tensor


def grpc_probabilities(client, model, files):
    rows = []
    for start in range(0, len(files), BATCH):
        rows.append(client.infer(model, [bytes_input(files[start:start + BATCH])]).as_numpy("probabilities"))
    return np.concatenate(rows)


def assert_same(probabilities, expected):
    assert probabilities.shape == expected.shape
    assert (probabilities.argmax(axis=1) == expected.argmax(axis=1)).all()
    assert np.abs(probabilities - expected).max() <= 1e-6


def test_server_and_model_rpcs(client, served):
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("fashion_mnist") and client.is_model_ready("cifar10", "5")
    metadata = client.get_server_metadata()
    assert metadata.name == "image-classifier-service" and set(metadata.extensions) >= {"classification"}
    over_http = requests.get(served.url + "/v2/models/cifar10", timeout=30).json()
    over_grpc = client.get_model_metadata("cifar10", as_json=True)
    assert over_grpc["name"] == over_http["name"] and over_grpc["versions"] == over_http["versions"]
    assert over_grpc["platform"] == over_http["platform"]
    for kind in ("inputs", "outputs"):
        assert [(t["name"], t["datatype"], [int(n) for n in t["shape"]]) for t in over_grpc[kind]] == \
            [(t["name"], t["datatype"], t["shape"]) for t in over_http[kind]]
    for call in (lambda: client.is_model_ready("nope"), lambda: client.get_model_metadata("nope"),
                 lambda: client.get_model_metadata("cifar10", "1")):
        with pytest.raises(InferenceServerException) as refused:
            call()
        assert refused.value.status() == "StatusCode.NOT_FOUND"


def test_grpc_equals_predict_on_1000_fashion_pngs(served, client, fashion):
    _, files, _ = fashion_images(fashion, 1000)
    assert_same(grpc_probabilities(client, "fashion_mnist", files),
                predict_probabilities(served, "fashion_mnist", files, "image/png"))


def test_grpc_equals_predict_on_1000_cifar_jpegs(served, client, cifar_folder):
    _, files = cifar_images(cifar_folder, 1000)
    assert_same(grpc_probabilities(client, "cifar10", files),
                predict_probabilities(served, "cifar10", files, "image/jpeg"))


def test_raw_and_typed_contents_give_the_same_answer_and_the_same_ids(served, stub, fashion):
    pixels = fashion.x_test[:8].astype(np.float32) / np.float32(255.0)
    files = [png_bytes(p) for p in fashion.x_test[:8]]
    typed = pb.ModelInferRequest(model_name="fashion_mnist", id="typed", inputs=[pb.ModelInferRequest.InferInputTensor(
        name="pixels", datatype="FP32", shape=[8, 28, 28], contents=pb.InferTensorContents(fp32_contents=pixels.ravel()))])
    raw = pb.ModelInferRequest(model_name="fashion_mnist", inputs=[pb.ModelInferRequest.InferInputTensor(
        name="pixels", datatype="FP32", shape=[8, 28, 28])], raw_input_contents=[pixels.astype("<f4").tobytes()])
    files_typed = pb.ModelInferRequest(model_name="fashion_mnist", inputs=[pb.ModelInferRequest.InferInputTensor(
        name="image", datatype="BYTES", shape=[8], contents=pb.InferTensorContents(bytes_contents=files))])
    answers = [stub.ModelInfer(request) for request in (typed, raw, files_typed)]
    assert answers[0].id == "typed" and answers[0].model_version == "6"
    decoded = [np.frombuffer(a.raw_output_contents[0], "<f4").reshape(8, 10) for a in answers]
    assert np.array_equal(decoded[0], decoded[1]) and np.array_equal(decoded[0], decoded[2])
    over_http = requests.post(served.url + "/predict?model=fashion_mnist",
                              files=[("image", (f"{i}.png", f, "image/png")) for i, f in enumerate(files)],
                              timeout=30).json()
    ids = [p["id"] for p in over_http["predictions"]]
    assert all(a.parameters["prediction_ids"].string_param.split(",") == ids for a in answers)
    assert_same(decoded[0], np.array([p["probabilities"] for p in over_http["predictions"]], np.float32))


def test_classification_sets_and_out_of_distribution_outputs(client, served, fashion):
    files = [png_bytes(p) for p in fashion.x_test[:4]]
    outputs = [grpcclient.InferRequestedOutput("probabilities", class_count=2)] + [
        grpcclient.InferRequestedOutput(name) for name in ("prediction_set", "unsure", "ood_p_value")]
    result = client.infer("fashion_mnist", [bytes_input(files)], parameters={"coverage": "0.9", "abstain_above": 1},
                          outputs=outputs)
    over_http = requests.post(served.url + "/predict?model=fashion_mnist&coverage=0.9&abstain_above=1",
                              files=[("image", (f"{i}.png", f, "image/png")) for i, f in enumerate(files)],
                              timeout=30).json()["predictions"]
    top = result.as_numpy("probabilities")
    assert top.shape == (4, 2)
    assert [row[0].decode().split(":", 2)[2] for row in top] == [p["top"][0]["label"] for p in over_http]
    members = result.as_numpy("prediction_set")
    classes = requests.get(served.url + "/models/fashion_mnist", timeout=30).json()["classes"]
    assert [[classes[i] for i in np.flatnonzero(row)] for row in members] == \
        [p["prediction_set"]["labels"] for p in over_http]
    assert list(result.as_numpy("unsure")) == [p["prediction_set"]["unsure"] for p in over_http]
    np.testing.assert_allclose(result.as_numpy("ood_p_value"),
                               [p["out_of_distribution"]["p_value"] for p in over_http], atol=5e-6)  # /predict rounds to 5 digits


def refused(call) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as error:
        call()
    return error.value.code(), error.value.details()


def image_request(files, model="fashion_mnist", **fields) -> pb.ModelInferRequest:
    return pb.ModelInferRequest(model_name=model, inputs=[pb.ModelInferRequest.InferInputTensor(
        name="image", datatype="BYTES", shape=[len(files)], contents=pb.InferTensorContents(bytes_contents=files))],
        **fields)


def test_hostile_calls_get_the_status_code_http_would_mean(stub, fashion):
    from PIL import Image
    import io

    good = png_bytes(fashion.x_test[0])
    buffer = io.BytesIO()
    Image.new("L", (8000, 8000)).save(buffer, format="PNG")  # 64 megapixels declared: over MAX_IMAGE_PIXELS
    huge = buffer.getvalue()
    cases = [
        (image_request([good], model="nope"), grpc.StatusCode.NOT_FOUND, "no model named"),
        (image_request([good], model_version="1"), grpc.StatusCode.NOT_FOUND, "version"),
        (image_request([good[:len(good) // 2]]), grpc.StatusCode.INVALID_ARGUMENT, "image"),
        (image_request([b"not an image"]), grpc.StatusCode.INVALID_ARGUMENT, "image"),
        (image_request([good] * 65), grpc.StatusCode.INVALID_ARGUMENT, "MAX_IMAGES_PER_REQUEST"),
        (image_request([huge]), grpc.StatusCode.RESOURCE_EXHAUSTED, "MAX_IMAGE_PIXELS"),
        (image_request([]), grpc.StatusCode.INVALID_ARGUMENT, "holds no images"),
        (pb.ModelInferRequest(model_name="fashion_mnist"), grpc.StatusCode.INVALID_ARGUMENT, "exactly one tensor"),
        (pb.ModelInferRequest(model_name="fashion_mnist", inputs=[pb.ModelInferRequest.InferInputTensor(
            name="pixels", datatype="FP32", shape=[1, 28, 28], contents=pb.InferTensorContents(fp32_contents=[0.5]))]),
         grpc.StatusCode.INVALID_ARGUMENT, "the shape says 784"),
        (pb.ModelInferRequest(model_name="fashion_mnist", inputs=[pb.ModelInferRequest.InferInputTensor(
            name="pixels", datatype="FP32", shape=[1, 28, 28])], raw_input_contents=[b"\0" * 3135]),
         grpc.StatusCode.INVALID_ARGUMENT, "3135 bytes"),
        (pb.ModelInferRequest(model_name="fashion_mnist", inputs=[pb.ModelInferRequest.InferInputTensor(
            name="pixels", datatype="FP32", shape=[1, 28, 28])], raw_input_contents=[np.full(784, 2, "<f4").tobytes()]),
         grpc.StatusCode.INVALID_ARGUMENT, "within [0, 1]"),
        (pb.ModelInferRequest(model_name="fashion_mnist", inputs=[pb.ModelInferRequest.InferInputTensor(
            name="pixels", datatype="FP32", shape=[1] * 9)]), grpc.StatusCode.INVALID_ARGUMENT, "1 to 8"),
        (pb.ModelInferRequest(model_name="fashion_mnist", inputs=[pb.ModelInferRequest.InferInputTensor(
            name="image", datatype="BYTES", shape=[2])], raw_input_contents=[b"\xff\xff\xff\x7f"]),
         grpc.StatusCode.INVALID_ARGUMENT, "more than are left"),
        (image_request([good], outputs=[pb.ModelInferRequest.InferRequestedOutputTensor(name="logits")]),
         grpc.StatusCode.INVALID_ARGUMENT, "unknown output"),
        (image_request([good], outputs=[pb.ModelInferRequest.InferRequestedOutputTensor(name="probabilities")] * 6),
         grpc.StatusCode.INVALID_ARGUMENT, "more than once"),
        (image_request([good], parameters={"coverage": pb.InferParameter(string_param="0.3")}),
         grpc.StatusCode.INVALID_ARGUMENT, "coverage"),
    ]
    for request, code, words in cases:
        got, details = refused(lambda: stub.ModelInfer(request, timeout=30))
        assert (got, words in details) == (code, True), (details, request.inputs[:1])
    # Past MAX_UPLOAD_BYTES (10 MiB), gRPC refuses the message before it reaches the service.
    got, _ = refused(lambda: stub.ModelInfer(image_request([b"\0" * (11 << 20)]), timeout=30))
    assert got == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert stub.ModelInfer(image_request([good]), timeout=30).model_name == "fashion_mnist"  # still serving


def test_calls_are_counted_with_the_grpc_protocol_label(served, client):
    client.is_model_ready("mnist")
    metrics = requests.get(served.url + "/metrics", timeout=30).text
    assert 'endpoint="ModelReady",model="mnist",protocol="kserve_v2_grpc",status="OK"' in metrics


def health_status(target: str, service: str = "") -> int:
    with grpc.insecure_channel(target) as channel:
        return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service),
                                                         timeout=10).status


def grpc_server_pids(master_pid: int) -> list[int]:
    """The gRPC server processes under the master (its supervisor's children)."""
    def children(pid):
        found = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    stat = Path(f"/proc/{entry}/stat").read_text()
                except OSError:
                    continue
                if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry))
        return found
    return [pid for supervisor in children(master_pid)
            if b"grpc_server" in Path(f"/proc/{supervisor}/cmdline").read_bytes()
            for pid in children(supervisor)]


def alive(pid: int) -> bool:
    """Whether the process exists and has not exited (a zombie waiting for its parent has)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def load(target: str, image: bytes, results: list, stop: threading.Event, seconds: float = 40):
    """Calls until stopped, bounded in time; each result is (status code, version)."""
    with grpc.insecure_channel(target) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        deadline = time.monotonic() + seconds
        while not stop.is_set() and time.monotonic() < deadline:
            try:
                answer = stub.ModelInfer(image_request([image]), timeout=10)
                results.append((grpc.StatusCode.OK, answer.model_version))
            except grpc.RpcError as error:
                results.append((error.code(), ""))


def test_health_follows_readiness_and_a_version_switch_under_load_fails_no_call(tmp_path, fashion):
    models_dir = tmp_path / "models"
    version = copy_current_version(models_dir, "fashion_mnist")
    image = png_bytes(fashion.x_test[0])
    server = start_with_grpc(models_dir)
    try:
        serving = health_pb2.HealthCheckResponse.SERVING
        assert health_status(server.grpc_target) == serving
        assert health_status(server.grpc_target, "inference.GRPCInferenceService") == serving
        results, stop = [], threading.Event()
        threads = [threading.Thread(target=load, args=(server.grpc_target, image, results, stop)) for _ in range(4)]
        for thread in threads:
            thread.start()
        time.sleep(1)
        publish_copy(models_dir, "fashion_mnist", version, version + 1)
        published = time.monotonic()
        while time.monotonic() - published < 10 and not any(v == str(version + 1) for _, v in results[-8:]):
            time.sleep(0.05)
        switched = time.monotonic() - published
        time.sleep(1.5)
        stop.set()
        for thread in threads:
            thread.join(60)
        assert Counter(code for code, _ in results) == {grpc.StatusCode.OK: len(results)} and len(results) > 50
        assert switched < 2.5 and results[-1][1] == str(version + 1)
    finally:
        server.stop()


def test_a_crashed_grpc_process_is_replaced_and_a_stop_drains(tmp_path, fashion):
    image = png_bytes(fashion.x_test[0])
    server = start_with_grpc(SHIPPED_MODELS, DRAIN_SECONDS="2")
    try:
        pids = grpc_server_pids(server.process.pid)
        assert len(pids) == 2
        os.kill(pids[0], signal.SIGKILL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and len(set(grpc_server_pids(server.process.pid)) - {pids[0]}) < 2:
            time.sleep(0.2)
        replaced = grpc_server_pids(server.process.pid)
        assert len(replaced) == 2 and pids[0] not in replaced
        client = grpcclient.InferenceServerClient(server.grpc_target)
        deadline = time.monotonic() + 60
        ok = 0
        while time.monotonic() < deadline and ok < 40:  # a fresh connection each time reaches either process
            fresh = grpcclient.InferenceServerClient(server.grpc_target)
            ok = ok + 1 if fresh.is_server_ready() else 0
            fresh.close()
        assert ok == 40

        # SIGTERM: for DRAIN_SECONDS calls are still answered while health says NOT_SERVING, then all stop.
        results, stop = [], threading.Event()
        thread = threading.Thread(target=load, args=(server.grpc_target, image, results, stop, 10))
        thread.start()
        time.sleep(0.5)
        server.process.send_signal(signal.SIGTERM)
        time.sleep(0.8)
        assert health_status(server.grpc_target) == health_pb2.HealthCheckResponse.NOT_SERVING
        assert client.is_server_ready() is False
        served_while_draining = len(results)
        time.sleep(0.8)
        assert len(results) > served_while_draining  # still answering during the drain
        server.process.wait(30)
        stop.set()
        thread.join(30)
        assert not any(map(alive, replaced))
        answered = [code for code, _ in results]
        assert answered[:served_while_draining] == [grpc.StatusCode.OK] * served_while_draining
    finally:
        server.stop()


def test_api_keys_over_grpc(tmp_path, fashion):
    keys = write_api_keys(tmp_path / "keys.json", full={}, narrow={"models": ("cifar10",)},
                          few={"images_per_minute": 2})
    server = start_with_grpc(SHIPPED_MODELS, workers=1, API_KEYS_FILE=str(tmp_path / "keys.json"),
                             API_KEYS_SECRET=API_KEYS_SECRET)
    try:
        image = png_bytes(fashion.x_test[0])
        with grpc.insecure_channel(server.grpc_target) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            assert stub.ServerReady(pb.ServerReadyRequest(), timeout=10).ready  # open, as /v2/health/ready is
            code, details = refused(lambda: stub.ModelInfer(image_request([image]), timeout=10))
            assert code == grpc.StatusCode.UNAUTHENTICATED and "API key" in details
            code, _ = refused(lambda: stub.ModelInfer(image_request([image]), metadata=[("x-api-key", "wrong")]))
            assert code == grpc.StatusCode.PERMISSION_DENIED
            code, details = refused(lambda: stub.ModelMetadata(pb.ModelMetadataRequest(name="fashion_mnist"),
                                                               metadata=[("x-api-key", keys["narrow"])]))
            assert code == grpc.StatusCode.PERMISSION_DENIED and "may not call model" in details
            answer = stub.ModelInfer(image_request([image]), metadata=[("authorization", f"Bearer {keys['full']}")])
            assert answer.model_name == "fashion_mnist"
            few = [("x-api-key", keys["few"])]
            stub.ModelInfer(image_request([image, image]), metadata=few)
            with pytest.raises(grpc.RpcError) as limited:
                stub.ModelInfer(image_request([image]), metadata=few)
            assert limited.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert int(dict(limited.value.trailing_metadata())["retry-after"]) >= 1
        client = grpcclient.InferenceServerClient(server.grpc_target)
        assert client.is_model_ready("fashion_mnist", headers={"x-api-key": keys["full"]})
    finally:
        server.stop()


def test_ctrl_c_stops_both_sides_at_once_without_the_drain():
    """SIGINT, as Ctrl-C on `make serve` sends it: with a 30 s drain set, everything has stopped well before."""
    server = start_with_grpc(SHIPPED_MODELS, workers=1, DRAIN_SECONDS="30")
    try:
        pids = grpc_server_pids(server.process.pid)
        assert len(pids) == 1
        server.process.send_signal(signal.SIGINT)
        server.process.wait(20)  # TimeoutExpired here would mean a side waited out its drain
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and any(map(alive, pids)):
            time.sleep(0.1)
        assert not any(map(alive, pids))
    finally:
        server.stop()
