"""The servers a user would pick instead, each serving the same int8 ONNX model in its own idiomatic way.

Each peer lives in its own virtual environment under ``.cache/bench-peers/`` (made on first use, from PyPI;
never the project's own), runs a server script from ``bench/peer_servers/`` with two workers or instances,
and is sent requests in its own upload format:

| peer | server | upload |
|---|---|---|
| Triton (PyTriton) | Triton's C++ server, two Python model instances, dynamic batcher | V2 binary tensor, BYTES input |
| Triton over gRPC | the same server's gRPC port | ``ModelInfer``, BYTES input in ``raw_input_contents`` |
| MLServer | MLServer, two parallel inference workers | V2 JSON, BYTES input (base64) |
| LitServe | LitServe, two inference workers | multipart |
| BentoML | BentoML, two workers, access log off | multipart |
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import struct
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / ".cache" / "bench-peers"
SERVERS = ROOT / "bench" / "peer_servers"
BOUNDARY = "benchboundary7e3c1f"


def multipart(images: list[bytes], content_type: str) -> bytes:
    parts = [(f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"{i}\"\r\n"
              f"Content-Type: {content_type}\r\n\r\n").encode() + data + b"\r\n" for i, data in enumerate(images)]
    return b"".join(parts) + f"--{BOUNDARY}--\r\n".encode()


MULTIPART_TYPE = f"multipart/form-data; boundary={BOUNDARY}"


def v2_binary_request(path: str, image: bytes) -> Request:
    """KServe V2 with binary tensor data: one encoded image in the BYTES input ``image`` (shape [1, 1], as a
    batching Triton model takes it), the output ``probabilities`` asked for as binary."""
    header = json.dumps({"inputs": [{"name": "image", "shape": [1, 1], "datatype": "BYTES",
                                     "parameters": {"binary_data_size": len(image) + 4}}],
                         "outputs": [{"name": "probabilities", "parameters": {"binary_data": True}}]}).encode()
    return Request(path, {"Content-Type": "application/octet-stream",
                          "Inference-Header-Content-Length": str(len(header))},
                   header + struct.pack("<I", len(image)) + image)


def v2_binary_top1(body: bytes, headers) -> int:
    """The predicted class index in a V2 binary answer holding the output ``probabilities`` alone."""
    size = int(headers["Inference-Header-Content-Length"])
    probabilities = struct.unpack(f"<{(len(body) - size) // 4}f", body[size:])
    return max(range(len(probabilities)), key=probabilities.__getitem__)


GRPC_INFER_PATH = "/inference.GRPCInferenceService/ModelInfer"


def grpc_infer_message(model: str, image: bytes, shape: list[int]) -> bytes:
    """A serialized KServe V2 ``ModelInferRequest``: one encoded image in the BYTES input ``image`` (``shape``: [1]
    for the service, [1, 1] for a batching Triton model), carried in ``raw_input_contents`` as a 4-byte
    little-endian length and the bytes; the output ``probabilities`` asked for."""
    from service.protocols.kserve_v2_grpc import grpc_predict_v2_pb2 as pb

    return pb.ModelInferRequest(
        model_name=model,
        inputs=[pb.ModelInferRequest.InferInputTensor(name="image", datatype="BYTES", shape=shape)],
        outputs=[pb.ModelInferRequest.InferRequestedOutputTensor(name="probabilities")],
        raw_input_contents=[struct.pack("<I", len(image)) + image]).SerializeToString()


def grpc_frame(message: bytes) -> bytes:
    """A gRPC message as it goes in an HTTP/2 request body: not compressed (flag 0), 4-byte big-endian length."""
    return b"\0" + struct.pack(">I", len(message)) + message


def grpc_top1(response: bytes) -> int:
    """The predicted class index in a serialized ``ModelInferResponse`` whose first output is ``probabilities``
    in ``raw_output_contents``."""
    from service.protocols.kserve_v2_grpc import grpc_predict_v2_pb2 as pb

    answer = pb.ModelInferResponse.FromString(response)
    probabilities = struct.unpack(f"<{len(answer.raw_output_contents[0]) // 4}f", answer.raw_output_contents[0])
    return max(range(len(probabilities)), key=probabilities.__getitem__)


@dataclass(frozen=True)
class Request:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass(frozen=True)
class Peer:
    name: str
    key: str
    requirements: tuple[str, ...]
    ready_path: str
    # Debian's Python for PyTriton: its bundled Python stub fails on a newer 3.11 standard library.
    python: str = sys.executable
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def venv(self) -> Path:
        return CACHE / self.key

    def ensure_venv(self) -> Path:
        """The peer's virtual environment, made (or remade, when its requirements change) on first use."""
        marker = self.venv / ".requirements"
        wanted = hashlib.sha256("\n".join(self.requirements).encode()).hexdigest()
        if not (marker.is_file() and marker.read_text() == wanted):
            print(f"installing {self.name} into {self.venv} (once)", flush=True)
            subprocess.run([self.python, "-m", "venv", "--clear", str(self.venv)], check=True)
            subprocess.run([str(self.venv / "bin" / "python"), "-m", "pip", "install", "-q",
                            *self.requirements], check=True)
            marker.write_text(wanted)
        return self.venv

    def command(self, port: int, workdir: Path) -> list[str]:
        python = str(self.venv / "bin" / "python")
        if self.key == "triton":
            return [python, str(SERVERS / "triton_server.py")]
        if self.key == "litserve":
            return [python, str(SERVERS / "litserve_server.py")]
        if self.key == "mlserver":
            model = workdir / "classifier"
            model.mkdir(parents=True, exist_ok=True)
            (workdir / "settings.json").write_text(json.dumps({
                "host": "127.0.0.1", "http_port": port, "grpc_port": port + 1, "metrics_port": port + 2,
                "parallel_workers": 2, "debug": False}))
            (model / "model-settings.json").write_text(json.dumps(
                {"name": "classifier", "implementation": "mlserver_model.Classifier"}))
            return [str(self.venv / "bin" / "mlserver"), "start", str(workdir)]
        if self.key == "bentoml":
            return [str(self.venv / "bin" / "bentoml"), "serve", "bentoml_service:Classifier",
                    "--host", "127.0.0.1", "--port", str(port), "--working-dir", str(SERVERS)]
        raise ValueError(self.key)

    def request(self, image: bytes, content_type: str) -> Request:
        if self.key == "triton":
            return v2_binary_request("/v2/models/classifier/infer", image)
        if self.key == "mlserver":
            body = json.dumps({"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES",
                                           "data": [base64.b64encode(image).decode()],
                                           "parameters": {"content_type": "base64"}}]}).encode()
            return Request("/v2/models/classifier/infer", {"Content-Type": "application/json"}, body)
        return Request("/predict", {"Content-Type": MULTIPART_TYPE}, multipart([image], content_type))

    def top1(self, body: bytes, headers) -> int:
        """The predicted class index in this peer's response."""
        if self.key == "triton":
            return v2_binary_top1(body, headers)
        if self.key == "mlserver":
            probabilities = json.loads(body)["outputs"][0]["data"]
        else:
            probabilities = json.loads(body)["probabilities"]
        return max(range(len(probabilities)), key=probabilities.__getitem__)


