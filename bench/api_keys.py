"""API keys for benchmark targets: a key made with the service's own CLI (``python -m service keys add``) in a
keys file or a throwaway PostgreSQL server, and the settings a server needs to accept it.

``KEYS=`` in a ``bench/compare.py`` target picks one of ``SETUPS``: where the key is kept, and whether it has
quotas. Quotas are far above what one machine can send (a million requests a second, a billion images a
minute), so every request still takes from its buckets and none is refused.
"""

from __future__ import annotations

import glob
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SECRET = "bench-secret-" + secrets.token_hex(16)
NEVER_REFUSING = ["--requests-per-second", "1000000", "--burst", "1000000", "--images-per-minute", "1000000000"]
# name: (where the key is kept, whether it has quotas)
SETUPS = {"file": ("file", False), "file-quota": ("file", True),
          "postgres": ("postgres", False), "postgres-quota": ("postgres", True)}


def make_key(setup: str, folder: Path, name: str, postgres: Postgres | None = None) -> tuple[dict[str, str], str]:
    """The server settings for ``setup`` and a key made for them: (settings, key)."""
    if setup not in SETUPS:
        raise ValueError(f"KEYS={setup!r}: expected one of {', '.join(SETUPS)}")
    store, quotas = SETUPS[setup]
    settings = {"API_KEYS_SECRET": SECRET}
    if store == "file":
        settings["API_KEYS_FILE"] = str(folder / f"{name}-keys.json")
    else:
        settings |= {"API_KEYS_DATABASE": "1", "DATABASE_URL": postgres.url}
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("API_KEYS_", "DATABASE_URL"))}
    added = subprocess.run([sys.executable, "-m", "service", "keys", "add", name] + (NEVER_REFUSING if quotas else []),
                           cwd=ROOT, env=environment | settings, capture_output=True, text=True, check=True)
    return settings, added.stdout.strip()


class Postgres:
    """A throwaway PostgreSQL server from Debian's package on a free loopback port (as the package's user when
    run as root, since PostgreSQL refuses root), its data in a temporary folder removed by ``stop``."""

    def __init__(self, port: int):
        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
        if not found:
            raise RuntimeError("PostgreSQL is not installed (Debian package postgresql)")
        self.bindir = os.path.dirname(found[-1])
        self.folder = Path(tempfile.mkdtemp(prefix="bench-postgres-"))
        self.prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self.prefix:
            shutil.chown(self.folder, "postgres")
        data = self.folder / "data"
        subprocess.run(self.prefix + [f"{self.bindir}/initdb", "-D", str(data), "-U", "bench", "--auth=trust",
                                      "-E", "UTF8"], check=True, capture_output=True)
        subprocess.run(self.prefix + [f"{self.bindir}/pg_ctl", "-D", str(data), "-l", str(self.folder / "log"),
                                      "-w", "-o", f"-p {port} -k {self.folder} -c listen_addresses=127.0.0.1",
                                      "start"], check=True, capture_output=True)
        self.url = f"postgresql://bench@127.0.0.1:{port}/postgres"
        self.pid = int((data / "postmaster.pid").read_text().split()[0])  # its backends are its children

    def stop(self) -> None:
        subprocess.run(self.prefix + [f"{self.bindir}/pg_ctl", "-D", str(self.folder / "data"), "-m", "fast",
                                      "stop"], capture_output=True, check=False)
        shutil.rmtree(self.folder, ignore_errors=True)
