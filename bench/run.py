"""Load benchmark: the service against a bare Flask endpoint, same gunicorn settings, real images, wrk.

    python bench/run.py [--rounds 6] [--seconds 5] [--connections 8] [--workers 2]

Prints req/s, p50/p99 latency and errors per target, the RSS of each server's process tree, time to ready,
the service/bare ratios, batch amortization, and the in-process cost per image of each step.
A third target, the service with inference replaced by a fixed answer (``bench/fixed_answer_app.py``), splits
the gap between the service and the bare app into the model's share and the rest of the request path.
Ratios are taken within each round, the targets loaded back to back in alternating order, and their median
is reported with their range: the machine's speed drifts over minutes, far more than between neighbors.
Everything listens on 127.0.0.1 only; every load run is bounded by --seconds.
"""

from __future__ import annotations

import argparse
import json
import os
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
BOUNDARY = "benchboundary7e3c1f"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def multipart(images: list[bytes], content_type: str) -> bytes:
    parts = [(f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"{i}\"\r\n"
              f"Content-Type: {content_type}\r\n\r\n").encode() + data + b"\r\n" for i, data in enumerate(images)]
    return b"".join(parts) + f"--{BOUNDARY}--\r\n".encode()


def load_images(datasets_dir: Path, count: int) -> dict[str, tuple[list[bytes], str]]:
    """Fashion-MNIST test images encoded as PNG, CIFAR-10 test images as the JPEG files they are."""
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
    return {"fashion_mnist": (pngs, "image/png"), "cifar10": (jpegs, "image/jpeg")}


class Server:
    def __init__(self, app: str | None, workers: int, models_dir: Path):
        self.port = free_port()
        env = {**os.environ, "PORT": str(self.port), "HOST": "127.0.0.1", "WEB_CONCURRENCY": str(workers),
               "MODELS_DIR": str(models_dir)}
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        command = [sys.executable, "-m", "gunicorn", "-c", str(ROOT / "service" / "gunicorn.conf.py")]
        started = time.monotonic()
        self.process = subprocess.Popen(command + ([app] if app else []), cwd=ROOT, env=env,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.ready_seconds = self._wait_ready(started)

    def _wait_ready(self, started: float) -> float:
        while time.monotonic() - started < 60:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/readyz", timeout=1) as response:
                    if response.status == 200:
                        return time.monotonic() - started
            except OSError:
                time.sleep(0.02)
        raise RuntimeError("server did not become ready within 60 s")

    def pids(self) -> list[int]:
        return [self.process.pid] + [int(p) for p in subprocess.run(
            ["pgrep", "-P", str(self.process.pid)], capture_output=True, text=True).stdout.split()]

    def cpu_seconds(self) -> float:
        """User + system CPU time used so far by the master and all its workers."""
        total = 0
        for pid in self.pids():
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
        return total / os.sysconf("SC_CLK_TCK")

    def rss_mb(self) -> float:
        """Resident memory of the master and all its workers."""
        total = 0
        for pid in self.pids():
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        return total / 1024

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=30)


def wrk(port: int, path: str, bodies_list: Path, seconds: int, connections: int) -> dict:
    env = {**os.environ, "BENCH_BODIES": str(bodies_list), "BENCH_PATH": path, "BENCH_BOUNDARY": BOUNDARY}
    result = subprocess.run(
        ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--timeout", "5s",
         "-s", str(ROOT / "bench" / "predict.lua"),
         f"http://127.0.0.1:{port}"], capture_output=True, text=True, env=env, timeout=seconds + 60)
    line = next(line for line in result.stdout.splitlines() if line.startswith("RESULT "))
    figures = json.loads(line.removeprefix("RESULT "))
    figures["rps"] = figures["requests"] / figures["seconds"]
    return figures


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


def write_bodies(folder: Path, name: str, images: list[bytes], content_type: str, per_request: int) -> Path:
    paths = []
    for i in range(0, len(images) - per_request + 1, per_request) if per_request > 1 else range(len(images)):
        path = folder / f"{name}-{per_request}-{i}.body"
        path.write_bytes(multipart(images[i:i + per_request], content_type))
        paths.append(str(path))
    listing = folder / f"{name}-{per_request}.list"
    listing.write_text("\n".join(paths) + "\n")
    return listing