PEERS = (
    Peer("Triton (PyTriton)", "triton", ("nvidia-pytriton==0.7.0", "onnxruntime", "pillow", "numpy"),
         "/v2/models/classifier/ready", python="/usr/bin/python3.11"),
    # MLServer 1.7.1 starts its workers only with uvloop below 0.22.
    Peer("MLServer", "mlserver", ("mlserver==1.7.1", "uvloop<0.22", "onnxruntime", "pillow", "numpy"),
         "/v2/models/classifier/ready"),
    # LitServe reads uploads through python-multipart.
    Peer("LitServe", "litserve", ("litserve==0.2.19", "python-multipart", "onnxruntime", "pillow", "numpy"),
         "/health"),
    Peer("BentoML", "bentoml", ("bentoml==1.4.40", "onnxruntime", "pillow", "numpy"), "/readyz"),
)


class PeerServer:
    """One peer, started on a loopback port with the given model; stopped with its whole process group."""

    def __init__(self, peer: Peer, port: int, model_path: Path, color_mode: str, workdir: Path,
                 grpc_port: int = 0):
        """``grpc_port``: where a peer that speaks gRPC (Triton) listens for it; 0, the default, turns it off."""
        self.peer, self.port, self.grpc_port = peer, port, grpc_port
        env = {**os.environ, **peer.extra_env, "PEER_MODEL": str(model_path), "PEER_COLOR_MODE": color_mode,
               "PEER_PORT": str(port), "PEER_GRPC_PORT": str(grpc_port), "PYTHONPATH": str(SERVERS),
               "BENTOML_HOME": str(workdir / "bentoml"), "OMP_NUM_THREADS": "1"}
        workdir.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        self.log = open(workdir / "server.log", "w")
        self.process = subprocess.Popen(peer.command(port, workdir), cwd=SERVERS, env=env, stdout=self.log,
                                        stderr=subprocess.STDOUT, start_new_session=True)
        self.ready_seconds = self._wait_ready(started, workdir)

    def _wait_ready(self, started: float, workdir: Path, timeout: float = 180) -> float:
        while time.monotonic() - started < timeout:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.peer.name} exited; see {workdir / 'server.log'}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{self.peer.ready_path}",
                                            timeout=2) as response:
                    if response.status == 200:
                        return time.monotonic() - started
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"{self.peer.name} was not ready within {timeout} s; see {workdir / 'server.log'}")

    def post(self, request: Request) -> tuple[bytes, dict]:
        http = urllib.request.Request(f"http://127.0.0.1:{self.port}{request.path}", data=request.body,
                                      headers=request.headers)
        with urllib.request.urlopen(http, timeout=30) as response:
            return response.read(), response.headers

    def stop(self) -> None:
        try:
            os.killpg(self.process.pid, 15)
            self.process.wait(timeout=30)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(self.process.pid, 9)
            except ProcessLookupError:
                pass
            self.process.wait()
        self.log.close()
