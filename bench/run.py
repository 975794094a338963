"""Load benchmark: the service against a bare Flask app and the servers users would pick instead, on real images.

    python bench/run.py [--rounds 6] [--seconds 5] [--peer-rounds 3] [--peer-seconds 8]
                        [--no-request-path] [--no-protocols] [--no-peers]

Part 1, the request path: the service, a bare Flask app that only reads the upload (``bench/bare_app.py``) and
the service with inference replaced by a fixed answer (``bench/fixed_answer_app.py``), all under the same
gunicorn settings, on Fashion-MNIST PNGs and CIFAR-10 JPEGs. Part 2, the protocols: the same PNGs through
``/predict``, KServe V2 with binary tensor data (the PNG in a BYTES input), TF Serving (``{"b64": ...}``) and
KServe V2 over gRPC (``ModelInfer``, the PNG in a BYTES input's ``raw_input_contents``), on one service, after a
check that gRPC gives the same top-1 labels as HTTP. Part 3, the peers (``bench/peers.py``): Triton (over HTTP
and over gRPC), MLServer, LitServe and BentoML, each in its own virtual environment, serving the same int8 ONNX
model with two workers, in their own upload formats, loaded beside the service and the bare app on Fashion-MNIST
PNGs, after a check that each gives the service's top-1 label on 200 real images.

Each HTTP target is loaded with wrk (one thread, keep-alive connections, ``bench/requests.lua``), each gRPC
target with h2load (nghttp2's HTTP/2 load generator, sending real gRPC frames; one connection per h2load
process, one call in flight on each, every call's gRPC status checked against the server's own count), in
rounds, the targets back to back in alternating order; ratios are taken within each round and reported as their
median and range, since the machine's speed drifts over minutes far more than between neighbors. It prints req/s,
p50/p99, server and load generator CPU per request and errors per target, the RSS of each server's whole process
tree, time to ready, batch amortization, and the in-process cost per image of each step; everything goes to
``bench/results/latest.json``. Everything listens on 127.0.0.1 only; every load run is bounded by its seconds.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from peers import (GRPC_INFER_PATH, MULTIPART_TYPE, PEERS, PeerServer, Request, grpc_frame,  # noqa: E402
                   grpc_infer_message, grpc_top1, multipart, v2_binary_request, v2_binary_top1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def load_images(datasets_dir: Path, count: int) -> dict[str, tuple[list[bytes], str, list[int]]]:
    """Fashion-MNIST test images encoded as PNG, CIFAR-10 test images as the JPEG files they are; with labels."""
    import io

    from PIL import Image

    from training.datasets import load_fashion_mnist_idx, unpack_archive

    fashion = load_fashion_mnist_idx(datasets_dir / "fashion-mnist")
    pngs = []
    for pixels in fashion.x_test[:count]:
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="PNG")
        pngs.append(buffer.getvalue())
    cifar = unpack_archive(datasets_dir / "cifar10-jpeg.tar.gz")
    jpegs = [p.read_bytes() for p in sorted((cifar / "test").glob("*/*.jpg"))[::10][:count]]
    return {"fashion_mnist": (pngs, "image/png", fashion.y_test[:count].tolist()),
            "cifar10": (jpegs, "image/jpeg", [])}


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (peers run helper processes of their own)."""
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    tree, frontier = [pid], [pid]
    while frontier:
        frontier = [child for parent in frontier for child in parents.get(parent, [])]
        tree += frontier
    return tree


def cpu_seconds(pid: int) -> float:
    """User + system CPU time used so far by a process tree."""
    total = 0
    for member in process_tree(pid):
        try:
            fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    """Resident memory of a process tree."""
    total = 0
    for member in process_tree(pid):
        try:
            status = Path(f"/proc/{member}/status").read_text()
        except OSError:
            continue
        total += next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")), 0)
    return total / 1024


class Server:
    """The service (or a diagnostic app) under the service's own gunicorn settings."""

    def __init__(self, app: str | None, workers: int, models_dir: Path, **settings: str):
        self.port = free_port()
        env = {**os.environ, "PORT": str(self.port), "HOST": "127.0.0.1", "WEB_CONCURRENCY": str(workers),
               "MODELS_DIR": str(models_dir), "DRAIN_SECONDS": "0",
               # gRPC only where a bench asks for it, on a port of its own (its processes would share the CPUs).
               "GRPC_PORT": "0", **settings}
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        command = [sys.executable, "-m", "gunicorn", "-c", str(ROOT / "service" / "front_door" / "gunicorn.conf.py")]
        started = time.monotonic()
        self.process = subprocess.Popen(command + ([app] if app else []), cwd=ROOT, env=env,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.ready_seconds = self._wait_ready(started)
        self.grpc_port = int(env["GRPC_PORT"])
        if self.grpc_port:
            wait_grpc_ready(self.grpc_port, started)

    def _wait_ready(self, started: float) -> float:
        while time.monotonic() - started < 60:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/readyz", timeout=1) as response:
                    if response.status == 200:
                        return time.monotonic() - started
            except OSError:
                time.sleep(0.02)
        raise RuntimeError("server did not become ready within 60 s")

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=30)


def wait_grpc_ready(port: int, started: float, timeout: float = 120) -> None:
    """Until a gRPC server says ``ServerReady`` on ``port``."""
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    client = grpcclient.InferenceServerClient(f"127.0.0.1:{port}")
    try:
        while time.monotonic() - started < timeout:
            try:
                if client.is_server_ready(client_timeout=2):
                    return
            except InferenceServerException:
                pass
            time.sleep(0.1)
    finally:
        client.close()
    raise RuntimeError(f"the gRPC server on {port} was not ready within {timeout} s")


