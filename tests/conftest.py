"""Shared fixtures: the real datasets, the shipped models, and a real gunicorn server on a free loopback port."""

from __future__ import annotations

import glob
import io
import os
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
from PIL import Image

from contract import layout
from contract.metadata import read_metadata, write_metadata

ROOT = Path(__file__).resolve().parents[1]
SHIPPED_MODELS = ROOT / "models"
os.environ.setdefault("KERAS_HOME", str(ROOT / ".cache" / "keras"))  # where the CIFAR-10 archive is unpacked
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def datasets_dir() -> Path:
    return Path(os.environ.get("DATASETS_DIR", ROOT.parent / "shared" / "datasets"))


def _require(path: Path, what: str) -> Path:
    if not path.exists():
        message = f"{what} not found at {path} (set DATASETS_DIR)"
        if os.environ.get("REQUIRE_DATA") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture(scope="session")
def fashion_dir() -> Path:
    return _require(datasets_dir() / "fashion-mnist", "Fashion-MNIST files")


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    return _require(datasets_dir() / "mnist-10k", "the MNIST digits (10,000-digit IDX copy)")


@pytest.fixture(scope="session")
def mnist(mnist_dir):
    """The 10,000 real MNIST digits of the offline copy: 8,004 for training, 1,996 for test (a subset)."""
    from training.datasets import load_dataset

    return load_dataset("mnist", mnist_dir.parent, download=False)


@pytest.fixture(scope="session")
def cifar_archive() -> Path:
    return _require(datasets_dir() / "cifar10-jpeg.tar.gz", "the CIFAR-10 JPEG archive")


@pytest.fixture(scope="session")
def fashion(fashion_dir):
    from training.datasets import load_fashion_mnist_idx

    return load_fashion_mnist_idx(fashion_dir)


@pytest.fixture(scope="session")
def cifar_folder(cifar_archive) -> Path:
    """The unpacked JPEG folder: train/ and test/ with one folder per class."""
    from training.datasets import unpack_archive

    return unpack_archive(cifar_archive)


def png_bytes(pixels: np.ndarray, fmt: str = "PNG", **params) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt, **params)
    return buffer.getvalue()


def publish_copy(models_dir, name, source_version, new_version, damage=None, promote=True) -> Path:
    """Publish a copy of a version the way training does: staged, renamed into place, pointer last."""
    staging = layout.stage_version(models_dir, name)
    shutil.copytree(layout.version_dir(models_dir, name, source_version), staging, dirs_exist_ok=True)
    document = read_metadata(staging).document
    write_metadata(staging, {**document, "version": new_version}, replace=True)
    if damage == "tampered":
        for runtime in document["runtimes"].values():
            if runtime["file"].endswith(".onnx"):
                (staging / runtime["file"]).write_bytes((staging / runtime["file"]).read_bytes()[:-64])
    folder = layout.install_version(staging, models_dir, name, new_version)
    if promote:
        layout.point_current(models_dir, name, new_version)
    return folder


def copy_current_version(models_dir: Path, name: str, source: Path = SHIPPED_MODELS) -> int:
    """A models folder holding only the current version of one shipped model; its version number."""
    version = layout.current_version(source, name)
    shutil.copytree(layout.version_dir(source, name, version), layout.version_dir(models_dir, name, version))
    layout.point_current(models_dir, name, version)
    return version


def shipped_metadata(name: str) -> dict:
    """The metadata.json of a shipped model's current version."""
    return read_metadata(layout.version_dir(SHIPPED_MODELS, name, layout.current_version(SHIPPED_MODELS, name))
                         ).document


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def is_ready(url: str, timeout: float = 2) -> bool:
    """One readiness probe: False while the server is not listening yet or too busy starting to answer."""
    try:
        return requests.get(url + "/readyz", timeout=timeout).status_code == 200
    except requests.RequestException:
        return False


def wait_until_ready(url: str, timeout: float = 120, interval: float = 0.5) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if is_ready(url):
            return True
        time.sleep(interval)
    return False


