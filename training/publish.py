"""Versioned artifacts in ``models/<name>/<version>/``, published atomically.

A version is written into a hidden staging folder, fsynced, then renamed into place; the ``current`` pointer
is replaced last. A run killed at any moment leaves either nothing visible or a complete version, and the
pointer only ever names complete versions. Every decision about promotion is appended to ``history.jsonl``.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from contract.layout import (
    candidate_version,
    METADATA_FILE,
    STAGING_PREFIX,
    current_version,
    install_version,
    list_versions,
    model_dir,
    model_lock,
    point_current,
    stage_version,
    staged_folders,
    version_dir,
)
from contract.metadata import VersionMetadata, read_metadata


class PublishError(Exception):
    """A version could not be published, promoted or rolled back; nothing was changed."""


def _remove_stale_staging(models_dir: Path, name: str) -> None:
    # Only called under the model lock, so no other writer is using these.
    for stale in staged_folders(models_dir, name):
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
        _remove_stale_staging(models_dir, name)
        existing = [int(p.name) for p in folder.iterdir() if p.name.isdigit()]
        version = max(existing, default=0) + 1
        staging = stage_version(models_dir, name)
        try:
            write_files(staging, version)
            if not (staging / METADATA_FILE).is_file():
                raise PublishError(f"{name} v{version}: no {METADATA_FILE} was written")
            install_version(staging, models_dir, name, version)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        if promote:
            point_current(models_dir, name, version)
    return PublishedVersion(name, version, version_dir(models_dir, name, version), promote)


def set_current(models_dir: Path, name: str, version: int) -> None:
    """Point ``current`` at an existing complete version (used by rollback)."""
    with model_lock(models_dir, name):
        if version not in list_versions(models_dir, name):
            raise PublishError(f"{name} has no complete version {version}; versions: {list_versions(models_dir, name)}")
        point_current(models_dir, name, version)


def prune_versions(models_dir: Path, name: str, keep: int) -> list[int]:
    """Delete all but the newest ``keep`` versions; the current version and the candidate are never deleted."""
    if keep < 1:
        raise PublishError("keep must be at least 1")
    with model_lock(models_dir, name):
        versions = list_versions(models_dir, name)
        kept = {current_version(models_dir, name), candidate_version(models_dir, name)}
        doomed = [v for v in versions[:-keep] if v not in kept]
        for version in doomed:
            # Rename first so a reader never sees a half-deleted version folder.
            trash = model_dir(models_dir, name) / f"{STAGING_PREFIX}deleted-{version}"
            os.rename(version_dir(models_dir, name, version), trash)
            shutil.rmtree(trash, ignore_errors=True)
    return doomed


def version_metadata(models_dir: Path, name: str, version: int) -> VersionMetadata:
    return read_metadata(version_dir(models_dir, name, version))