def write_requests(folder: Path, name: str, requests: list[Request]) -> Path:
    """Body files and the listing ``bench/requests.lua`` reads: one request a line, body path then headers."""
    lines = []
    for i, request in enumerate(requests):
        path = folder / f"{name}-{i}.body"
        path.write_bytes(request.body)
        lines.append("\t".join([str(path)] + [f"{k}: {v}" for k, v in request.headers.items()]))
    listing = folder / f"{name}.list"
    listing.write_text("\n".join(lines) + "\n")
    return listing


def service_requests(images: list[bytes], content_type: str, per_request: int) -> list[Request]:
    groups = [images[i:i + per_request] for i in range(0, len(images) - per_request + 1, per_request)]
    return [Request("/predict", {"Content-Type": MULTIPART_TYPE}, multipart(group, content_type)) for group in groups]


def wrk(port: int, path: str, listing: Path, seconds: float, connections: int) -> dict:
    env = {**os.environ, "BENCH_REQUESTS": str(listing), "BENCH_PATH": path}
    client_before = children_cpu_seconds()
    result = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "5s",
         "-s", str(ROOT / "bench" / "requests.lua"), f"http://127.0.0.1:{port}"],
        capture_output=True, text=True, env=env, timeout=seconds + 60)
    line = next(line for line in result.stdout.splitlines() if line.startswith("RESULT "))
    figures = json.loads(line.removeprefix("RESULT "))
    figures["rps"] = figures["requests"] / figures["seconds"]
    figures["client_cpu_us_per_request"] = (children_cpu_seconds() - client_before) / max(figures["requests"], 1) * 1e6
    return figures


def children_cpu_seconds() -> float:
    """User + system CPU time of this process's finished children (the load generators)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def ensure_h2load() -> None:
    """nghttp2's h2load, the HTTP/2 load generator the gRPC rows use (Debian's ``nghttp2-client``)."""
    if shutil.which("h2load") is None:
        subprocess.run(["apt-get", "update", "-qq"], check=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", "nghttp2-client"], check=True)


def write_grpc_bodies(folder: Path, name: str, messages: list[bytes]) -> list[Path]:
    """One file per request: the HTTP/2 request body of a unary gRPC call (the framed message)."""
    paths = []
    for i, message in enumerate(messages):
        path = folder / f"{name}-{i}.grpc"
        path.write_bytes(grpc_frame(message))
        paths.append(path)
    return paths


H2LOAD_COUNTS = ("total", "started", "done", "succeeded", "failed", "errored", "timeout")


def h2load(port: int, bodies: list[Path], seconds: float, connections: int, first: int = 0) -> dict:
    """Unary gRPC calls (``ModelInfer``) from h2load, as a gRPC client puts them on the wire: HTTP/2 POSTs with
    ``content-type: application/grpc`` and ``te: trailers``. ``connections`` connections with one call in flight
    each, as wrk's keep-alive connections (and so that a server sharing its port with SO_REUSEPORT gets them
    spread over its processes). h2load sends one body, so each connection is an h2load process of its own with
    its own image: bodies ``first``, ``first + 1``, ... Latencies come from h2load's per-request log. HTTP status
    only: a failed call is still a 200, so its gRPC status must be checked elsewhere (``grpc_verified``)."""
    logs = [Path(tempfile.mkstemp(prefix="h2load-", suffix=".log")[1]) for _ in range(connections)]
    client_before = children_cpu_seconds()
    processes = [subprocess.Popen(
        ["h2load", "-c1", "-m1", "-t1", "-D", str(seconds), "-d", str(bodies[(first + i) % len(bodies)]),
         "-H", "content-type: application/grpc", "-H", "te: trailers", "--log-file", str(log),
         f"http://127.0.0.1:{port}{GRPC_INFER_PATH}"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i, log in enumerate(logs)]
    outputs = [process.communicate(timeout=seconds + 60)[0] for process in processes]
    client_cpu = children_cpu_seconds() - client_before
    counts = dict.fromkeys(H2LOAD_COUNTS, 0)
    rps = 0.0
    for output in outputs:
        lines = output.splitlines()
        summary = next((line for line in lines if line.startswith("requests: ")), None)
        if summary is None:
            raise RuntimeError(f"h2load failed:\n{output}")
        for part, key in zip(summary.removeprefix("requests: ").split(", "), H2LOAD_COUNTS):
            counts[key] += int(part.split()[0])
        finished = next(line for line in lines if line.startswith("finished in "))
        rps += float(finished.split(", ")[1].split()[0])  # done / duration
    latencies, statuses = [], {}
    for log in logs:
        for row in log.read_text().splitlines():
            fields = row.split("\t")
            statuses[fields[1]] = statuses.get(fields[1], 0) + 1
            latencies.append(int(fields[2]))
        log.unlink()
    ok = statuses.get("200", 0)
    return {"requests": ok, "rps": rps, "seconds": seconds,
            "p50_ms": float(np.percentile(latencies, 50)) / 1e3 if latencies else 0.0,
            "p99_ms": float(np.percentile(latencies, 99)) / 1e3 if latencies else 0.0,
            "errors": counts["failed"] + counts["errored"] + counts["timeout"],  # failed: not a 2xx
            "h2load": counts, "client_cpu_us_per_request": client_cpu / max(ok, 1) * 1e6}


def grpc_verified(load, count_calls, label: str):
    """``load`` (an h2load run), with each call's gRPC status checked: ``count_calls()`` reads the server's own
    count of (succeeded, failed) calls, before and after. None may have failed, and the server must have served
    every call h2load got an answer to, and at most those it started: the calls in flight when its time ran out
    may or may not have left it."""
    def settled() -> tuple[int, int]:  # calls still finishing (or counted late) are in the count
        counted = count_calls()
        for _ in range(50):
            time.sleep(0.1)
            counted, previous = count_calls(), counted
            if counted == previous:
                break
        return counted

    def run(seconds: float) -> dict:
        ok_before, failed_before = settled()
        figures = load(seconds)
        ok, failed = (after - before for after, before in zip(settled(), (ok_before, failed_before)))
        figures["grpc_ok"], figures["grpc_failed"] = ok, failed
        figures["errors"] += failed
        done, started = figures["h2load"]["done"], figures["h2load"]["started"]
        if failed or not done <= ok <= started:
            print(f"{label}: h2load got {done} answers of {started} calls started, the server counted {ok} "
                  f"succeeded and {failed} failed", flush=True)
            figures["errors"] += max(done - ok, ok - started, 0)
        return figures
    return run


def service_grpc_calls(port: int) -> tuple[int, int]:
    """ModelInfer calls the service counted (succeeded, failed), from its /metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    ok = failed = 0
    for family in text_string_to_metric_families(text):
        if family.name == "classifier_http_requests":
            for sample in family.samples:
                labels = sample.labels
                if (sample.name.endswith("_total") and labels.get("protocol") == "kserve_v2_grpc"
                        and labels.get("endpoint") == "ModelInfer"):
                    if labels["status"] == "OK":
                        ok += int(sample.value)
                    else:
                        failed += int(sample.value)
    return ok, failed


