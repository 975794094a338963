"""The models folder, ``<models>/<name>/``: one folder per version, a ``current`` pointer, a history.

    <name>/<version>/        a complete version: its files and metadata.json (listed only once that exists)
    <name>/current           the version served, as text; replaced atomically, only ever names complete versions
    <name>/history.jsonl     every promotion, refusal, rollback and retrain, one JSON object a line, appended
    <name>/.staging-*        a version being written (hidden), renamed into place when complete
    <name>/.lock             held by one writer at a time
    .<anything>              not a model (the feedback store lives in .feedback)

Training writes with the functions below; the service reads with them; the tests build folders with them.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

CURRENT_POINTER = "current"
CANDIDATE_POINTER = "candidate"  # a version on trial beside the current one: shadowed, not yet served
HISTORY_FILE = "history.jsonl"
METADATA_FILE = "metadata.json"
STAGING_PREFIX = ".staging-"
LOCK_FILE = ".lock"
FEEDBACK_FOLDER = ".feedback"  # the default place of the feedback store, beside the models
TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"  # history and metadata times, UTC


def model_dir(models_dir: Path, name: str) -> Path:
    return Path(models_dir) / name


def version_dir(models_dir: Path, name: str, version: int) -> Path:
    return Path(models_dir) / name / str(version)


def published_models(models_dir: Path) -> list[str]:
    """Model names with a current pointer; dot-folders (staging, the feedback store) are never models."""
    folder = Path(models_dir)
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir()
                  if p.is_dir() and not p.name.startswith(".") and (p / CURRENT_POINTER).is_file())


def list_versions(models_dir: Path, name: str) -> list[int]:
    """Complete versions, oldest first (staging folders are hidden and never listed)."""
    folder = model_dir(models_dir, name)
    if not folder.is_dir():
        return []
    return sorted(int(p.name) for p in folder.iterdir()
                  if p.is_dir() and p.name.isdigit() and (p / METADATA_FILE).is_file())


def current_version(models_dir: Path, name: str) -> int | None:
    """The version ``current`` names, or None (no pointer, or not a number)."""
    return _pointed(models_dir, name, CURRENT_POINTER)


def candidate_version(models_dir: Path, name: str) -> int | None:
    """The version ``candidate`` names (on trial beside the current one), or None."""
    return _pointed(models_dir, name, CANDIDATE_POINTER)


def candidate_since(models_dir: Path, name: str) -> float | None:
    """When the current trial began: the ``candidate`` pointer's time of writing (it is replaced whole)."""
    try:
        return (model_dir(models_dir, name) / CANDIDATE_POINTER).stat().st_mtime
    except (FileNotFoundError, NotADirectoryError):
        return None


def _pointed(models_dir: Path, name: str, pointer: str) -> int | None:
    try:
        text = (model_dir(models_dir, name) / pointer).read_text().strip()
    except (FileNotFoundError, NotADirectoryError):
        return None
    return int(text) if text.isascii() and text.isdigit() else None


def read_history(models_dir: Path, name: str) -> list[dict]:
    """Every promotion, refusal and rollback, oldest first. A torn last line, left by a crash mid-write, is
    skipped."""
    path = model_dir(models_dir, name) / HISTORY_FILE
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            records.append(json.loads(line))
    return records


def append_history(models_dir: Path, name: str, record: dict) -> None:
    """Append one decision, stamped with the time unless it has one; a line is written whole or not at all."""
    record = {"time": time.strftime(TIME_FORMAT, time.gmtime()), **record}
    line = json.dumps(record, sort_keys=True) + "\n"
    folder = model_dir(models_dir, name)
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / HISTORY_FILE, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def sha256_file(path: Path) -> str:
    """A file's hash as metadata.json records it: ``sha256:<hex>``."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return "sha256:" + digest.hexdigest()


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    for path in sorted(root.rglob("*"), reverse=True):
        if path.is_file():
            with open(path, "rb") as f:
                os.fsync(f.fileno())
    fsync_dir(root)


def write_text_atomically(path: Path, text: str) -> None:
    """Replace ``path`` so that readers see the old or the new content, never a mix. Readable by everyone, as a
    version's files are: the service may run as another user than the job that writes (a shared volume)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    try:
        os.fchmod(fd, 0o644)  # mkstemp's files are private to their owner
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def point_current(models_dir: Path, name: str, version: int) -> None:
    """Make ``version`` (complete, already in place) the one served: the pointer is replaced in one rename."""
    write_text_atomically(model_dir(models_dir, name) / CURRENT_POINTER, f"{version}\n")


def point_candidate(models_dir: Path, name: str, version: int | None) -> None:
    """Put ``version`` (complete, already in place) on trial beside the current one, or end the trial (None)."""
    pointer = model_dir(models_dir, name) / CANDIDATE_POINTER
    if version is None:
        pointer.unlink(missing_ok=True)
        fsync_dir(pointer.parent)
    else:
        write_text_atomically(pointer, f"{version}\n")


def stage_version(models_dir: Path, name: str) -> Path:
    """A new hidden folder to write a version into; ``install_version`` renames it into place."""
    folder = model_dir(models_dir, name)
    folder.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=folder))


def install_version(staging: Path, models_dir: Path, name: str, version: int) -> Path:
    """Rename a complete staged version into place, after its files and folder are on disk."""
    target = version_dir(models_dir, name, version)
    staging.chmod(0o755)
    fsync_tree(staging)
    os.rename(staging, target)
    fsync_dir(target.parent)
    return target


def staged_folders(models_dir: Path, name: str) -> list[Path]:
    return sorted(model_dir(models_dir, name).glob(STAGING_PREFIX + "*"))


@contextlib.contextmanager
def model_lock(models_dir: Path, name: str) -> Iterator[None]:
    """One writer per model at a time (publish, promote, rollback, prune), across processes."""
    folder = model_dir(models_dir, name)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / LOCK_FILE, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
