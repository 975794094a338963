"""The periodic retraining loop: ``python -m training schedule``.

Each retrain runs as its own ``python -m training retrain`` process, one at a time, so a crash or an
out-of-memory kill in TensorFlow fails that run only: the loop logs it, retries with jittered backoff,
and the next scheduled run still happens. Publishing is atomic, so stopping mid-run is always safe.

With ``RETRAIN_STAGE=candidate`` a passing retrain is put on trial; the loop wakes when its ``TRIAL_SOAK`` is
over and decides it (``python -m training decide``, also its own process). A model whose trial is still under
way is not retrained, so a trial is never cut short by the next candidate.
"""

from __future__ import annotations

import logging
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone

from contract.layout import candidate_since, candidate_version
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


def decide_command(settings: TrainingSettings, dataset: str) -> list[str]:
    """One trial's decision as its own process; its rules and sources come from the same environment."""
    return [sys.executable, "-m", "training", "--models-dir", str(settings.models_dir), "decide", dataset]


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

    def trial_ends(self) -> dict[str, float]:
        """When each model's trial under way has soaked long enough to be decided (epoch seconds)."""
        ends = {}
        for dataset in self.settings.retrain_datasets:
            since = candidate_since(self.settings.models_dir, dataset)
            if since is not None and candidate_version(self.settings.models_dir, dataset) is not None:
                ends[dataset] = since + self.settings.trial_soak_seconds
        return ends

    def decide_due(self) -> dict[str, int]:
        """Decide every trial whose soak is over; the decisions' exit codes (0 promoted, 3 rejected)."""
        codes = {}
        for dataset, end in self.trial_ends().items():
            if end <= time.time() and not self.stopped.is_set():
                log.info("deciding the trial of %s", dataset)
                self.child = subprocess.Popen(decide_command(self.settings, dataset))
                codes[dataset] = self.child.wait()
                if codes[dataset] not in (0, 3):
                    log.error("deciding the trial of %s failed with exit code %s; it stays on trial", dataset,
                              codes[dataset])
        return codes

    def run_one(self, dataset: str) -> bool:
        """One retrain with retries; True when it succeeded (or was not due: a trial is under way)."""
        if dataset in self.trial_ends():
            log.info("%s has a version on trial: not retrained this round", dataset)
            return True
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
        self.decide_due()
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
            if self.sleep_until_round(next_run):
                break
            try:
                self.run_round()
            except Exception:  # a failure to even start a run must not end the schedule
                log.exception("retrain round failed")
        log.info("scheduler stopped")

    def sleep_until_round(self, next_run: datetime) -> bool:
        """Sleep until ``next_run``, deciding each trial when its soak ends meanwhile; True when stopped. A trial
        whose decision failed is tried again at the next round, not in a loop."""
        while True:
            self._decide_logging_failures()
            now = time.time()
            ends = [end for end in self.trial_ends().values() if end > now]
            wake = min([next_run.timestamp(), *ends])
            if self.sleep(max(0.0, wake - now)):
                return True
            if wake >= next_run.timestamp():
                return False

    def _decide_logging_failures(self) -> None:
        try:
            self.decide_due()
        except Exception:  # a failure to even start a decision must not end the schedule
            log.exception("deciding a trial failed")


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