def triton_grpc_calls(port: int, model: str = "classifier") -> tuple[int, int]:
    """Inference requests Triton counted (succeeded, failed), from its statistics extension."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/models/{model}/stats", timeout=10) as response:
        stats = orjson.loads(response.read())["model_stats"][0]["inference_stats"]
    return int(stats["success"]["count"]), int(stats["fail"]["count"])


def grpc_top1s(port: int, model: str, messages: list[bytes], images: list[bytes], shape: list[int]) -> list[int]:
    """Top-1 of each call, twice: the very messages h2load sends, and tritonclient's own ModelInfer. Raises if
    the two disagree."""
    import grpc
    import tritonclient.grpc as grpcclient

    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_unary(GRPC_INFER_PATH)  # bytes in, bytes out
        raw = [grpc_top1(call(message, timeout=30)) for message in messages]
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{port}")
    ours = []
    for image in images:
        tensor = grpcclient.InferInput("image", shape, "BYTES")
        tensor.set_data_from_numpy(np.array([image], dtype=np.object_).reshape(shape))
        probabilities = client.infer(model, [tensor]).as_numpy("probabilities")
        ours.append(int(probabilities.reshape(-1).argmax()))
    client.close()
    if raw != ours:
        raise RuntimeError("the benchmark's gRPC messages and tritonclient's get different answers")
    return raw


def load_round(targets: dict, order: list[str], path_of, listing_of, seconds: float, connections: int,
               runs: dict, label: str, round_number: int, loaders: dict | None = None) -> None:
    """Load each target in ``order`` for ``seconds``, back to back, and record its figures in ``runs``: with wrk,
    or with ``loaders[target](seconds)`` for a target there (the gRPC rows)."""
    for target in order:
        pid = targets[target].process.pid
        cpu_before = cpu_seconds(pid)
        if loaders and target in loaders:
            figures = loaders[target](seconds)
        else:
            figures = wrk(targets[target].port, path_of(target), listing_of(target), seconds, connections)
        figures["server_cpu_us_per_request"] = (cpu_seconds(pid) - cpu_before) / max(figures["requests"], 1) * 1e6
        runs.setdefault((target, label), []).append(figures)
        print(f"round {round_number + 1} {target:>9} {label:>13}: {figures['rps']:8.0f} req/s  "
              f"p50 {figures['p50_ms']:.2f} ms  p99 {figures['p99_ms']:.2f} ms  "
              f"server CPU {figures['server_cpu_us_per_request']:.0f} us/request  "
              f"client CPU {figures['client_cpu_us_per_request']:.0f} us/request  "
              f"errors {figures['errors']}", flush=True)


def served_step_means(port: int) -> dict[str, dict[str, float]]:
    """Mean decode and inference microseconds per request so far, per model, from the service's own /metrics:
    what each step costs inside a loaded server, beside the in-process figures."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    totals: dict[tuple[str, str, str], float] = {}
    for family in text_string_to_metric_families(text):
        if family.name in ("classifier_decode_duration_seconds", "classifier_inference_duration_seconds"):
            step = family.name.split("_")[1]
            for sample in family.samples:
                if sample.name.endswith(("_sum", "_count")):
                    key = (sample.labels["model"], step, sample.name.rsplit("_", 1)[1])
                    totals[key] = totals.get(key, 0.0) + sample.value
    means: dict[str, dict[str, float]] = {}
    for (model, step, kind), value in totals.items():
        if kind == "sum" and totals.get((model, step, "count")):
            means.setdefault(model, {})[f"{step}_us"] = value / totals[(model, step, "count")] * 1e6
    return means


