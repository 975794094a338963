"""The periodic retraining loop: ``python -m training schedule``.

Each retrain runs as its own ``python -m training retrain`` process, one at a time, so a crash or an
out-of-memory kill in TensorFlow fails that run only: the loop logs it, retries with jittered backoff,
and the next scheduled run still happens. Publishing is atomic, so stopping mid-run is always safe.
"""

from __future__ import annotations

import logging
import os
import random
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

log = logging.getLogger("training.schedule")
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_interval(text: str) -> float:
    """'90', '90s', '15m', '6h' or '1d' -> seconds."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text)
    if not match or float(match.group(1)) <= 0:
        raise ValueError(f"not an interval: {text!r} (use e.g. 90s, 15m, 6h, 1d)")
    return float(match.group(1)) * UNITS[match.group(2) or "s"]


@dataclass(frozen=True)
class ScheduleSettings:
    """The schedule's settings, from the environment (names in the README)."""

    datasets: tuple[str, ...] = ("fashion_mnist", "cifar10")
    interval_seconds: float = 86400.0
    cron: str | None = None  # when set, wins over the interval
    run_at_start: bool = False
    tolerance: float = 0.0
    keep_versions: int = 5
    max_retries: int = 2
    retry_seconds: float = 60.0
    models_dir: Path = Path("models")
    data_dir: Path | None = None
    extra_args: tuple[str, ...] = field(default=())  # e.g. ("--epochs", "5") for a quick demo

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ScheduleSettings:
        env = os.environ if environ is None else environ
        extra: list[str] = []
        if env.get("RETRAIN_EPOCHS"):
            extra += ["--epochs", str(int(env["RETRAIN_EPOCHS"]))]
        settings = cls(
            datasets=tuple(d.strip() for d in env.get("RETRAIN_DATASETS", "fashion_mnist,cifar10").split(",")
                           if d.strip()),
            interval_seconds=parse_interval(env.get("RETRAIN_INTERVAL", "24h")),
            cron=env.get("RETRAIN_CRON") or None,
            run_at_start=env.get("RETRAIN_AT_START", "").lower() in ("1", "true", "yes", "on"),
            tolerance=float(env.get("RETRAIN_TOLERANCE", "0")),
            keep_versions=int(env.get("KEEP_VERSIONS", "5")),
            max_retries=int(env.get("RETRAIN_MAX_RETRIES", "2")),
            retry_seconds=parse_interval(env.get("RETRAIN_RETRY_DELAY", "60s")),
            models_dir=Path(env.get("MODELS_DIR", "models")),
            data_dir=Path(env["DATA_DIR"]) if env.get("DATA_DIR") else None,
            extra_args=tuple(extra),
        )
        if settings.cron:
            settings.next_run(datetime.now(timezone.utc))  # a bad expression fails now, not at the first run
        return settings

    def next_run(self, after: datetime) -> datetime:
        if self.cron:
            from croniter import croniter

            if not croniter.is_valid(self.cron):
                raise ValueError(f"not a cron expression: {self.cron!r}")
            return croniter(self.cron, after).get_next(datetime)
        return after + timedelta(seconds=self.interval_seconds)

    def retrain_command(self, dataset: str) -> list[str]:
        command = [sys.executable, "-m", "training", "--models-dir", str(self.models_dir), "retrain", dataset,
                   "--tolerance", str(self.tolerance), "--keep", str(self.keep_versions), *self.extra_args]
        if self.data_dir:
            command += ["--data-dir", str(self.data_dir)]
        return command


class RetrainScheduler:
    """Runs the retrains of each scheduled round, one at a time, until stopped."""

    def __init__(self, settings: ScheduleSettings, sleep: Callable[[float], bool] | None = None):
        self.settings = settings
        self.stopped = threading.Event()
        # Sleeping waits on the stop event, so a stop request ends any wait at once.
        self.sleep = sleep or (lambda seconds: self.stopped.wait(seconds))
        self.child: subprocess.Popen | None = None
        self.rounds = 0

    def stop(self, *_signal_args) -> None:
        self.stopped.set()
        if self.child and self.child.poll() is None:
            self.child.terminate()  # safe: a killed retrain publishes nothing

    def run_one(self, dataset: str) -> bool:
        """One retrain with retries; True when it succeeded."""
        for attempt in range(self.settings.max_retries + 1):
            if self.stopped.is_set():
                return False
            log.info("retraining %s (attempt %d of %d)", dataset, attempt + 1, self.settings.max_retries + 1)
            self.child = subprocess.Popen(self.settings.retrain_command(dataset))
            code = self.child.wait()
            if code == 0:
                log.info("retrain of %s finished", dataset)
                return True
            log.error("retrain of %s failed with exit code %s", dataset, code)
            if attempt < self.settings.max_retries:
                delay = self.settings.retry_seconds * (2 ** attempt) * random.uniform(0.5, 1.5)
                log.info("retrying %s in %.0fs", dataset, delay)
                if self.sleep(delay):
                    return False
        return False

    def run_round(self) -> dict[str, bool]:
        self.rounds += 1
        return {dataset: self.run_one(dataset) for dataset in self.settings.datasets}

    def run_forever(self, max_rounds: int | None = None) -> None:
        settings = self.settings
        log.info("scheduling retrains of %s %s", ", ".join(settings.datasets),
                 f"on cron '{settings.cron}'" if settings.cron else f"every {settings.interval_seconds:.0f}s")
        if settings.run_at_start:
            self.run_round()
        while not self.stopped.is_set() and (max_rounds is None or self.rounds < max_rounds):
            now = datetime.now(timezone.utc)
            next_run = settings.next_run(now)
            log.info("next retrain round at %s", next_run.isoformat(timespec="seconds"))
            if self.sleep(max(0.0, (next_run - now).total_seconds())):
                break
            try:
                self.run_round()
            except Exception:  # a failure to even start a run must not end the schedule
                log.exception("retrain round failed")
        log.info("scheduler stopped")


def main(once: bool = False) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = ScheduleSettings.from_env()
    except ValueError as exc:
        log.error("bad schedule settings: %s", exc)
        return 2
    scheduler = RetrainScheduler(settings)
    signal.signal(signal.SIGTERM, scheduler.stop)
    signal.signal(signal.SIGINT, scheduler.stop)
    if once:
        results = scheduler.run_round()
        return 0 if all(results.values()) else 1
    scheduler.run_forever()
    return 0
