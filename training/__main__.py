"""Command line: ``python -m training train|evaluate|versions|retrain|trial|decide|rollback|schedule ...``."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from training.settings import TrainingSettings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's start-up chatter out of the progress


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def build_parser(settings: TrainingSettings) -> argparse.ArgumentParser:
    """The flags, with their defaults from ``settings`` (the environment; training/settings.py)."""
    from training.datasets import SPECS

    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__)
    parser.add_argument("--models-dir", type=Path, default=settings.models_dir,
                        help="where versions are published (env MODELS_DIR; default: %(default)s)")
    commands = parser.add_subparsers(dest="command", required=True)
    data_dir = {"type": Path, "default": settings.data_dir,
                "help": "local copy of the data (env DATA_DIR); default: Keras cache, then Keras download"}

    train = commands.add_parser("train", help="train a dataset's MLP, evaluate it on the test split, publish it")
    train.add_argument("dataset", choices=sorted(SPECS))
    train.add_argument("--data-dir", **data_dir)
    _add_run_options(train, epochs=None, seed_help="default: the recipe's")

    evaluate = commands.add_parser("evaluate", help="re-measure a published version on the test split")
    evaluate.add_argument("dataset", choices=sorted(SPECS))
    evaluate.add_argument("--version", type=int, help="default: the current version")
    evaluate.add_argument("--data-dir", **data_dir)

    versions = commands.add_parser("versions", help="list published versions and their test accuracy")
    versions.add_argument("dataset", choices=sorted(SPECS))

    retrain = commands.add_parser("retrain", help="train a candidate; promote it only if it is at least as good")
    retrain.add_argument("dataset", choices=sorted(SPECS))
    retrain.add_argument("--data-dir", **data_dir)
    _add_run_options(retrain, epochs=settings.retrain_epochs, seed_help="default: a new seed each run")
    _add_promotion_options(retrain, settings)
    retrain.add_argument("--stage", choices=("current", "candidate"), default=settings.retrain_stage,
                         help="current: promote a passing candidate; candidate: put it on trial beside the current "
                              "version, shadowed by the service, until `trial promote|reject` (default: "
                              "RETRAIN_STAGE)")

    trial = commands.add_parser("trial", help="end the trial of the version on trial: promote it or reject it")
    trial.add_argument("dataset", choices=sorted(SPECS))
    trial.add_argument("verdict", choices=("promote", "reject"))
    trial.add_argument("--url", action="append", help="a replica of the service (e.g. http://127.0.0.1:8000), "
                       "repeated for each: their live figures of the version on trial go to the history with the "
                       "decision")
    trial.add_argument("--api-key", help="the API key to read them with, if the service needs one")

    decide = commands.add_parser("decide", help="decide the trial of the version on trial on live evidence: "
                                 "promote it if every rule holds (docs/training.md#safe-rollout-a-trial-on-live-traffic-before-promotion), "
                                 "else reject it")
    decide.add_argument("dataset", choices=sorted(SPECS))
    decide.add_argument("--url", action="append", help="a replica whose live figures count, repeated for each "
                        "(default: TRIAL_SERVICE_URLS)")
    decide.add_argument("--prometheus", default=settings.trial_prometheus_url or None,
                        help="read the figures from this Prometheus instead, summed over every replica it scrapes "
                             "(default: TRIAL_PROMETHEUS_URL)")
    decide.add_argument("--api-key", default=settings.trial_api_key or None,
                        help="the API key to read the replicas' figures with (default: TRIAL_API_KEY)")
    decide.add_argument("--min-images", type=_positive, default=settings.trial_min_images)
    decide.add_argument("--min-agreement", type=float, default=settings.trial_min_agreement)
    decide.add_argument("--max-confidence-change", type=float, default=settings.trial_max_confidence_change)
    decide.add_argument("--feedback-dir", type=Path, default=settings.feedback_dir,
                        help="the service's feedback folder (env FEEDBACK_DIR; default: the models folder's own)")
    decide.add_argument("--database-url", default=settings.database_url or None)

    rollback = commands.add_parser("rollback", help="point 'current' back at an older version")
    rollback.add_argument("dataset", choices=sorted(SPECS))
    rollback.add_argument("version", type=int, nargs="?", help="default: the newest version before the current")

    reference = commands.add_parser("reference", help="record the monitoring reference in published versions "
                                    "made before it existed")
    reference.add_argument("dataset", choices=sorted(SPECS))
    reference.add_argument("--version", type=int, help="default: every published version")
    reference.add_argument("--data-dir", **data_dir)

    schedule = commands.add_parser("schedule", help="retrain on a schedule until stopped (settings: "
                                                    "docs/training.md)")
    schedule.add_argument("--once", action="store_true", help="run one round now and exit")
    return parser


def _add_run_options(command: argparse.ArgumentParser, epochs: int | None, seed_help: str) -> None:
    """What a training run may override: its length, its seed, and (for quick runs) how much data it uses."""
    command.add_argument("--epochs", type=_positive, default=epochs, help="default: the recipe's")
    command.add_argument("--seed", type=int, help=seed_help)
    command.add_argument("--train-limit", type=_positive, help="train on this many images only (quick runs)")
    command.add_argument("--test-limit", type=_positive, help="evaluate on this many test images only (quick runs)")


def _add_promotion_options(retrain: argparse.ArgumentParser, settings: TrainingSettings) -> None:
    """How a candidate is judged and what it learns from: the tolerance, the versions kept, production feedback."""
    retrain.add_argument("--tolerance", type=float, default=settings.tolerance,
                         help="promote if accuracy >= champion's - this (env RETRAIN_TOLERANCE; default %(default)s)")
    retrain.add_argument("--keep", type=_positive, default=settings.keep_versions,
                         help="versions to keep; the current one is never deleted (env KEEP_VERSIONS; default "
                              "%(default)s)")
    retrain.add_argument("--feedback-dir", type=Path, default=settings.feedback_folder,
                         help="the service's feedback folder (env FEEDBACK_DIR; default: %(default)s)")
    retrain.add_argument("--database-url", default=settings.database_url or None,
                         help="the feedback database, when not the folder's SQLite file (env DATABASE_URL)")
    retrain.add_argument("--feedback-weight", type=float, default=settings.feedback_weight,
                         help="loss weight of a feedback image relative to a public one (env FEEDBACK_WEIGHT; "
                              "default: %(default)s)")
    retrain.add_argument("--feedback-cap", type=int, default=settings.feedback_cap,
                         help="use at most this many of the newest feedback images (env FEEDBACK_CAP; default: "
                              "%(default)s)")
    retrain.add_argument("--no-feedback", action="store_true", help="train on the public data only")


def train(args, settings: TrainingSettings) -> int:
    from training.pipeline import train_command

    train_command(args.dataset, args.models_dir, args.data_dir, epochs=args.epochs, seed=args.seed,
                  train_limit=args.train_limit, test_limit=args.test_limit)
    return 0


def evaluate(args, settings: TrainingSettings) -> int:
    from training.pipeline import evaluate_command

    evaluate_command(args.dataset, args.models_dir, args.data_dir, args.version)
    return 0


def versions(args, settings: TrainingSettings) -> int:
    from training.pipeline import versions_command

    versions_command(args.dataset, args.models_dir)
    return 0


def retrain(args, settings: TrainingSettings) -> int:
    from training.retrain import FeedbackOptions, retrain_recording_failures

    feedback = None if args.no_feedback else FeedbackOptions(
        args.feedback_dir, args.database_url, args.feedback_weight, args.feedback_cap)
    retrain_recording_failures(args.dataset, args.models_dir, args.data_dir, tolerance=args.tolerance,
                               keep_versions=args.keep, feedback=feedback, epochs=args.epochs,
                               seed=args.seed, train_limit=args.train_limit, test_limit=args.test_limit,
                               stage=args.stage)
    return 0


def trial(args, settings: TrainingSettings) -> int:
    from contract.layout import candidate_version
    from training.retrain import end_trial
    from training.trial import figures_from_services

    evidence = None
    if args.url:
        version = candidate_version(args.models_dir, args.dataset)
        evidence = {"version": version, "shadow": figures_from_services(args.url, args.dataset, version,
                                                                        args.api_key).as_evidence()}
    end_trial(args.dataset, args.models_dir, args.verdict, evidence)
    return 0


def decide(args, settings: TrainingSettings) -> int:
    """Exit 0 when the candidate was promoted, 3 when it was rejected (a decision either way)."""
    from training.trial import TrialRules, decide as decide_trial

    rules = TrialRules(args.min_images, args.min_agreement, args.max_confidence_change)
    decision = decide_trial(args.dataset, args.models_dir, rules, args.url or list(settings.trial_service_urls),
                            args.prometheus, args.api_key, args.feedback_dir, args.database_url)
    return 0 if decision.promote else 3


def reference(args, settings: TrainingSettings) -> int:
    from contract.layout import list_versions
    from training.datasets import load_dataset
    from training.reference import add_reference

    dataset = load_dataset(args.dataset, args.data_dir)
    for version in [args.version] if args.version else list_versions(args.models_dir, args.dataset):
        profile = add_reference(args.models_dir, args.dataset, version, dataset)
        print(f"{args.dataset} v{version}: reference from {profile['source']}, mean top-1 probability "
              f"{profile['top1_probability_mean']:.3f}")
    return 0


def rollback(args, settings: TrainingSettings) -> int:
    from training.retrain import rollback as roll_back

    roll_back(args.dataset, args.models_dir, args.version)
    return 0


def schedule(args, settings: TrainingSettings) -> int:
    from training.schedule import main as schedule_main

    return schedule_main(settings, once=args.once)


COMMANDS = {"train": train, "evaluate": evaluate, "versions": versions, "retrain": retrain, "trial": trial,
            "decide": decide,
            "reference": reference, "rollback": rollback, "schedule": schedule}


def main(argv: list[str] | None = None) -> int:
    from contract.config import SettingError
    from training.datasets import DatasetError
    from training.publish import PublishError

    try:
        settings = TrainingSettings.from_env()
        args = build_parser(settings).parse_args(argv)
        return COMMANDS[args.command](args, settings)
    except (SettingError, DatasetError, PublishError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
