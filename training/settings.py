"""Training's configuration: the command line's defaults and the retraining schedule, read from the environment.

Each setting is declared once, below; ``python -m training`` takes its flags' defaults from here, the schedule
runs with these, and the table in docs/training.md is ``python -m training.settings``'s output (a test keeps
them equal). Where the models and the feedback store are comes from ``contract.config.Locations``, which the
service reads too.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

from contract.config import Locations, SettingError, from_environment, markdown_table, parse_interval, setting


@dataclass(frozen=True)
class TrainingSettings(Locations):
    data_dir: Path | None = setting("DATA_DIR", None, "local copies of the datasets, as `--data-dir`; unset, the "
                                                      "Keras cache, then Keras' download")
    tolerance: float = setting("RETRAIN_TOLERANCE", 0.0, "a candidate is promoted if its accuracy is at least "
                                                         "the champion's minus this (`--tolerance`)", minimum=0)
    keep_versions: int = setting("KEEP_VERSIONS", 5, "versions kept per model; the current one is never deleted "
                                                     "(`--keep`)", minimum=1)
    feedback_weight: float = setting("FEEDBACK_WEIGHT", 1.0, "loss weight of a feedback image relative to a "
                                                             "public one (`--feedback-weight`)", above=0)
    feedback_cap: int = setting("FEEDBACK_CAP", 20_000, "the newest this-many feedback items are used "
                                                        "(`--feedback-cap`); `--no-feedback` uses none", minimum=0)
    retrain_datasets: tuple[str, ...] = setting("RETRAIN_DATASETS", ("fashion_mnist", "cifar10", "mnist"),
                                                "what each scheduled round retrains, in order")
    retrain_interval_seconds: float = setting("RETRAIN_INTERVAL", 86400.0, "time between scheduled rounds: "
                                              "`90s`, `15m`, `6h`, `1d`", parse=parse_interval, shown="`24h`")
    retrain_cron: str = setting("RETRAIN_CRON", "", "a cron expression (`0 3 * * *`); wins over the interval")
    retrain_stage: str = setting("RETRAIN_STAGE", "current", "`current`: a passing candidate is promoted; "
                                 "`candidate`: it is put on trial beside the current version, shadowed by the "
                                 "service, until `python -m training trial <dataset> promote|reject`",
                                 choices=("current", "candidate"))
    retrain_at_start: bool = setting("RETRAIN_AT_START", False, "also run a round when the schedule starts")
    retrain_epochs: int | None = setting("RETRAIN_EPOCHS", None, "override the recipe's epochs (quick demos)",
                                         minimum=1, shown="the recipe's")
    retrain_max_retries: int = setting("RETRAIN_MAX_RETRIES", 2, "retries of a failed scheduled run", minimum=0)
    retrain_retry_delay_seconds: float = setting("RETRAIN_RETRY_DELAY", 60.0, "first retry delay, doubled each "
                                                 "time, with ±50% jitter", parse=parse_interval, shown="`60s`")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides) -> TrainingSettings:
        return from_environment(cls, environ, **overrides)

    def cross_check(self) -> None:
        if self.retrain_cron:
            try:
                self.next_run(datetime.now(timezone.utc))  # a bad expression fails now, not at the first run
            except ValueError as exc:
                raise SettingError(f"RETRAIN_CRON: {exc}") from None

    def next_run(self, after: datetime) -> datetime:
        """When the schedule's next round starts: the cron expression's next time, else after the interval."""
        if self.retrain_cron:
            from croniter import croniter

            if not croniter.is_valid(self.retrain_cron):
                raise ValueError(f"not a cron expression: {self.retrain_cron!r}")
            return croniter(self.retrain_cron, after).get_next(datetime)
        return after + timedelta(seconds=self.retrain_interval_seconds)


if __name__ == "__main__":
    sys.stdout.write(markdown_table(TrainingSettings))
