"""The periodic retraining loop: ``python -m training schedule``.

Each retrain runs as its own ``python -m training retrain`` process, one at a time, so a crash or an
out-of-memory kill in TensorFlow fails that run only: the loop logs it, retries with jittered backoff,
and the next scheduled run still happens. Publishing is atomic, so stopping mid-run is always safe.
"""

from __future__ import annotations

import logging
import random
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from datetime import datetime, timezone

from training.settings import TrainingSettings

log = logging.getLogger("training.schedule")


def retrain_command(settings: TrainingSettings, dataset: str) -> list[str]:
    """One scheduled retrain as its own process, with the schedule's settings as its flags."""
    command = [sys.executable, "-m", "training", "--models-dir", str(settings.models_dir), "retrain", dataset,
               "--tolerance", str(settings.tolerance), "--keep", str(settings.keep_versions)]
    if settings.retrain_epochs:
        command += ["--epochs", str(settings.retrain_epochs)]
    if settings.data_dir:
        command += ["--data-dir", str(settings.data_dir)]
    return command


class RetrainScheduler:
    """Runs the retrains of each scheduled round, one at a time, until stopped."""

    def __init__(self, settings: TrainingSettings, sleep: Callable[[float], bool] | None = None):
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
        retries = self.settings.retrain_max_retries
        for attempt in range(retries + 1):
            if self.stopped.is_set():
                return False
            log.info("retraining %s (attempt %d of %d)", dataset, attempt + 1, retries + 1)
            self.child = subprocess.Popen(retrain_command(self.settings, dataset))
            code = self.child.wait()
            if code == 0:
                log.info("retrain of %s finished", dataset)
                return True
            log.error("retrain of %s failed with exit code %s", dataset, code)
            if attempt < retries:
                delay = self.settings.retrain_retry_delay_seconds * (2 ** attempt) * random.uniform(0.5, 1.5)
                log.info("retrying %s in %.0fs", dataset, delay)
                if self.sleep(delay):
                    return False
        return False

    def run_round(self) -> dict[str, bool]:
        self.rounds += 1
        return {dataset: self.run_one(dataset) for dataset in self.settings.retrain_datasets}

    def run_forever(self, max_rounds: int | None = None) -> None:
        settings = self.settings
        log.info("scheduling retrains of %s %s", ", ".join(settings.retrain_datasets),
                 f"on cron '{settings.retrain_cron}'" if settings.retrain_cron
                 else f"every {settings.retrain_interval_seconds:.0f}s")
        if settings.retrain_at_start:
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


def main(settings: TrainingSettings, once: bool = False) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    scheduler = RetrainScheduler(settings)
    signal.signal(signal.SIGTERM, scheduler.stop)
    signal.signal(signal.SIGINT, scheduler.stop)
    if once:
        results = scheduler.run_round()
        return 0 if all(results.values()) else 1
    scheduler.run_forever()
    return 0
