"""Hostile requests: small uploads that would cost a worker seconds or hundreds of MB, malformed ones, slow ones.

    python bench/hostile.py [--url http://127.0.0.1:8000] [--feedback-token TOKEN] [--case NAME ...]

Each case is sent to a running service while a probe on other connections asks ``/healthz`` and classifies a
real Fashion-MNIST PNG every 0.2 s. Printed per case: the statuses, the time the case took, the peak RSS growth
of the busiest gunicorn worker (when the service runs on this machine: its worker PIDs are read from /proc),
and the probe's slowest answer. ``tests/service/test_hostile.py`` and ``tests/test_containers.py`` send the same
corpus and assert the bounds.
"""

from __future__ import annotations

import argparse
import functools
import io
import json
import os
import socket
import struct
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

BOUNDARY = "hostile7e3c1f"
MIB = 1024 * 1024


# --- raw HTTP --------------------------------------------------------------------------------------------------

@dataclass
class Answer:
    status: int  # 0: the connection closed before a whole answer could be read
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""

    def json(self):
        try:
            return json.loads(self.body)
        except ValueError:
            return None


def read_answer(sock: socket.socket, timeout: float) -> Answer:
    """One HTTP/1.1 response from the socket (Content-Length framed, as the service always answers)."""
    sock.settimeout(timeout)
    data = b""
    try:
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                return Answer(0)
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:] if ":" in line)}
        length = int(headers.get("content-length", "0"))
        while len(body) < length:
            chunk = sock.recv(65536)
            if not chunk:
                return Answer(0)
            body += chunk
        return Answer(status, headers, body[:length])
    except OSError:
        return Answer(0)


def exchange(address: tuple[str, int], request: bytes, timeout: float = 30) -> Answer:
    """Send a whole request on a new connection and read the answer; a reset while sending still reads it."""
    with socket.create_connection(address, timeout=timeout) as sock:
        try:
            sock.sendall(request)
        except OSError:
            pass  # refused mid-upload: the answer may still be there to read
        return read_answer(sock, timeout)


def http_request(method: str, target: str, headers: dict[str, str] | None = None, body: bytes = b"",
                 chunked: bool = False) -> bytes:
    headers = {"Host": "hostile", **(headers or {})}
    if chunked:
        headers["Transfer-Encoding"] = "chunked"
    elif body or method == "POST":
        headers["Content-Length"] = str(len(body))
    head = f"{method} {target} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
    if chunked:
        step = MIB
        body = b"".join(b"%x\r\n" % len(body[i:i + step]) + body[i:i + step] + b"\r\n"
                        for i in range(0, len(body), step)) + b"0\r\n\r\n"
    return head.encode("latin-1") + body


def multipart(images: list[bytes], fields: dict[str, str] | None = None) -> tuple[bytes, str]:
    parts = [(f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n").encode()
             for name, value in (fields or {}).items()]
    parts += [(f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"{i}\"\r\n"
               "Content-Type: application/octet-stream\r\n\r\n").encode() + data + b"\r\n"
              for i, data in enumerate(images)]
    return b"".join(parts) + f"--{BOUNDARY}--\r\n".encode(), f"multipart/form-data; boundary={BOUNDARY}"


def v2_bytes(images: list[bytes], outputs: list | None = None) -> tuple[bytes, dict[str, str]]:
    """A KServe V2 request with the images as binary BYTES data."""
    binary = b"".join(struct.pack("<I", len(data)) + data for data in images)
    document = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [len(images)],
                            "parameters": {"binary_data_size": len(binary)}}]}
    if outputs is not None:
        document["outputs"] = outputs
    header = json.dumps(document).encode()
    return header + binary, {"Content-Type": "application/octet-stream",
                             "Inference-Header-Content-Length": str(len(header))}


# --- the payloads: small files that declare a lot --------------------------------------------------------------