def in_process_costs(images: dict, models_dir: Path, repeat: int = 300) -> dict:
    """Microseconds per image for each step of a single-image /predict, measured inside one process."""
    import io

    from flask import Request

    from service import metrics
    from service.fast_decode import decode_plain
    from service.images import decode_image, normalize_pixels, oriented_in_mode
    from service.registry import ModelRegistry
    from service.routes import prediction_body
    from service.settings import Settings
    from service.uploads import read_uploads

    settings = Settings.from_env()  # MODEL_RUNTIME and the limits, as the servers read them
    registry = ModelRegistry(models_dir, settings.runtime)
    registry.refresh()
    costs = {}
    for name, (blobs, kind) in images.items():
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
                            "CONTENT_TYPE": f"multipart/form-data; boundary={BOUNDARY}",
                            "CONTENT_LENGTH": str(len(body))})

        parse_us, uploads = timed(lambda b: read_uploads(request_for(b), settings.max_images_per_request,
                                                          settings.max_upload_bytes)[0], sample)
        werkzeug_us, _ = timed(lambda b: request_for(b).files["image"].read(), sample)
        request_us, _ = timed(request_for, sample)

        def through_pillow(data: bytes) -> np.ndarray:
            return np.asarray(oriented_in_mode(decode_image(data, settings.max_image_pixels), spec))

        def decode(data: bytes) -> np.ndarray:
            pixels = decode_plain(data, spec.pillow_mode, settings.max_image_pixels)
            return pixels if pixels is not None else through_pillow(data)

        decode_us, decoded = timed(decode, uploads)
        pillow_us, _ = timed(through_pillow, uploads)
        normalize_us, arrays = timed(lambda pixels: normalize_pixels(pixels, spec), decoded)
        infer_us, outputs = timed(lambda a: model.runtime.predict(a[None]), arrays)
        json_us, _ = timed(lambda p: orjson.dumps(prediction_body(model, p, 5)), outputs)
        stdlib_json_us, _ = timed(lambda p: json.dumps(prediction_body(model, p, 5)).encode(), outputs)

        def record(p):
            metrics.series(metrics.DECODE_DURATION, name).observe(0.0001)
            metrics.series(metrics.INFERENCE_DURATION, name).observe(0.0001)
            metrics.series(metrics.IMAGES_PER_REQUEST, name).observe(1)
            metrics.series(metrics.PREDICTIONS, name, model.classes[int(p.argmax())]).inc()
            metrics.series(metrics.REQUESTS, "/predict", name, "200").inc()
            metrics.series(metrics.REQUEST_DURATION, "/predict").observe(0.001)

        metrics_us, _ = timed(record, outputs)
        batch = np.stack(arrays[:32])
        started = time.perf_counter()
        for _ in range(20):
            model.runtime.predict(batch)
        batch_infer_us = (time.perf_counter() - started) / 20 / 32 * 1e6
        costs[name] = {"runtime": model.runtime.kind,
                       "parse_us": parse_us - request_us, "parse_werkzeug_us": werkzeug_us - request_us,
                       "decode_us": decode_us, "decode_pillow_us": pillow_us, "normalize_us": normalize_us,
                       "inference_us": infer_us, "json_us": json_us, "json_stdlib_us": stdlib_json_us,
                       "metrics_us": metrics_us,
                       "inference_us_per_image_in_batch_of_32": batch_infer_us}
    return costs


def paired_ratio(runs: dict, model: str, target: str, figure: str) -> dict[str, float]:
    """``target``'s figure over the bare app's, per round (the two ran back to back): median, min and max."""
    ratios = [a[figure] / b[figure] for a, b in zip(runs[(target, model)], runs[("bare", model)])]
    return {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios)}


