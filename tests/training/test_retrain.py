"""Champion/challenger promotion, rollback, pruning and the schedule, with real small trainings."""

import subprocess
import sys
import time
from datetime import datetime, timezone

import numpy as np
import pytest

from tests.conftest import ROOT
from training.pipeline import make_config, train_and_publish
from contract.layout import current_version, list_versions, read_history
from training.publish import version_metadata
from training.retrain import decide_promotion, retrain, rollback
from contract.config import parse_interval
from training.schedule import RetrainScheduler
from training.settings import TrainingSettings

CHAMPION = dict(epochs=3, hidden_units=(64, 32), train_limit=4000, test_limit=1000, validation_size=500, seed=0)
WEAK = dict(epochs=1, hidden_units=(8,), train_limit=300, test_limit=1000, validation_size=60, seed=0)


def test_promotion_rule():
    assert decide_promotion(0.80, None, 0.0).promote
    assert decide_promotion(0.80, 0.80, 0.0).promote
    assert not decide_promotion(0.79, 0.80, 0.0).promote
    assert decide_promotion(0.79, 0.80, 0.02).promote
    assert "candidate 0.7900 < champion 0.8000" in decide_promotion(0.79, 0.80, 0.005).reason


@pytest.fixture(scope="module")
def champion_dir(fashion, tmp_path_factory):
    models_dir = tmp_path_factory.mktemp("models")
    train_and_publish(fashion, make_config("fashion_mnist", **CHAMPION), models_dir, report=lambda line: None)
    return models_dir


def test_a_worse_candidate_is_published_but_not_promoted_and_tolerance_can_allow_it(champion_dir, fashion_dir):
    data_dir = fashion_dir.parent
    weak = retrain("fashion_mnist", champion_dir, data_dir, tolerance=0.0, report=lambda line: None, **WEAK)
    assert not weak.promoted and weak.version == 2 and weak.champion_version == 1
    assert weak.candidate_accuracy < weak.champion_accuracy
    assert current_version(champion_dir, "fashion_mnist") == 1 and list_versions(champion_dir, "fashion_mnist") == [1, 2]

    tolerant = retrain("fashion_mnist", champion_dir, data_dir, tolerance=1.0, report=lambda line: None, **WEAK)
    assert tolerant.promoted and current_version(champion_dir, "fashion_mnist") == 3

    history = [r for r in read_history(champion_dir, "fashion_mnist") if r["event"] == "retrain"]
    assert [(r["version"], r["promoted"]) for r in history] == [(2, False), (3, True)]
    assert history[0]["champion"] == {"version": 1, "accuracy": weak.champion_accuracy}
    assert history[0]["candidate"]["accuracy"] == weak.candidate_accuracy and "reason" in history[0]

    assert rollback("fashion_mnist", champion_dir, report=lambda line: None) == 2
    assert rollback("fashion_mnist", champion_dir, 1, report=lambda line: None) == 1
    assert current_version(champion_dir, "fashion_mnist") == 1
    assert read_history(champion_dir, "fashion_mnist")[-1]["event"] == "rollback"


def test_pruning_keeps_the_newest_and_never_the_current(champion_dir, fashion_dir):
    outcome = retrain("fashion_mnist", champion_dir, fashion_dir.parent, tolerance=0.0, keep_versions=2,
                      report=lambda line: None, **WEAK)
    assert not outcome.promoted
    # Versions 1 (current), 3 and 4 were candidates for the last two; 2 goes, 1 stays because it is current.
    assert list_versions(champion_dir, "fashion_mnist") == [1, 3, 4] and outcome.pruned == [2]


