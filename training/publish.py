"""Versioned artifacts in ``models/<name>/<version>/``, published atomically.

A version is written into a hidden staging folder, fsynced, then renamed into place; the ``current`` pointer
is replaced last. A run killed at any moment leaves either nothing visible or a complete version, and the
pointer only ever names complete versions. Every decision about promotion is appended to ``history.jsonl``.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

CURRENT_POINTER = "current"
HISTORY_FILE = "history.jsonl"
METADATA_FILE = "metadata.json"
STAGING_PREFIX = ".staging-"


class PublishError(Exception):
    """A version could not be published, promoted or rolled back; nothing was changed."""


def model_dir(models_dir: Path, name: str) -> Path:
    return Path(models_dir) / name


def list_versions(models_dir: Path, name: str) -> list[int]:
    """Complete versions, oldest first (staging folders are hidden and never listed)."""
    folder = model_dir(models_dir, name)
    if not folder.is_dir():
        return []
    return sorted(int(p.name) for p in folder.iterdir()
                  if p.is_dir() and p.name.isdigit() and (p / METADATA_FILE).is_file())


def current_version(models_dir: Path, name: str) -> int | None:
    pointer = model_dir(models_dir, name) / CURRENT_POINTER
    try:
        text = pointer.read_text().strip()
    except FileNotFoundError:
        return None
    return int(text) if text.isdigit() else None


def read_metadata(models_dir: Path, name: str, version: int) -> dict:
    return json.loads((model_dir(models_dir, name) / str(version) / METADATA_FILE).read_text())


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return "sha256:" + digest.hexdigest()


def _fsync_tree(root: Path) -> None:
    for path in sorted(root.rglob("*"), reverse=True):
        if path.is_file():
            with open(path, "rb") as f:
                os.fsync(f.fileno())
    _fsync_dir(root)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_text_atomically(path: Path, text: str) -> None:
    """Replace ``path`` so that readers see the old or the new content, never a mix."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def model_lock(models_dir: Path, name: str) -> Iterator[None]:
    """One writer per model at a time (publish, promote, rollback, prune), across processes."""
    folder = model_dir(models_dir, name)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _remove_stale_staging(folder: Path) -> None:
    # Only called under the model lock, so no other writer is using these.
    for stale in folder.glob(STAGING_PREFIX + "*"):
        shutil.rmtree(stale, ignore_errors=True)


@dataclass(frozen=True)
class PublishedVersion:
    name: str
    version: int
    path: Path
    promoted: bool


def publish_version(
    models_dir: Path,
    name: str,
    write_files: Callable[[Path, int], None],
    promote: bool,
) -> PublishedVersion:
    """Allocate the next version, let ``write_files(staging_dir, version)`` fill it, then rename it into place.

    ``write_files`` must write ``metadata.json`` last-or-any order; the version becomes visible only after the
    rename. With ``promote`` the ``current`` pointer moves to it.
    """
    folder = model_dir(models_dir, name)
    with model_lock(models_dir, name):
        _remove_stale_staging(folder)
        existing = [int(p.name) for p in folder.iterdir() if p.name.isdigit()]
        version = max(existing, default=0) + 1
        staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=folder))
        try:
            write_files(staging, version)
            if not (staging / METADATA_FILE).is_file():
                raise PublishError(f"{name} v{version}: no {METADATA_FILE} was written")
            staging.chmod(0o755)
            _fsync_tree(staging)
            os.rename(staging, folder / str(version))
            _fsync_dir(folder)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        if promote:
            write_text_atomically(folder / CURRENT_POINTER, f"{version}\n")
    return PublishedVersion(name, version, folder / str(version), promote)


def set_current(models_dir: Path, name: str, version: int) -> None:
    """Point ``current`` at an existing complete version (used by rollback)."""
    with model_lock(models_dir, name):
        if version not in list_versions(models_dir, name):
            raise PublishError(f"{name} has no complete version {version}; versions: {list_versions(models_dir, name)}")
        write_text_atomically(model_dir(models_dir, name) / CURRENT_POINTER, f"{version}\n")


def append_history(models_dir: Path, name: str, record: dict) -> None:
    """Append one decision to the model's history; a line is written whole or not at all."""
    record = {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **record}
    line = json.dumps(record, sort_keys=True) + "\n"
    folder = model_dir(models_dir, name)
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / HISTORY_FILE, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def prune_versions(models_dir: Path, name: str, keep: int) -> list[int]:
    """Delete all but the newest ``keep`` versions; the current version is never deleted."""
    if keep < 1:
        raise PublishError("keep must be at least 1")
    with model_lock(models_dir, name):
        versions = list_versions(models_dir, name)
        current = current_version(models_dir, name)
        doomed = [v for v in versions[:-keep] if v != current]
        for version in doomed:
            # Rename first so a reader never sees a half-deleted version folder.
            trash = model_dir(models_dir, name) / f"{STAGING_PREFIX}deleted-{version}"
            os.rename(model_dir(models_dir, name) / str(version), trash)
            shutil.rmtree(trash, ignore_errors=True)
    return doomed
