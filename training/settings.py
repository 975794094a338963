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
                                 "service, until the schedule decides it after `TRIAL_SOAK` (or `python -m "
                                 "training decide|trial <dataset>`)", choices=("current", "candidate"))
    trial_soak_seconds: float = setting("TRIAL_SOAK", 21600.0, "how long a candidate is on trial before the "
                                        "schedule decides it by the rules below", parse=parse_interval, shown="`6h`")
    trial_min_images: int = setting("TRIAL_MIN_IMAGES", 1000, "a candidate is promoted only after shadowing at "
                                    "least this many live images, all replicas together", minimum=1)
    trial_min_agreement: float = setting("TRIAL_MIN_AGREEMENT", 0.85, "... and only if its top-1 label agrees with "
                                         "the current version's on at least this share of them", minimum=0,
                                         maximum=1)
    trial_max_confidence_change: float = setting("TRIAL_MAX_CONFIDENCE_CHANGE", 0.05, "... and its mean top-1 "
                                                 "probability on them is within this of the current version's; "
                                                 "feedback labelled during the soak must not favour the current "
                                                 "version either", minimum=0, maximum=1)
    trial_service_urls: tuple[str, ...] = setting("TRIAL_SERVICE_URLS", ("http://127.0.0.1:8000",), "the "
                                                  "replicas whose live figures are summed (comma-separated); "
                                                  "unused with `TRIAL_PROMETHEUS_URL`")
    trial_prometheus_url: str = setting("TRIAL_PROMETHEUS_URL", "", "a Prometheus that scrapes every replica: "
                                        "the live figures are its sums (for replicas behind one Service)")
    trial_api_key: str = setting("TRIAL_API_KEY", "", "the API key to read the replicas' figures with, when "
                                 "the service needs one", shown="unset")
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