class GunicornServer:
    """The real service under gunicorn, bound to 127.0.0.1; stopped by its own PID."""

    def __init__(self, models_dir: Path, workers: int = 2, **env):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        # No drain on SIGTERM unless a test asks for one: every test server stops at once.
        self.env = {**os.environ, "MODELS_DIR": str(models_dir), "PORT": str(self.port), "HOST": "127.0.0.1",
                    "WEB_CONCURRENCY": str(workers), "MODEL_RELOAD_SECONDS": "0.5", "DRAIN_SECONDS": "0",
                    # gRPC off unless a test asks for it on a port of its own: 8081 is one port for the host.
                    "GRPC_PORT": "0", **env}
        if "PROMETHEUS_MULTIPROC_DIR" not in env:  # each server its own, unless a test wants to read it
            self.env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 60) -> GunicornServer:
        # The log goes to a file: a pipe nobody reads while the server runs could fill up and block it.
        self.log_file = tempfile.TemporaryFile("w+")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", str(ROOT / "service" / "front_door" / "gunicorn.conf.py")],
            cwd=ROOT, env=self.env, stdout=self.log_file, stderr=subprocess.STDOUT, text=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"gunicorn exited with {self.process.returncode}:\n{self.output()}")
            if is_ready(self.url, timeout=1):
                return self
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"gunicorn did not become ready in {timeout}s")

    def stop(self) -> str:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.output()

    def output(self) -> str:
        """Everything the server has logged so far."""
        if not self.process:
            return ""
        self.log_file.seek(0)
        return self.log_file.read()


def _postgres_binaries() -> str | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return os.path.dirname(found[-1]) if found else None


@pytest.fixture(scope="module")
def postgres_url():
    """A real PostgreSQL server from Debian's package, on a free loopback port, stopped after the module."""
    bindir = _postgres_binaries()
    if bindir is None:
        if os.environ.get("REQUIRE_POSTGRES"):
            pytest.fail("PostgreSQL is not installed (apt-get install postgresql) and REQUIRE_POSTGRES is set")
        pytest.skip("PostgreSQL is not installed (Debian package postgresql)")
    # Not under pytest's private temporary folder: the server's user must be able to reach it.
    folder = Path(tempfile.mkdtemp(prefix="feedback-postgres-"))
    data = folder / "data"
    # PostgreSQL refuses to run as root: run it as the package's own user when the tests are root.
    prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    if prefix:
        shutil.chown(folder, "postgres")
    subprocess.run(prefix + [f"{bindir}/initdb", "-D", str(data), "-U", "feedback", "--auth=trust", "-E", "UTF8"],
                   check=True, capture_output=True)
    port = free_port()
    subprocess.run(prefix + [f"{bindir}/pg_ctl", "-D", str(data), "-l", str(folder / "log"), "-w", "-o",
                             f"-p {port} -k {folder} -c listen_addresses=127.0.0.1", "start"],
                   check=True, capture_output=True)
    try:
        yield f"postgresql://feedback@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(prefix + [f"{bindir}/pg_ctl", "-D", str(data), "-m", "fast", "stop"], capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)


# API keys in tests: the server's secret, and a keys file made as `python -m service keys add` makes it.
API_KEYS_SECRET = "test-secret-0123456789abcdef"


def write_api_keys(path: Path, **keys: dict) -> dict[str, str]:
    """Add keys to the keys file at ``path``: ``name={"models": (...), "requests_per_second": ..., ...}``; returns
    each name's key. A server reads them with ``API_KEYS_FILE=path API_KEYS_SECRET=API_KEYS_SECRET``."""
    from service.access.keys import new_key
    from service.access.store import KeyFile

    source, made = KeyFile(path, serving=False), {}
    for name, options in keys.items():
        new = new_key(name, API_KEYS_SECRET, time.time(), **options)
        source.add(new.record)
        made[name] = new.key
    return made


@pytest.fixture(scope="session")
def shipped_server():
    server = GunicornServer(SHIPPED_MODELS).start()
    yield server
    server.stop()
