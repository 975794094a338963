"""Which gunicorn worker to serve with: each candidate under keep-alive load and beside slow clients.

    python bench/workers.py [--rounds 3] [--seconds 8]

For each candidate (gunicorn's sync, gthread with 4 threads, plain gevent, and this service's worker), with
2 workers on the shipped models:
- load: wrk, one thread, 8 keep-alive connections, real Fashion-MNIST PNGs on /predict, in rounds that
  alternate the candidates' order; req/s, p50 and p99 are the medians of the rounds;
- slow clients: 64 connections, half sending their headers one byte every 0.2 s, half announcing a 100 kB body
  and sending nothing; meanwhile a normal client sends 20 x (GET /healthz, POST /predict), each on a new
  connection with a 5 s timeout, and the answers within 1 s are counted.
Everything binds to 127.0.0.1; every load and every slow client is bounded in time.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from run import free_port, load_images, service_requests, wrk, write_requests  # noqa: E402

CANDIDATES = {
    "sync": ["-k", "sync"],
    "gthread (4 threads)": ["-k", "gthread", "--threads", "4"],
    "gevent": ["-k", "gevent"],
    "service worker": [],  # WORKER_CLASS=gevent: service.front_door.worker.ServiceWorker
}


class Candidate:
    def __init__(self, name: str, arguments: list[str]):
        self.name, self.port = name, free_port()
        env = {**os.environ, "PORT": str(self.port), "HOST": "127.0.0.1", "WEB_CONCURRENCY": "2",
               "DRAIN_SECONDS": "0", "MODELS_DIR": str(ROOT / "models")}
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", str(ROOT / "service" / "front_door" / "gunicorn.conf.py"), *arguments],
            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/readyz", timeout=1):
                    return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"{name} did not become ready")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=40)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def slow_client_check(port: int, image: bytes, seconds: float = 20) -> dict:
    """Normal requests answered, and answered within 1 s, while 64 slow clients hold connections."""
    headers = (b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\n"
               b"Content-Length: 102400\r\n\r\n")
    tricklers = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(32)]
    stallers = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(32)]
    stop = threading.Event()

    def trickle():
        for position in range(len(headers)):
            if stop.wait(0.2):
                return
            for sock in tricklers:
                try:
                    sock.send(headers[position:position + 1])
                except OSError:
                    pass

    for sock in stallers:
        try:
            sock.sendall(headers)
        except OSError:
            pass
    thread = threading.Thread(target=trickle)
    thread.start()
    answered = within_one_second = 0
    deadline = time.monotonic() + seconds
    try:
        for _ in range(20):
            for request in (urllib.request.Request(f"http://127.0.0.1:{port}/healthz"),
                            urllib.request.Request(f"http://127.0.0.1:{port}/predict", data=image,
                                                   headers={"Content-Type": "image/png"})):
                if time.monotonic() > deadline:
                    break
                started = time.monotonic()
                try:
                    with urllib.request.urlopen(request, timeout=5) as response:
                        answered += response.status == 200
                        within_one_second += response.status == 200 and time.monotonic() - started <= 1
                except OSError:
                    pass
    finally:
        stop.set()
        thread.join()
        for sock in tricklers + stallers:
            sock.close()
    return {"answered": answered, "within_1s": within_one_second, "of": 40}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--datasets-dir", type=Path, default=ROOT.parent / "shared" / "datasets")
    args = parser.parse_args()

    import tempfile

    blobs, kind, _ = load_images(args.datasets_dir, 64)["fashion_mnist"]
    listing = write_requests(Path(tempfile.mkdtemp(prefix="bench-workers-")), "predict",
                             service_requests(blobs, kind, 1))
    runs: dict[str, list[dict]] = {name: [] for name in CANDIDATES}
    slow: dict[str, dict] = {}
    for round_number in range(args.rounds):
        order = list(CANDIDATES) if round_number % 2 == 0 else list(reversed(CANDIDATES))
        for name in order:
            candidate = Candidate(name, CANDIDATES[name])
            try:
                wrk(candidate.port, "/predict", listing, 2, 8)  # warm-up
                figures = wrk(candidate.port, "/predict", listing, args.seconds, 8)
                runs[name].append(figures)
                print(f"round {round_number + 1} {name:>20}: {figures['rps']:6.0f} req/s  p50 {figures['p50_ms']:.2f} ms"
                      f"  p99 {figures['p99_ms']:.2f} ms  errors {figures['errors']}", flush=True)
                if round_number == 0:
                    slow[name] = slow_client_check(candidate.port, blobs[0])
                    print(f"{'':>29}beside 64 slow clients: {slow[name]['answered']}/40 answered, "
                          f"{slow[name]['within_1s']}/40 within 1 s", flush=True)
            finally:
                candidate.stop()
    print(f"\n{'worker':>20} {'req/s':>7} {'p50 ms':>7} {'p99 ms':>7} {'slow clients: answered / within 1 s':>38}")
    for name, series in runs.items():
        print(f"{name:>20} {statistics.median(r['rps'] for r in series):7.0f} "
              f"{statistics.median(r['p50_ms'] for r in series):7.2f} "
              f"{statistics.median(r['p99_ms'] for r in series):7.2f} "
              f"{slow[name]['answered']:>28}/40 / {slow[name]['within_1s']}/40")
    return 0


if __name__ == "__main__":
    sys.exit(main())