def encode(image: Image.Image, fmt: str, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


SIDE = 6200  # each image is under the 40-megapixel per-image limit, as in the reports of these attacks


@functools.cache
def webp_lossless() -> bytes:
    return encode(Image.new("RGB", (SIDE, SIDE), (200, 120, 40)), "WEBP", lossless=True)


@functools.cache
def png_16bit() -> bytes:
    return encode(Image.fromarray(np.full((SIDE, SIDE), 30000, np.uint16)), "PNG")


@functools.cache
def tiff_float() -> bytes:
    return encode(Image.fromarray(np.full((SIDE, SIDE), 0.5, np.float32)), "TIFF", compression="tiff_deflate")


@functools.cache
def png_rgba() -> bytes:
    return encode(Image.new("RGBA", (SIDE, SIDE), (10, 20, 30, 0)), "PNG")


@functools.cache
def png_rgb(side: int) -> bytes:
    ramp = np.linspace(0, 255, side, dtype=np.uint8)
    return encode(Image.fromarray(np.dstack([np.tile(ramp, (side, 1))] * 3)), "PNG")


@functools.cache
def jpeg_photo() -> bytes:
    ramp = np.linspace(0, 255, SIDE, dtype=np.uint8)
    return encode(Image.fromarray(np.dstack([np.tile(ramp, (SIDE, 1)), np.tile(ramp[:, None], (1, SIDE)),
                                             np.full((SIDE, SIDE), 90, np.uint8)])), "JPEG", quality=85)


@functools.cache
def _fashion_pixels() -> np.ndarray:
    """A real Fashion-MNIST test image (an ankle boot), from DATASETS_DIR (default ../shared/datasets)."""
    from training.datasets import load_fashion_mnist_idx

    datasets = Path(os.environ.get("DATASETS_DIR", Path(__file__).resolve().parents[2] / "shared" / "datasets"))
    return load_fashion_mnist_idx(datasets / "fashion-mnist").x_test[0]


def garment_png() -> bytes:
    """The real test image as a PNG, for the probe and the small-request cases."""
    return encode(Image.fromarray(_fashion_pixels()), "PNG")


def truncated_jpeg() -> bytes:
    """The real test image as a JPEG whose scan data stops short, with its end marker appended."""
    jpeg = encode(Image.fromarray(_fashion_pixels()).resize((280, 280)), "JPEG", quality=95)
    return jpeg[:len(jpeg) * 2 // 3] + b"\xff\xd9"


# --- the cases -------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Case:
    name: str
    what: str
    expect: tuple[int, ...]  # the statuses every answer must have
    send: Callable[[tuple[str, int], str], list[Answer]]  # (address, feedback token) -> answers
    shape: str = "native"  # the error body's shape: "native" {"error": {"code", "message"}}, "message" {"error": str}
    slow: bool = False  # takes seconds by design (timeouts)


def _post(path: str, body: bytes | Callable[[], bytes], headers: dict[str, str], chunked: bool = False):
    def send(address, token):
        data = body() if callable(body) else body
        return [exchange(address, http_request("POST", path, headers, data, chunked))]
    return send


def _multipart_post(path: str, images: Callable[[], list[bytes]], fields: dict[str, str] | None = None,
                    auth: bool = False, chunked: bool = False):
    def send(address, token):
        body, content_type = multipart(images(), fields)
        headers = {"Content-Type": content_type}
        if auth:
            headers["Authorization"] = f"Bearer {token}"
        return [exchange(address, http_request("POST", path, headers, body, chunked))]
    return send


def _v2(images: Callable[[], list[bytes]], outputs=None, chunked: bool = False, path: str = "/v2/models/fashion_mnist/infer"):
    def send(address, token):
        body, headers = v2_bytes(images(), outputs)
        return [exchange(address, http_request("POST", path, headers, body, chunked))]
    return send


def _raw(request: Callable[[], bytes], timeout: float = 30):
    return lambda address, token: [exchange(address, request(), timeout)]


def _v2_header_length(value: str):
    def request():
        body, headers = v2_bytes([garment_png()])
        return (f"POST /v2/models/fashion_mnist/infer HTTP/1.1\r\nHost: hostile\r\nContent-Type: "
                f"application/octet-stream\r\nContent-Length: {len(body)}\r\n").encode() + \
            b"Inference-Header-Content-Length: " + value.encode("latin-1") + b"\r\n\r\n" + body
    return _raw(request)


def _chunk_extension() -> bytes:
    body, content_type = multipart([garment_png()])
    return (f"POST /predict HTTP/1.1\r\nHost: hostile\r\nContent-Type: {content_type}\r\n"
            "Transfer-Encoding: chunked\r\n\r\n").encode() + b"%x;" % len(body) + b"x" * 20_000 + b"\r\n" + body + \
        b"\r\n0\r\n\r\n"


def _deep_json() -> bytes:
    document = b'{"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": ' + b"[" * 1000 + \
        b'"aGk="' + b"]" * 1000 + b"}]}"
    return http_request("POST", "/v2/models/fashion_mnist/infer", {"Content-Type": "application/json"}, document)


def _slow_bodies(connections: int = 80, sent: int = 9 * MIB, declared: int = 10 * MIB, pause: float = 4.0):
    """Many connections each send most of a large body, then pause: the worker must neither hold them all in
    memory nor wait for them for ever."""
    def send(address, token):
        answers: list[Answer] = [Answer(0)] * connections
        head = (f"POST /predict HTTP/1.1\r\nHost: hostile\r\nContent-Type: image/png\r\n"
                f"Content-Length: {declared}\r\n\r\n").encode()
        block = b"\0" * (256 * 1024)

        def one(i: int) -> None:
            try:
                with socket.create_connection(address, timeout=60) as sock:
                    sock.settimeout(60)
                    try:
                        sock.sendall(head)
                        for _ in range(sent // len(block)):
                            sock.sendall(block)
                    except OSError:
                        pass  # refused part-way: the answer may be waiting
                    answers[i] = read_answer(sock, 60)
            except OSError:
                pass

        threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(connections)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(90)
        return answers
    return send


def _trickle(rate_bytes_per_second: int = 2048, seconds: float = 12.0):
    """One upload that keeps arriving, a little at a time: never pausing long enough for the body timeout."""
    def send(address, token):
        body = garment_png() + b"\0" * 200_000
        with socket.create_connection(address, timeout=30) as sock:
            sock.sendall((f"POST /predict HTTP/1.1\r\nHost: hostile\r\nContent-Type: image/png\r\n"
                          f"Content-Length: {len(body)}\r\n\r\n").encode())
            deadline, sent = time.monotonic() + seconds, 0
            try:
                while time.monotonic() < deadline and sent < len(body):
                    sock.sendall(body[sent:sent + rate_bytes_per_second // 10])
                    sent += rate_bytes_per_second // 10
                    time.sleep(0.1)
            except OSError:
                pass
            return [read_answer(sock, 30)]
    return send


def _feedback_label(address, token):
    body, content_type = multipart([garment_png()], {"label": "7" * 6000, "model": "fashion_mnist"})
    return [exchange(address, http_request("POST", "/feedback", {"Content-Type": content_type,
                                                                 "Authorization": f"Bearer {token}"}, body))]


TWELVE_MIB = b"\0" * (12 * MIB)

CASES = (
    Case("webp_64_multipart", "64 lossless WebP of 6200x6200 in one multipart /predict (~100 kB)", (422,),
         _multipart_post("/predict", lambda: [webp_lossless()] * 64)),
    Case("webp_64_v2_bytes", "the same 64 as KServe V2 binary BYTES", (422,),
         _v2(lambda: [webp_lossless()] * 64), shape="message"),
    Case("png_16bit", "one 16-bit PNG of 6200x6200 (~90 kB)", (422,), _multipart_post("/predict", lambda: [png_16bit()])),
    Case("tiff_float", "one float32 TIFF of 6200x6200 (~250 kB)", (422,),
         _multipart_post("/predict", lambda: [tiff_float()])),
    Case("png_rgba_16", "16 transparent RGBA PNGs of 6200x6200", (422,),
         _multipart_post("/predict", lambda: [png_rgba()] * 16)),
    Case("png_64_megapixels", "64 PNGs of 1000x1000, each allowed, together 64 megapixels", (413,),
         _multipart_post("/predict", lambda: [png_rgb(1000)] * 64)),
    Case("png_16_megapixels_accepted", "one 4000x4000 RGB PNG, at the request limit: served", (200,),
         _multipart_post("/predict", lambda: [png_rgb(4000)])),
    Case("jpeg_38_megapixels_accepted", "one 6200x6200 JPEG: decoded at 1/8 scale and served", (200,),
         _multipart_post("/predict", lambda: [jpeg_photo()])),
    Case("jpeg_chunked_accepted", "the same JPEG as a chunked body: read whole, then served", (200,),
         _post("/predict", jpeg_photo, {"Content-Type": "image/jpeg"}, chunked=True)),
    Case("v2_outputs_repeated", "a V2 request naming its output 5,000 times", (400,),
         _v2(lambda: [garment_png()], [{"name": "probabilities"}] * 5000), shape="message"),
    Case("v2_deep_json", "a V2 JSON body nested 1,000 lists deep", (400,), _raw(_deep_json), shape="message"),
    Case("v2_header_length_digits", "an Inference-Header-Content-Length of 6,000 digits", (400,),
         _v2_header_length("9" * 6000), shape="message"),
    Case("v2_header_length_non_ascii", "an Inference-Header-Content-Length with a non-ASCII digit", (400,),
         _v2_header_length("1\xb2"), shape="message"),
    Case("top_k_superscript", "?top_k=%C2%B3 (a superscript three)", (400,),
         _multipart_post("/predict?top_k=%C2%B3", lambda: [garment_png()])),
    Case("feedback_label_digits", "a feedback label of 6,000 digits", (400,), _feedback_label),
    Case("chunked_12mib_predict", "a chunked 12 MiB body to /predict", (413,),
         _post("/predict", TWELVE_MIB, {"Content-Type": "image/png"}, chunked=True)),
    Case("chunked_12mib_v2", "a chunked 12 MiB body to V2 infer", (413,),
         _post("/v2/models/fashion_mnist/infer", TWELVE_MIB, {"Content-Type": "application/json"}, chunked=True),
         shape="message"),
    Case("chunked_12mib_feedback", "a chunked 12 MiB body to /feedback", (413,),
         _post("/feedback", TWELVE_MIB, {"Content-Type": "image/png"}, chunked=True)),
    Case("chunk_extension_20kb", "a chunk-size line with 20 kB of extension", (400, 431), _raw(_chunk_extension)),
    Case("header_block_120kb", "120 kB of headers (15 of 8 kB)", (431,),
         _raw(lambda: http_request("GET", "/healthz", {f"X-Filler-{i}": "x" * 8000 for i in range(15)}))),
    Case("request_line_30kb", "a 30 kB request line", (414,),
         _raw(lambda: http_request("GET", "/predict?" + "a" * 30_000))),
    Case("truncated_jpeg", "a JPEG whose scan data stops short, with its end marker appended", (400,),
         _multipart_post("/predict", lambda: [truncated_jpeg()])),
    Case("slow_bodies_80", "80 connections each send 9 of a declared 10 MB, then pause", (503, 408),
         _slow_bodies(), slow=True),
    Case("trickled_upload", "an upload trickling in at 2 kB/s, never pausing for long", (408,), _trickle(),
         slow=True),
)


def error_shape_ok(answer: Answer, shape: str) -> bool:
    body = answer.json()
    if not isinstance(body, dict) or "error" not in body:
        return False
    if shape == "message":
        return isinstance(body["error"], str) and bool(body["error"])
    return isinstance(body["error"], dict) and {"code", "message"} <= set(body["error"])


# --- watching the server ---------------------------------------------------------------------------------------

def worker_pids(master_pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{master_pid}/task/{master_pid}/children").read_text().split()]
    except OSError:
        return []


def _status(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    return 0


def rss(pid: int) -> int:
    return _status(pid, "VmRSS")


def reset_peak(pid: int) -> None:
    """Start the process's peak RSS (VmHWM) afresh from its current RSS (Linux's clear_refs, value 5)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def peak(pid: int) -> int:
    return _status(pid, "VmHWM")


class Probe:
    """Other clients, every ``interval``: ``GET /healthz`` and a real ``/predict``, each on a new connection."""

    def __init__(self, address: tuple[str, int], png: bytes, interval: float = 0.2, timeout: float = 5.0):
        self.address, self.png, self.interval, self.timeout = address, png, interval, timeout
        self.latencies: list[float] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Probe:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        body, content_type = multipart([self.png])
        requests = (http_request("GET", "/healthz"),
                    http_request("POST", "/predict", {"Content-Type": content_type}, body))
        while not self._stop.is_set():
            for request in requests:
                started = time.monotonic()
                try:
                    answer = exchange(self.address, request, self.timeout)
                except OSError as error:
                    answer = Answer(0, body=str(error).encode())
                self.latencies.append(time.monotonic() - started)
                if answer.status != 200:
                    self.failures.append(f"{request.split(b' ')[1].decode()}: {answer.status}")
            self._stop.wait(self.interval)

    @property
    def slowest(self) -> float:
        return max(self.latencies, default=0.0)


@dataclass
class Result:
    case: Case
    answers: list[Answer]
    seconds: float
    peak_growth: int  # bytes, the busiest worker's peak RSS over its RSS before the case
    probe_slowest: float
    probe_answers: int
    probe_failures: list[str]


PAYLOADS = (webp_lossless, png_16bit, tiff_float, png_rgba, lambda: png_rgb(1000), lambda: png_rgb(4000),
            jpeg_photo, garment_png, truncated_jpeg)


def prepare() -> None:
    """Encode every payload once, so that a case's time is the server's (and the transfer's), not the encoder's."""
    for payload in PAYLOADS:
        payload()


def run_case(case: Case, address: tuple[str, int], token: str, master_pid: int | None) -> Result:
    prepare()
    pids = worker_pids(master_pid) if master_pid else []
    before = {}
    for pid in pids:
        try:
            reset_peak(pid)
            before[pid] = rss(pid)
        except OSError:
            pass
    with Probe(address, garment_png()) as probe:
        started = time.monotonic()
        answers = case.send(address, token)
        seconds = time.monotonic() - started
        time.sleep(0.3)  # the probe's answers right after the case count too
    growth = 0
    for pid, resting in before.items():
        try:
            growth = max(growth, peak(pid) - resting)
        except OSError:
            pass
    return Result(case, answers, seconds, growth, probe.slowest, len(probe.latencies), probe.failures)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--feedback-token", default=os.environ.get("FEEDBACK_TOKEN", ""))
    parser.add_argument("--master-pid", type=int, help="the gunicorn master's PID, for the workers' RSS")
    parser.add_argument("--case", action="append", help="only these cases (by name)")
    args = parser.parse_args()
    parts = urllib.parse.urlsplit(args.url)
    address = (parts.hostname, parts.port or 80)
    print(f"{'case':28} {'statuses':>14} {'seconds':>8} {'peak RSS growth':>16} {'probe slowest':>14}")
    for case in CASES:
        if args.case and case.name not in args.case:
            continue
        result = run_case(case, address, args.feedback_token, args.master_pid)
        statuses = sorted({a.status for a in result.answers})
        shown = ",".join(map(str, statuses)) if len(result.answers) == 1 else \
            " ".join(f"{s}x{sum(a.status == s for a in result.answers)}" for s in statuses)
        print(f"{case.name:28} {shown:>14} {result.seconds:8.2f} {result.peak_growth / MIB:13.0f} MB "
              f"{result.probe_slowest * 1000:11.0f} ms" + (f"  probe failures: {result.probe_failures}"
                                                         if result.probe_failures else ""))


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    main()