def format_ratio(ratio: dict[str, float]) -> str:
    return f"{ratio['median']:.2f}x ({ratio['min']:.2f}-{ratio['max']:.2f})"


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--models-dir", type=Path, default=ROOT / "models")
    parser.add_argument("--datasets-dir", type=Path,
                        default=Path(os.environ.get("DATASETS_DIR", ROOT.parent / "shared" / "datasets")))
    parser.add_argument("--output", type=Path, default=ROOT / "bench" / "results" / "latest.json")
    args = parser.parse_args()
    # The in-process step costs use the metric store the servers use: one file per process, shared by workers.
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="bench-metrics-")

    images = load_images(args.datasets_dir, 64)
    workdir = Path(tempfile.mkdtemp(prefix="bench-"))
    singles = {name: write_bodies(workdir, name, blobs, kind, 1) for name, (blobs, kind) in images.items()}
    batches = {name: write_bodies(workdir, name, blobs, kind, 32) for name, (blobs, kind) in images.items()}

    servers = {"service": Server(None, args.workers, args.models_dir),
               "bare": Server("bench.bare_app:create_app()", args.workers, args.models_dir),
               "fixed": Server("bench.fixed_answer_app:create_app()", args.workers, args.models_dir)}
    runs: dict[tuple[str, str], list[dict]] = {}
    try:
        for name in images:  # warm-up, not recorded
            for server in servers.values():
                wrk(server.port, f"/predict?model={name}", singles[name], 2, args.connections)
        for round_number in range(args.rounds):
            order = list(servers) if round_number % 2 == 0 else list(reversed(servers))
            for name in images:
                for target in order:
                    cpu_before = servers[target].cpu_seconds()
                    figures = wrk(servers[target].port, f"/predict?model={name}", singles[name], args.seconds,
                                  args.connections)
                    figures["server_cpu_us_per_request"] = ((servers[target].cpu_seconds() - cpu_before)
                                                            / max(figures["requests"], 1) * 1e6)
                    runs.setdefault((target, name), []).append(figures)
                    print(f"round {round_number + 1} {target:>7} {name:>13}: {figures['rps']:8.0f} req/s  "
                          f"p50 {figures['p50_ms']:.2f} ms  p99 {figures['p99_ms']:.2f} ms  "
                          f"server CPU {figures['server_cpu_us_per_request']:.0f} us/request  "
                          f"errors {figures['errors']}", flush=True)
        served_steps = served_step_means(servers["service"].port)  # single-image requests only, so far
        batch_runs = {name: wrk(servers["service"].port, f"/predict?model={name}", batches[name], args.seconds,
                                args.connections) for name in images}
        memory = {target: server.rss_mb() for target, server in servers.items()}
        ready = {target: server.ready_seconds for target, server in servers.items()}
    finally:
        for server in servers.values():
            server.stop()

    summary = {"machine": {"cores": os.cpu_count(), "cpu": cpu_model()},
               "settings": vars(args) | {"models_dir": str(args.models_dir),
               "datasets_dir": str(args.datasets_dir), "output": str(args.output)},
               "rss_mb": memory, "ready_seconds": ready, "models": {}}
    print(f"\n{'model':>13} {'target':>8} {'req/s':>8} {'p50 ms':>7} {'p99 ms':>7} {'CPU us/req':>10} {'errors':>6}")
    for name in images:
        rows = {}
        for target in servers:
            series = runs[(target, name)]
            rows[target] = {"rps": statistics.median(r["rps"] for r in series),
                            "p50_ms": statistics.median(r["p50_ms"] for r in series),
                            "p99_ms": statistics.median(r["p99_ms"] for r in series),
                            "server_cpu_us_per_request": statistics.median(r["server_cpu_us_per_request"]
                                                                           for r in series),
                            "errors": sum(r["errors"] for r in series)}
            row = rows[target]
            print(f"{name:>13} {target:>8} {row['rps']:8.0f} {row['p50_ms']:7.2f} {row['p99_ms']:7.2f} "
                  f"{row['server_cpu_us_per_request']:10.0f} {row['errors']:6d}")
        batch = batch_runs[name]
        single_cost = 1 / rows["service"]["rps"]
        batch_cost = 1 / (batch["rps"] * 32)
        summary["models"][name] = rows | {
            "throughput_ratio": paired_ratio(runs, name, "service", "rps"),
            "throughput_ratio_fixed_answer": paired_ratio(runs, name, "fixed", "rps"),
            "p99_ratio": paired_ratio(runs, name, "service", "p99_ms"),
            "batch32": {"requests_per_s": batch["rps"], "images_per_s": batch["rps"] * 32,
                        "per_image_cost_vs_single": batch_cost / single_cost, "errors": batch["errors"]},
        }
    summary["served_us_per_request"] = served_steps
    summary["in_process_us_per_image"] = in_process_costs(images, args.models_dir)

    print("\nratios to the bare app within each round: median (range over the rounds)")
    for name, figures in summary["models"].items():
        print(f"  {name:>13}: service throughput {format_ratio(figures['throughput_ratio'])}  "
              f"p99 {format_ratio(figures['p99_ratio'])}  fixed-answer throughput "
              f"{format_ratio(figures['throughput_ratio_fixed_answer'])}\n{'':>17}batch of 32: "
              f"{figures['batch32']['images_per_s']:.0f} images/s, per-image cost "
              f"{figures['batch32']['per_image_cost_vs_single']:.3f}x a single-image request")
    print(f"RSS, master + {args.workers} workers: service {memory['service']:.0f} MB, bare {memory['bare']:.0f} MB")
    print(f"start to ready: service {ready['service']:.2f} s, bare {ready['bare']:.2f} s")
    print("in-process cost per image (microseconds); for comparison, parse_werkzeug is the bare app's "
          "request.files, decode_pillow and json_stdlib what the direct decoders and orjson replace:")
    for name, steps in summary["in_process_us_per_image"].items():
        print(f"  {name:>13} ({steps['runtime']}): " + "  ".join(
            f"{k.removesuffix('_us')} {v:.0f}" for k, v in steps.items() if k != "runtime"))
    print("the same steps inside the loaded service, mean microseconds per single-image request "
          "(from its own /metrics; decode includes normalize):")
    for name, steps in served_steps.items():
        print(f"  {name:>13}: " + "  ".join(f"{k.removesuffix('_us')} {v:.0f}" for k, v in sorted(steps.items())))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(summary, indent=2, default=str))
    print(f"\nwritten to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