def test_a_retrain_killed_mid_run_leaves_nothing_visible(champion_dir, fashion_dir):
    before = (list_versions(champion_dir, "fashion_mnist"), current_version(champion_dir, "fashion_mnist"))
    process = subprocess.Popen(
        [sys.executable, "-u", "-m", "training", "--models-dir", str(champion_dir), "retrain", "fashion_mnist",
         "--data-dir", str(fashion_dir.parent), "--epochs", "50", "--train-limit", "3000", "--test-limit", "500"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 180
    for line in process.stdout:
        if line.startswith("epoch   1/") or time.monotonic() > deadline:
            break
    process.kill()
    process.wait(timeout=30)
    assert (list_versions(champion_dir, "fashion_mnist"), current_version(champion_dir, "fashion_mnist")) == before
    hidden = [p.name for p in (champion_dir / "fashion_mnist").iterdir()
              if not p.name.startswith(".") and p.name not in ("current", "history.jsonl")]
    assert sorted(hidden, key=int) == [str(v) for v in before[0]]


def test_interval_and_cron_schedules():
    assert parse_interval("90") == 90 and parse_interval("15m") == 900 and parse_interval("6h") == 21600
    with pytest.raises(ValueError):
        parse_interval("soon")
    start = datetime(2026, 1, 1, 10, 30, tzinfo=timezone.utc)
    cron = TrainingSettings(retrain_cron="0 3 * * *")
    assert cron.next_run(start) == datetime(2026, 1, 2, 3, 0, tzinfo=timezone.utc)
    every_minute = TrainingSettings.from_env({"RETRAIN_INTERVAL": "1m"})
    assert every_minute.next_run(start) == datetime(2026, 1, 1, 10, 31, tzinfo=timezone.utc)
    with pytest.raises(ValueError, match="RETRAIN_CRON"):
        TrainingSettings.from_env({"RETRAIN_CRON": "every tuesday"})
    with pytest.raises(ValueError, match="RETRAIN_INTERVAL='soon' is not a valid interval"):
        TrainingSettings.from_env({"RETRAIN_INTERVAL": "soon"})


def test_the_scheduler_survives_failed_runs_and_keeps_its_schedule(tmp_path):
    # An unknown dataset makes each real retrain process fail at once with exit code 2.
    settings = TrainingSettings(retrain_datasets=("no_such_dataset",), retrain_interval_seconds=10,
                                retrain_max_retries=1, retrain_retry_delay_seconds=0.001, models_dir=tmp_path)
    sleeps = []
    scheduler = RetrainScheduler(settings, sleep=lambda seconds: sleeps.append(seconds) or False)
    scheduler.run_forever(max_rounds=2)
    assert scheduler.rounds == 2
    retries = [s for s in sleeps if s < 1]
    assert len(retries) == 2 and all(0.0005 <= s <= 0.0015 for s in retries)  # one jittered retry per round
    assert len([s for s in sleeps if s > 9]) == 2  # and each round still waited for its turn


def test_promotion_needs_no_regression_on_the_production_set_too():
    assert decide_promotion(0.80, 0.80, 0.0, production=(0.70, 0.60)).promote
    refused = decide_promotion(0.81, 0.80, 0.0, production=(0.59, 0.60))
    assert not refused.promote and "on production feedback candidate 0.5900 < champion 0.6000" in refused.reason
    assert decide_promotion(0.81, 0.80, 0.02, production=(0.59, 0.60)).promote
    assert not decide_promotion(0.70, 0.80, 0.0, production=(0.99, 0.60)).promote  # the test split still rules


def test_the_production_split_is_a_fixed_share_of_ids():
    from contract.ids import input_id
    from training.feedback import in_production_set

    ids = [input_id(np.full((2, 2), i, np.float32)) for i in range(2000)]
    chosen = [in_production_set(i, 0.2) for i in ids]
    assert chosen == [in_production_set(i, 0.2) for i in ids]  # the same every time
    assert 0.17 < np.mean(chosen) < 0.23
    assert chosen != [in_production_set(i, 0.2, seed=1) for i in ids]


def test_no_feedback_store_means_no_feedback_and_nothing_created(tmp_path):
    from training.feedback import load_feedback

    data = load_feedback("fashion_mnist", ["a", "b"], (28, 28), tmp_path / ".feedback", None, 1.0, 100)
    assert data.empty and not (tmp_path / ".feedback").exists()


def test_stored_feedback_is_trained_on_and_judged_on_its_held_out_part(fashion, fashion_dir, tmp_path):
    from contract.feedback_store import FeedbackStore
    from contract.ids import input_id
    from training.retrain import FeedbackOptions

    models_dir = tmp_path / "models"
    train_and_publish(fashion, make_config("fashion_mnist", **CHAMPION), models_dir, report=lambda line: None)
    store = FeedbackStore(tmp_path / "feedback")
    # Real test images, inverted (light background): a kind of input the champion never saw.
    images = 255 - fashion.x_test[-400:]
    labels = fashion.y_test[-400:]
    for image, label in zip(images, labels):
        pixels = image.astype(np.float32) / np.float32(255)
        store.add_feedback(input_id(pixels), pixels, "fashion_mnist", 1, "Bag", fashion.spec.classes[int(label)])
    store.close()

    options = FeedbackOptions(folder=tmp_path / "feedback", weight=2.0)
    outcome = retrain("fashion_mnist", models_dir, fashion_dir.parent, tolerance=1.0, report=lambda line: None,
                      feedback=options,
                      **{**CHAMPION, "epochs": 2})
    production = outcome.production
    assert production["samples"] + production["train_samples"] == 400 and 50 < production["samples"] < 110
    assert production["weight"] == 2.0 and 0 <= production["champion"] <= 1 and 0 <= production["candidate"] <= 1
    record = read_history(models_dir, "fashion_mnist")[-1]
    assert record["production"] == production
    metadata = version_metadata(models_dir, "fashion_mnist", outcome.version).document
    assert metadata["metrics"]["production"]["samples"] == production["samples"]
    assert metadata["metrics"]["production"]["accuracy"] == production["candidate"]
    card = (models_dir / "fashion_mnist" / str(outcome.version) / "MODEL_CARD.md").read_text()
    assert "## Production feedback" in card

    # Without the store the same retrain is the plain one: no production figures anywhere.
    plain = retrain("fashion_mnist", models_dir, fashion_dir.parent, tolerance=1.0, report=lambda line: None,
                    feedback=None,
                    **{**CHAMPION, "epochs": 2})
    assert plain.production is None and "production" not in read_history(models_dir, "fashion_mnist")[-1]


def test_the_documented_training_settings_are_the_declared_ones():
    """docs/training.md shows exactly what training/settings.py declares (python -m training.settings writes it)."""
    from contract.config import markdown_table
    from tests.service.test_settings import documented_table

    assert documented_table("training.md") == markdown_table(TrainingSettings)


def test_the_command_line_takes_its_defaults_from_the_settings(monkeypatch):
    from training.__main__ import build_parser

    settings = TrainingSettings.from_env({"RETRAIN_TOLERANCE": "0.01", "KEEP_VERSIONS": "3", "FEEDBACK_CAP": "7",
                                          "MODELS_DIR": "/srv/models", "RETRAIN_STAGE": "candidate"})
    args = build_parser(settings).parse_args(["retrain", "cifar10"])
    assert (args.tolerance, args.keep, args.feedback_cap, str(args.models_dir)) == (0.01, 3, 7, "/srv/models")
    assert args.stage == "candidate"  # what the schedule's retrains inherit
    assert str(args.feedback_dir) == "/srv/models/.feedback"
    decide = build_parser(TrainingSettings.from_env({"FEEDBACK_DIR": "/srv/feedback", "TRIAL_MIN_IMAGES": "50"}))
    args = decide.parse_args(["decide", "cifar10"])
    assert (str(args.feedback_dir), args.min_images) == ("/srv/feedback", 50)  # judged on the service's feedback
    assert build_parser(TrainingSettings.from_env({})).parse_args(["decide", "cifar10"]).feedback_dir is None


def test_a_candidate_goes_on_trial_and_the_trial_ends_in_promotion_or_rejection(fashion, fashion_dir, tmp_path):
    from contract.layout import candidate_version
    from training.publish import PublishError, prune_versions
    from training.retrain import end_trial

    models_dir = tmp_path / "models"
    train_and_publish(fashion, make_config("fashion_mnist", **WEAK), models_dir, report=lambda line: None)
    quiet = dict(tolerance=1.0, report=lambda line: None, **WEAK)

    on_trial = retrain("fashion_mnist", models_dir, fashion_dir.parent, stage="candidate", **quiet)
    assert not on_trial.promoted and on_trial.version == 2
    assert current_version(models_dir, "fashion_mnist") == 1 and candidate_version(models_dir, "fashion_mnist") == 2
    assert read_history(models_dir, "fashion_mnist")[-1]["outcome"] == "candidate"
    retrain("fashion_mnist", models_dir, fashion_dir.parent, **quiet)  # v3 promoted the usual way
    retrain("fashion_mnist", models_dir, fashion_dir.parent, **quiet)  # v4
    assert prune_versions(models_dir, "fashion_mnist", 1) == [1, 3]  # the candidate (2) and current (4) stay

    assert end_trial("fashion_mnist", models_dir, "reject", {"images": 10}, report=lambda line: None) == 2
    assert current_version(models_dir, "fashion_mnist") == 4 and candidate_version(models_dir, "fashion_mnist") is None
    record = read_history(models_dir, "fashion_mnist")[-1]
    assert (record["event"], record["outcome"], record["evidence"]) == ("trial", "rejected", {"images": 10})
    with pytest.raises(PublishError, match="no version on trial"):
        end_trial("fashion_mnist", models_dir, "promote", report=lambda line: None)

    retrain("fashion_mnist", models_dir, fashion_dir.parent, stage="candidate", **quiet)  # v5 on trial
    assert end_trial("fashion_mnist", models_dir, "promote", report=lambda line: None) == 5
    assert current_version(models_dir, "fashion_mnist") == 5 and candidate_version(models_dir, "fashion_mnist") is None
    assert read_history(models_dir, "fashion_mnist")[-1]["outcome"] == "promoted"