def in_process_costs(images: dict, models_dir: Path, repeat: int = 300) -> dict:
    """Microseconds per image for each step of a single-image /predict, measured inside one process."""
    import io

    from flask import Request

    from service.observability import metrics
    from service.inference.images import (DecodeLimits, decode_image, decode_pixels, inspect_image, normalize_pixels,
                                          oriented_in_mode, plan_decode)
    from service.observability.model_monitor import FLUSH_EVERY_IMAGES, ModelMonitor
    from service.inference.registry import ModelRegistry
    from contract.ids import input_id
    from service.inference.classify import Classified
    from service.protocols.native.codec import prediction_body
    from service.settings import Settings
    from service.inference.uploads import read_uploads

    settings = Settings.from_env()  # MODEL_RUNTIME and the limits, as the servers read them
    registry = ModelRegistry(models_dir, settings.runtime)
    registry.refresh()
    costs = {}
    for name, (blobs, kind, _) in images.items():
        model = registry.get(name)
        spec = model.input_spec
        sample = blobs[:repeat]

        def timed(function, items):
            for item in items:  # warm-up: first calls create metric files, fill caches
                function(item)
            started = time.perf_counter()
            out = [function(item) for item in items]
            return (time.perf_counter() - started) / len(items) * 1e6, out

        def request_for(data: bytes) -> Request:
            body = multipart([data], kind)
            return Request({"REQUEST_METHOD": "POST", "wsgi.input": io.BytesIO(body),
                            "CONTENT_TYPE": MULTIPART_TYPE,
                            "CONTENT_LENGTH": str(len(body))})

        parse_us, uploads = timed(lambda b: read_uploads(request_for(b), settings.max_images_per_request,
                                                          settings.max_upload_bytes)[0], sample)
        werkzeug_us, _ = timed(lambda b: request_for(b).files["image"].read(), sample)
        request_us, _ = timed(request_for, sample)

        limits = DecodeLimits.from_settings(settings)

        def through_pillow(data: bytes) -> np.ndarray:
            return np.asarray(oriented_in_mode(decode_image(data, settings.max_image_pixels), spec))

        def decode(data: bytes) -> np.ndarray:  # the header read, the cost checked, the pixels decoded
            return decode_pixels(plan_decode(data, spec, limits), spec)

        decode_us, decoded = timed(decode, uploads)
        pillow_us, _ = timed(through_pillow, uploads)
        normalize_us, arrays = timed(lambda pixels: normalize_pixels(pixels, spec), decoded)
        infer_us, outputs = timed(lambda a: model.runtime.predict(a[None]), arrays)
        id_us, ids = timed(input_id, arrays)
        answers = [Classified(a[None], p, [i]) for a, p, i in zip(arrays, outputs, ids)]
        json_us, _ = timed(lambda c: orjson.dumps(prediction_body(model, c, 5)), answers)
        stdlib_json_us, _ = timed(lambda c: json.dumps(prediction_body(model, c, 5)).encode(), answers)

        def record(p):
            metrics.series(metrics.DECODE_DURATION, name).observe(0.0001)
            metrics.series(metrics.INFERENCE_DURATION, name).observe(0.0001)
            metrics.series(metrics.IMAGES_PER_REQUEST, name).observe(1)
            metrics.series(metrics.PREDICTIONS, name, model.classes[int(p.argmax())]).inc()
            metrics.series(metrics.REQUESTS, "native", "/predict", name, "200").inc()
            metrics.series(metrics.REQUEST_DURATION, "/predict").observe(0.001)

        metrics_us, _ = timed(record, outputs)
        monitor = ModelMonitor()
        facts = [inspect_image(data, spec, limits)[1] for data in sample]
        observed = list(zip(arrays, outputs, facts)) * (4 * FLUSH_EVERY_IMAGES // len(arrays) + 1)

        def observe_all(items) -> None:  # with the flushes they cause, and a last one for the remainder
            for pixels, probabilities, upload in items:
                monitor.observe(model, pixels[np.newaxis], probabilities, [int(probabilities.argmax())], [upload])
            monitor.flush()

        observe_all(observed)  # warm-up
        started = time.perf_counter()
        observe_all(observed)
        monitoring_us = (time.perf_counter() - started) / len(observed) * 1e6
        batch = np.stack(arrays[:32])
        started = time.perf_counter()
        for _ in range(20):
            model.runtime.predict(batch)
        batch_infer_us = (time.perf_counter() - started) / 20 / 32 * 1e6
        decoder_us = bare_decoder_us(sample, spec)
        weight_bytes = served_weight_bytes(served_model_file(models_dir, name))
        costs[name] = {"runtime": model.runtime.kind,
                       "parse_us": parse_us - request_us, "parse_werkzeug_us": werkzeug_us - request_us,
                       "decode_us": decode_us, "decode_pillow_us": pillow_us, "normalize_us": normalize_us,
                       "inference_us": infer_us, "json_us": json_us, "json_stdlib_us": stdlib_json_us,
                       "metrics_us": metrics_us, "monitoring_us": monitoring_us, "prediction_id_us": id_us,
                       "inference_us_per_image_in_batch_of_32": batch_infer_us,
                       "decoder_alone_us": decoder_us, "weight_bytes": weight_bytes}
    return costs


def bare_decoder_us(blobs: list[bytes], spec, repeat: int = 20) -> float:
    """The decoder library alone (libspng for PNG, libjpeg-turbo for JPEG) on the same files, header parsed
    beforehand, in a tight loop: the floor of the decode step."""
    from service.inference import fast_decode

    height, width = spec.shape[:2]
    calls = []
    for data in blobs:
        png = fast_decode.png_header(data)
        if png is not None:
            calls.append(lambda data=data, png=png: fast_decode.decode_png(data, png))
        else:
            jpeg = fast_decode.jpeg_header(data)
            mode = "L" if len(spec.shape) == 2 else "RGB"
            calls.append(lambda data=data, jpeg=jpeg: fast_decode.decode_jpeg(data, jpeg, mode, width, height))
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        for call in calls:
            call()
        best = min(best, (time.perf_counter() - started) / len(calls) * 1e6)
    return best


def served_weight_bytes(model_file: Path) -> int:
    """Bytes of the served graph's weights (its initializers): what a single image's inference must read."""
    import onnx

    return sum(len(t.raw_data) or t.ByteSize() for t in onnx.load(str(model_file)).graph.initializer)


def read_bandwidth_gbps(megabytes: int = 256, repeat: int = 5) -> float:
    """How fast one core reads memory here: a sum over an array far larger than the caches, best of a few."""
    data = np.ones(megabytes * 2**20 // 8, np.int64)
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        data.sum()
        best = min(best, time.perf_counter() - started)
    return data.nbytes / best / 1e9


def floors_table(summary: dict) -> dict:
    """Each step's cost under load beside its floor (docs/performance.md#floors), per model, in microseconds of
    one single-image request."""
    def cpu(row: dict) -> float:
        return row["server_cpu_us_per_request"]

    bandwidth = read_bandwidth_gbps()
    table = {"read_bandwidth_gb_per_s": bandwidth, "models": {}}
    bare_cpu = {name: cpu(rows["bare"]) for name, rows in summary["models"].items()}
    for name, steps in summary["in_process_us_per_image"].items():
        served = summary["served_us_per_request"].get(name, {})
        rows = summary["models"][name]
        table["models"][name] = {
            "inference": {"under_load": served.get("inference_us"), "in_process": steps["inference_us"],
                          "floor_memory": steps["weight_bytes"] / (bandwidth * 1e3),
                          "floor_batch_of_32": steps["inference_us_per_image_in_batch_of_32"]},
            "decode_and_normalize": {"under_load": served.get("decode_us"),
                                     "in_process": steps["decode_us"] + steps["normalize_us"],
                                     "floor": steps["decoder_alone_us"]},
            "http": {"under_load": cpu(rows["fixed"]), "floor": bare_cpu[name]},
            "own_logic": {"in_process": steps["metrics_us"] + steps["monitoring_us"] + steps["json_us"]
                          + steps["prediction_id_us"],
                          "under_load": cpu(rows["service"]) - cpu(rows["unmonitored"])},
        }
    return table


def paired_ratio(runs: dict, label: str, target: str, figure: str, baseline: str = "bare") -> dict[str, float]:
    """``target``'s figure over ``baseline``'s, per round (the two ran back to back): median, min and max."""
    ratios = [a[figure] / b[figure] for a, b in zip(runs[(target, label)], runs[(baseline, label)])]
    return {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios)}


def format_ratio(ratio: dict[str, float]) -> str:
    return f"{ratio['median']:.2f}x ({ratio['min']:.2f}-{ratio['max']:.2f})"


def medians(series: list[dict]) -> dict:
    return {"rps": statistics.median(r["rps"] for r in series),
            "p50_ms": statistics.median(r["p50_ms"] for r in series),
            "p99_ms": statistics.median(r["p99_ms"] for r in series),
            "server_cpu_us_per_request": statistics.median(r["server_cpu_us_per_request"] for r in series),
            "client_cpu_us_per_request": statistics.median(r.get("client_cpu_us_per_request", 0) for r in series),
            "errors": sum(r["errors"] for r in series)}


def print_table(title: str, rows: dict[str, dict], extra: dict[str, dict] | None = None) -> None:
    print(f"\n{title}\n{'target':>18} {'req/s':>8} {'p50 ms':>7} {'p99 ms':>7} {'CPU us/req':>10} "
          f"{'client CPU':>10} {'errors':>6}" + ("  RSS MB" if extra else ""))
    for target, row in rows.items():
        print(f"{target:>18} {row['rps']:8.0f} {row['p50_ms']:7.2f} {row['p99_ms']:7.2f} "
              f"{row['server_cpu_us_per_request']:10.0f} {row.get('client_cpu_us_per_request', 0):10.0f} "
              f"{row['errors']:6d}"
              + (f"  {extra[target]['rss_mb']:6.0f}" if extra else ""))


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def served_model_file(models_dir: Path, name: str) -> Path:
    from service.settings import Settings

    from contract.layout import current_version, version_dir
    from contract.metadata import read_metadata

    folder = version_dir(models_dir, name, current_version(models_dir, name))
    kind = "onnx_int8" if Settings.from_env().runtime in ("auto", "onnx_int8") else "onnx"
    return folder / read_metadata(folder).runtimes[kind].file


def models_on_trial(models_dir: Path, workdir: Path) -> Path:
    """A copy of the models folder with each model's other published version on trial beside its current one."""
    from contract.layout import current_version, list_versions, point_candidate, published_models

    folder = workdir / "models-on-trial"
    shutil.copytree(models_dir, folder, dirs_exist_ok=True)
    for name in published_models(folder):
        others = [v for v in list_versions(folder, name) if v != current_version(folder, name)]
        if others:
            point_candidate(folder, name, others[-1])
    return folder


def request_path_part(args, images, workdir: Path) -> tuple[dict, dict]:
    """Part 1: the service, the service without input monitoring, the bare app and the fixed-answer app on both
    models; figures and summary."""
    singles = {name: write_requests(workdir, f"{name}-1", service_requests(blobs, kind, 1))
               for name, (blobs, kind, _) in images.items()}
    batches = {name: write_requests(workdir, f"{name}-32", service_requests(blobs, kind, 32))
               for name, (blobs, kind, _) in images.items()}
    servers = {"service": Server(None, args.workers, args.models_dir),
               "unmonitored": Server(None, args.workers, args.models_dir, INPUT_MONITORING="off"),
               # Each model with a version on trial, every request shadowed: what a trial costs the caller.
               "shadowed": Server(None, args.workers, models_on_trial(args.models_dir, workdir)),
               "bare": Server("bench.bare_app:create_app()", args.workers, args.models_dir),
               # The same bare app under gunicorn's own sync worker: the fastest Flask + gunicorn go here, so
               # the service's ratio to it shows what the front door's worker costs.
               "bare_sync": Server("bench.bare_app:create_app()", args.workers, args.models_dir,
                                   WORKER_CLASS="sync"),
               "fixed": Server("bench.fixed_answer_app:create_app()", args.workers, args.models_dir)}
    runs: dict[tuple[str, str], list[dict]] = {}
    try:
        for name in images:  # warm-up, not recorded
            for server in servers.values():
                wrk(server.port, f"/predict?model={name}", singles[name], 2, args.connections)
        for round_number in range(args.rounds):
            order = list(servers) if round_number % 2 == 0 else list(reversed(servers))
            for name in images:
                load_round(servers, order, lambda _: f"/predict?model={name}", lambda _: singles[name],
                           args.seconds, args.connections, runs, name, round_number)
        served_steps = served_step_means(servers["service"].port)  # single-image requests only, so far
        batch_runs = {name: wrk(servers["service"].port, f"/predict?model={name}", batches[name], args.seconds,
                                args.connections) for name in images}
        memory = {target: rss_mb(server.process.pid) for target, server in servers.items()}
        ready = {target: server.ready_seconds for target, server in servers.items()}
    finally:
        for server in servers.values():
            server.stop()

    summary = {"rss_mb": memory, "ready_seconds": ready, "models": {}, "served_us_per_request": served_steps}
    for name in images:
        rows = {target: medians(runs[(target, name)]) for target in servers}
        print_table(f"{name}, medians of {args.rounds} rounds of {args.seconds} s", rows)
        batch = batch_runs[name]
        summary["models"][name] = rows | {
            "throughput_ratio": paired_ratio(runs, name, "service", "rps"),
            "throughput_ratio_fixed_answer": paired_ratio(runs, name, "fixed", "rps"),
            "throughput_ratio_bare_sync": paired_ratio(runs, name, "service", "rps", baseline="bare_sync"),
            "p99_ratio_bare_sync": paired_ratio(runs, name, "service", "p99_ms", baseline="bare_sync"),
            # What input statistics, confidence and drift tracking cost: the service against itself without them.
            "monitoring_throughput_ratio": paired_ratio(runs, name, "service", "rps", baseline="unmonitored"),
            # What shadowing a candidate on trial costs (docs/training.md#safe-rollout...): p99 within 1.2x.
            "shadow_throughput_ratio": paired_ratio(runs, name, "shadowed", "rps", baseline="service"),
            "shadow_p99_ratio": paired_ratio(runs, name, "shadowed", "p99_ms", baseline="service"),
            "p99_ratio": paired_ratio(runs, name, "service", "p99_ms"),
            "batch32": {"requests_per_s": batch["rps"], "images_per_s": batch["rps"] * 32,
                        "per_image_cost_vs_single": rows["service"]["rps"] / (batch["rps"] * 32),
                        "errors": batch["errors"]},
        }
    print("\nratios to the bare app within each round: median (range over the rounds)")
    for name, figures in summary["models"].items():
        print(f"  {name:>13}: service throughput {format_ratio(figures['throughput_ratio'])}  "
              f"p99 {format_ratio(figures['p99_ratio'])}  fixed-answer throughput "
              f"{format_ratio(figures['throughput_ratio_fixed_answer'])}\n{'':>17}to the bare app under gunicorn's "
              f"sync worker: throughput {format_ratio(figures['throughput_ratio_bare_sync'])}  p99 "
              f"{format_ratio(figures['p99_ratio_bare_sync'])}\n{'':>17}monitoring on vs off: throughput "
              f"{format_ratio(figures['monitoring_throughput_ratio'])}\n{'':>17}a candidate shadowed vs none: "
              f"throughput {format_ratio(figures['shadow_throughput_ratio'])}  p99 "
              f"{format_ratio(figures['shadow_p99_ratio'])}\n{'':>17}batch of 32: "
              f"{figures['batch32']['images_per_s']:.0f} images/s, per-image cost "
              f"{figures['batch32']['per_image_cost_vs_single']:.3f}x a single-image request")
    print(f"RSS, master + {args.workers} workers: service {memory['service']:.0f} MB, bare {memory['bare']:.0f} MB")
    print(f"start to ready: service {ready['service']:.2f} s, bare {ready['bare']:.2f} s")
    return summary


def tf_serving_request(model: str, image: bytes) -> Request:
    body = json.dumps({"instances": [{"b64": base64.b64encode(image).decode()}]}).encode()
    return Request(f"/v1/models/{model}:predict", {"Content-Type": "application/json"}, body)


def protocols_part(args, images, workdir: Path) -> dict:
    """Part 2: the same images through each protocol of one service: /predict, KServe V2 binary, TF Serving over
    HTTP (wrk), and KServe V2 over gRPC (h2load: ``ModelInfer``, the PNG in a BYTES input)."""
    name = "fashion_mnist"
    blobs, kind, _ = images[name]
    ensure_h2load()
    server = Server(None, args.workers, args.models_dir, GRPC_PORT=str(free_port()))
    requests = {"native /predict": service_requests(blobs, kind, 1),
                "KServe V2 binary": [v2_binary_request(f"/v2/models/{name}/infer", image) for image in blobs],
                "TF Serving b64": [tf_serving_request(name, image) for image in blobs]}
    listings = {label: write_requests(workdir, f"protocol-{i}", batch)
                for i, (label, batch) in enumerate(requests.items())}
    paths = {label: batch[0].path + (f"?model={name}" if label.startswith("native") else "")
             for label, batch in requests.items()}
    grpc_label = "KServe V2 gRPC"
    messages = [grpc_infer_message(name, image, [1]) for image in blobs]
    bodies = write_grpc_bodies(workdir, "protocol-grpc", messages)
    targets = dict.fromkeys([*requests, grpc_label], server)
    rounds = iter(range(10**6))  # each run's connections start at the next images
    loaders = {grpc_label: grpc_verified(
        lambda seconds: h2load(server.grpc_port, bodies, seconds, args.connections,
                               next(rounds) * args.connections),
        lambda: service_grpc_calls(server.port), grpc_label)}
    runs: dict[tuple[str, str], list[dict]] = {}
    try:
        http_top1 = [v2_binary_top1(*post(server.port, request)) for request in requests["KServe V2 binary"]]
        agreement = sum(a == b for a, b in zip(grpc_top1s(server.grpc_port, name, messages, blobs, [1]),
                                               http_top1)) / len(blobs)
        print(f"{grpc_label}: same top-1 label as KServe V2 binary on {agreement:.1%} of {len(blobs)} images",
              flush=True)
        if agreement < 1:
            raise RuntimeError("gRPC and HTTP answers differ; their figures would not compare")
        for label in targets:  # warm-up, not recorded
            if label in loaders:
                loaders[label](2)
            else:
                wrk(server.port, paths[label], listings[label], 2, args.connections)
        for round_number in range(args.rounds):
            order = list(targets) if round_number % 2 == 0 else list(reversed(targets))
            load_round(targets, order, paths.__getitem__, listings.__getitem__, args.seconds, args.connections,
                       runs, name, round_number, loaders)
    finally:
        server.stop()
    rows = {label: medians(runs[(label, name)]) for label in targets}
    print_table(f"protocols, {name} PNGs, one service, medians of {args.rounds} rounds of {args.seconds} s "
                f"({args.connections} connections; gRPC: h2load, one call in flight per connection)", rows)
    summary = {"rows": rows, "grpc_label_agreement": agreement}
    for label in list(targets)[1:]:
        summary[f"{label} / native"] = paired_ratio(runs, name, label, "rps", baseline="native /predict")
        print(f"{label} / native /predict req/s: {format_ratio(summary[f'{label} / native'])}")
    for figure in ("rps", "p99_ms", "server_cpu_us_per_request"):
        key = f"{grpc_label} / KServe V2 binary" + ("" if figure == "rps" else f" {figure}")
        summary[key] = paired_ratio(runs, name, grpc_label, figure, baseline="KServe V2 binary")
    print(f"{grpc_label} / KServe V2 binary (HTTP): req/s {format_ratio(summary[f'{grpc_label} / KServe V2 binary'])}"
          f"  p99 {format_ratio(summary[f'{grpc_label} / KServe V2 binary p99_ms'])}  CPU per request "
          f"{format_ratio(summary[f'{grpc_label} / KServe V2 binary server_cpu_us_per_request'])}")
    return summary


def post(port: int, request: Request) -> tuple[bytes, dict]:
    http = urllib.request.Request(f"http://127.0.0.1:{port}{request.path}", data=request.body,
                                  headers=request.headers)
    with urllib.request.urlopen(http, timeout=30) as response:
        return response.read(), response.headers


def peers_part(args, images, workdir: Path) -> dict:
    """Part 3: the peers beside the service and the bare app, on Fashion-MNIST PNGs; labels checked first."""
    name = "fashion_mnist"
    blobs, kind, _ = images[name]
    check_images = images["check"]
    for peer in PEERS:
        peer.ensure_venv()
    ensure_h2load()
    model_file = served_model_file(args.models_dir, name)
    targets: dict[str, object] = {"service": Server(None, args.workers, args.models_dir),
                                  "bare": Server("bench.bare_app:create_app()", args.workers, args.models_dir)}
    listings = {"service": write_requests(workdir, "peer-service", service_requests(blobs, kind, 1)),
                "bare": write_requests(workdir, "peer-bare", service_requests(blobs, kind, 1))}
    paths = {"service": f"/predict?model={name}", "bare": "/predict"}
    agreement = {}
    loaders = {}
    try:
        expected = [max(range(10), key=r["probabilities"].__getitem__) for r in _service_predictions(
            targets["service"].port, check_images)]
        for peer in PEERS:
            grpc_port = free_port() if peer.key == "triton" else 0
            server = PeerServer(peer, free_port(), model_file, "L", workdir / peer.key, grpc_port)
            targets[peer.key] = server
            got = [peer.top1(*server.post(peer.request(image, kind))) for image in check_images]
            agreement[peer.key] = sum(a == b for a, b in zip(got, expected)) / len(expected)
            print(f"{peer.name}: ready in {server.ready_seconds:.1f} s, same top-1 label as the service on "
                  f"{agreement[peer.key]:.1%} of {len(expected)} images", flush=True)
            if agreement[peer.key] < 1:
                raise RuntimeError(f"{peer.name} disagrees with the service; its figures would not compare")
            requests = [peer.request(image, kind) for image in blobs]
            listings[peer.key] = write_requests(workdir, f"peer-{peer.key}", requests)
            paths[peer.key] = requests[0].path
            if grpc_port:  # Triton's gRPC side: a row of its own, the same server
                label = "Triton gRPC"
                wait_grpc_ready(grpc_port, time.monotonic())
                messages = [grpc_infer_message("classifier", image, [1, 1]) for image in check_images]
                got = grpc_top1s(grpc_port, "classifier", messages, check_images, [1, 1])
                agreement[label] = sum(a == b for a, b in zip(got, expected)) / len(expected)
                print(f"{label}: same top-1 label as the service on {agreement[label]:.1%} of {len(expected)} "
                      f"images", flush=True)
                if agreement[label] < 1:
                    raise RuntimeError(f"{label} disagrees with the service; its figures would not compare")
                bodies = write_grpc_bodies(workdir, "peer-triton-grpc",
                                           [grpc_infer_message("classifier", image, [1, 1]) for image in blobs])
                rounds = iter(range(10**6))
                loaders[label] = grpc_verified(
                    lambda seconds, port=grpc_port, bodies=bodies, rounds=rounds: h2load(
                        port, bodies, seconds, args.connections, next(rounds) * args.connections),
                    lambda port=server.port: triton_grpc_calls(port), label)
                targets[label] = server
        for target in targets:  # warm-up, not recorded
            if target in loaders:
                loaders[target](2)
            else:
                wrk(targets[target].port, paths[target], listings[target], 2, args.connections)
        runs: dict[tuple[str, str], list[dict]] = {}
        for round_number in range(args.peer_rounds):
            order = list(targets) if round_number % 2 == 0 else list(reversed(targets))
            load_round(targets, order, paths.__getitem__, listings.__getitem__, args.peer_seconds,
                       args.connections, runs, name, round_number, loaders)
        memory = {target: rss_mb(server.process.pid) for target, server in targets.items()}
    finally:
        for server in {id(server): server for server in targets.values()}.values():  # Triton's rows share one
            server.stop()

    rows = {target: medians(runs[(target, name)]) | {"rss_mb": memory[target]} for target in targets}
    for target, row in rows.items():
        row["vs_service"] = paired_ratio(runs, name, target, "rps", baseline="service")
    print_table(f"peers, {name} PNGs, medians of {args.peer_rounds} rounds of {args.peer_seconds} s", rows, rows)
    best_peer = max((peer.key for peer in PEERS), key=lambda key: rows[key]["rps"])
    summary = {"rows": rows, "label_agreement": agreement, "best_peer": best_peer,
               "service_vs_best_peer": paired_ratio(runs, name, "service", "rps", baseline=best_peer),
               "service_vs_bare": paired_ratio(runs, name, "service", "rps"),
               "p99_service_vs_bare": paired_ratio(runs, name, "service", "p99_ms")}
    print(f"service / best peer ({best_peer}) req/s: {format_ratio(summary['service_vs_best_peer'])}   "
          f"service / bare: {format_ratio(summary['service_vs_bare'])}   "
          f"p99 service / bare: {format_ratio(summary['p99_service_vs_bare'])}")
    return summary


def _service_predictions(port: int, images: list[bytes]) -> list[dict]:
    results = []
    for image in images:
        http = urllib.request.Request(f"http://127.0.0.1:{port}/predict?model=fashion_mnist", data=image,
                                      headers={"Content-Type": "image/png"})
        with urllib.request.urlopen(http, timeout=30) as response:
            results += orjson.loads(response.read())["predictions"]
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--peer-rounds", type=int, default=3)
    parser.add_argument("--peer-seconds", type=int, default=8)
    parser.add_argument("--no-peers", action="store_true", help="skip part 3")
    parser.add_argument("--no-request-path", action="store_true", help="skip part 1")
    parser.add_argument("--no-protocols", action="store_true", help="skip part 2")
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--models-dir", type=Path, default=ROOT / "models")
    parser.add_argument("--datasets-dir", type=Path,
                        default=Path(os.environ.get("DATASETS_DIR", ROOT.parent / "shared" / "datasets")))
    parser.add_argument("--output", type=Path, default=ROOT / "bench" / "results" / "latest.json")
    args = parser.parse_args()
    # The in-process step costs use the metric store the servers use: one file per process, shared by workers.
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="bench-metrics-")

    images = load_images(args.datasets_dir, 200)
    images["check"] = images["fashion_mnist"][0]  # 200 images for the peers' label check
    images = {"fashion_mnist": tuple(v[:64] if isinstance(v, list) else v for v in images["fashion_mnist"]),
              "cifar10": tuple(v[:64] if isinstance(v, list) else v for v in images["cifar10"]),
              "check": images["check"]}
    workdir = Path(tempfile.mkdtemp(prefix="bench-"))
    summary = {"machine": {"cores": os.cpu_count(), "cpu": cpu_model()},
               "settings": {k: str(v) for k, v in vars(args).items()}}
    load_images_for_path = {k: v for k, v in images.items() if k != "check"}
    if not args.no_request_path:
        summary |= request_path_part(args, load_images_for_path, workdir)
        summary["in_process_us_per_image"] = in_process_costs(load_images_for_path, args.models_dir)
        print("in-process cost per image (microseconds); for comparison, parse_werkzeug is the bare app's "
              "request.files, decode_pillow and json_stdlib what the direct decoders and orjson replace:")
        for name, steps in summary["in_process_us_per_image"].items():
            print(f"  {name:>13} ({steps['runtime']}): " + "  ".join(
                f"{k.removesuffix('_us')} {v:.0f}" for k, v in steps.items() if k != "runtime"))
        print("the same steps inside the loaded service, mean microseconds per single-image request "
              "(from its own /metrics; decode includes normalize):")
        for name, steps in summary["served_us_per_request"].items():
            print(f"  {name:>13}: " + "  ".join(f"{k.removesuffix('_us')} {v:.0f}" for k, v in sorted(steps.items())))
        summary["floors"] = floors = floors_table(summary)
        print(f"floors (docs/performance.md#floors), one core reads memory at "
              f"{floors['read_bandwidth_gb_per_s']:.1f} GB/s here; microseconds per single-image request:")
        for name, steps in floors["models"].items():
            inference, decode = steps["inference"], steps["decode_and_normalize"]
            print(f"  {name:>13}: inference under load {inference['under_load'] or 0:.0f}, in process "
                  f"{inference['in_process']:.0f}, floor {inference['floor_memory']:.0f} (weights from memory) / "
                  f"{inference['floor_batch_of_32']:.0f} (batch of 32)\n{'':>17}decode + normalize under load "
                  f"{decode['under_load'] or 0:.0f}, in process {decode['in_process']:.0f}, decoder alone "
                  f"{decode['floor']:.0f}\n{'':>17}HTTP: CPU per request of the service without inference "
                  f"{steps['http']['under_load']:.0f}, of the bare app {steps['http']['floor']:.0f}\n{'':>17}own "
                  f"logic (metrics, monitoring, JSON, id) in process {steps['own_logic']['in_process']:.0f}; "
                  f"monitoring on - off under load {steps['own_logic']['under_load']:.0f} CPU")
    if not args.no_protocols:
        summary["protocols"] = protocols_part(args, load_images_for_path, workdir)
    if not args.no_peers:
        summary["peers"] = peers_part(args, images, workdir)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(summary, indent=2, default=str))
    print(f"\nwritten to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
