"""Where keys are kept: a JSON file (``API_KEYS_FILE``, one replica or a shared volume) or a table in the
feedback database (``API_KEYS_DATABASE``, service/access/database.py). Both are read by every worker and
looked at again at most every ``RECHECK_SECONDS``, so a key added or revoked from the CLI takes effect within
that, with no restart.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from service.access.keys import ApiKey

log = logging.getLogger("service.access")
RECHECK_SECONDS = 1.0
FILE_FORMAT = 1


class KeySource(Protocol):
    def lookup(self, key_id: str) -> ApiKey | None:
        """The live (not revoked) key with this id."""

    def keys(self) -> list[ApiKey]:
        """Every key, revoked ones too, oldest first."""

    def add(self, key: ApiKey) -> None: ...

    def revoke(self, name: str, now: float) -> bool: ...


class Recheck:
    """When keys are read again: at most every ``RECHECK_SECONDS``, by the first request to find them due, while
    the others go on with the keys already read."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self.lock = threading.Lock()
        self.checked_at = float("-inf")

    def if_due(self, reread: Callable[[], None]) -> None:
        if self.clock() - self.checked_at >= RECHECK_SECONDS:
            with self.lock:
                if self.clock() - self.checked_at >= RECHECK_SECONDS:
                    self.checked_at = self.clock()
                    reread()


class KeyFile:
    """Keys in one JSON file. Writers (the CLI) hold a lock beside it and replace the file whole, so a reader sees
    the old keys or the new, never half a file; readers notice a change by the file's inode, size and time."""

    def __init__(self, path: Path, clock: Callable[[], float] = time.monotonic, serving: bool = True):
        self.path = Path(path)
        self.recheck = Recheck(clock)
        self.signature: tuple | None = None
        self.live: dict[str, ApiKey] = {}
        if serving:  # a worker reads the keys before it serves; the CLI reads them when it edits them
            self.recheck.if_due(lambda: self._reload(strict=True))

    def lookup(self, key_id: str) -> ApiKey | None:
        self.recheck.if_due(lambda: self._reload(strict=False))
        return self.live.get(key_id)

    def _reload(self, strict: bool) -> None:
        """Read the file again if it changed. At start a broken file stops the worker (``strict``); later the
        keys already read stay in force and the error is logged, so a bad edit cannot open or close the door."""
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            if self.signature != "missing":
                log.warning("API_KEYS_FILE %s does not exist: no key is accepted until `python -m service keys "
                            "add` makes one", self.path)
            self.signature, self.live = "missing", {}
            return
        signature = (stat.st_ino, stat.st_size, stat.st_mtime_ns)
        if signature == self.signature:
            return
        try:
            keys = read_key_file(self.path)
        except (OSError, ValueError, KeyError, TypeError) as error:
            if strict:
                raise ValueError(f"API_KEYS_FILE {self.path} cannot be read: {error}") from None
            log.error("API_KEYS_FILE %s cannot be read, the keys read before stay in force: %s", self.path, error)
            return
        self.signature = signature
        self.live = {key.id: key for key in keys if key.revoked_at is None}

    def keys(self) -> list[ApiKey]:
        return read_key_file(self.path) if self.path.exists() else []

    def add(self, key: ApiKey) -> None:
        def change(keys: list[ApiKey]) -> list[ApiKey]:
            if any(k.name == key.name and k.revoked_at is None for k in keys):
                raise ValueError(f"a live key is already named {key.name!r}; revoke it first or pick another name")
            return keys + [key]
        self._rewrite(change)

    def revoke(self, name: str, now: float) -> bool:
        revoked = []

        def change(keys: list[ApiKey]) -> list[ApiKey]:
            updated = []
            for key in keys:
                if key.name == name and key.revoked_at is None:
                    key = ApiKey.from_record({**key.as_record(), "revoked_at": now})
                    revoked.append(key)
                updated.append(key)
            return updated
        self._rewrite(change)
        return bool(revoked)

    def _rewrite(self, change: Callable[[list[ApiKey]], list[ApiKey]]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_name(self.path.name + ".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            keys = change(self.keys())
            document = {"format": FILE_FORMAT, "keys": [key.as_record() for key in keys]}
            partial = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
            descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(descriptor, "w") as handle:
                json.dump(document, handle, indent=1)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(partial, self.path)


def read_key_file(path: Path) -> list[ApiKey]:
    document = json.loads(Path(path).read_text())
    if not isinstance(document, dict) or document.get("format") != FILE_FORMAT:
        raise ValueError(f"not a keys file of format {FILE_FORMAT} (made by `python -m service keys add`)")
    return [ApiKey.from_record(record) for record in document["keys"]]
