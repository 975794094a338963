"""The rules that decide a trial on live evidence, and the schedule that waits out a trial's soak."""

from __future__ import annotations

import os
import shutil
import time

import pytest

from contract.layout import point_candidate, point_current
from tests.conftest import SHIPPED_MODELS
from training.schedule import RetrainScheduler
from training.settings import TrainingSettings
from training.trial import LiveFigures, SoakFeedback, TrialRules, judge_trial

RULES = TrialRules(min_images=1000, min_agreement=0.85, max_confidence_change=0.05)


def live(images=2000, agreement=0.95, served=0.90, candidate=0.92) -> LiveFigures:
    return LiveFigures(images, agreement * images, served * images, candidate * images)


def test_a_candidate_is_promoted_only_when_every_rule_holds():
    assert judge_trial(live(), None, RULES).promote
    assert judge_trial(live(), SoakFeedback(10, 7, 7, 0), RULES).promote  # a tie does not favour the champion
    for figures, feedback, failed in [
        (live(images=999), None, "999 images shadowed (at least 1000)"),
        (live(images=0), None, "0 images shadowed"),
        (live(agreement=0.84), None, "top-1 agreement 0.8400 (at least 0.85)"),
        (live(candidate=0.96), None, "mean top-1 probability 0.9600 vs 0.9000 (within 0.05)"),
        (live(candidate=0.84), None, "mean top-1 probability 0.8400 vs 0.9000"),
        (live(), SoakFeedback(10, 6, 7, 0), "soak feedback: candidate right on 6, current version on 7 of 10"),
    ]:
        decision = judge_trial(figures, feedback, RULES)
        assert not decision.promote and decision.reason.startswith("rejected on live evidence: " + failed)
    assert "no feedback arrived during the soak" in judge_trial(live(), SoakFeedback(0, 0, 0, 0), RULES).reason


def test_the_schedule_waits_out_a_trial_and_does_not_retrain_over_it(tmp_path):
    models_dir = tmp_path / "models"
    shutil.copytree(SHIPPED_MODELS / "fashion_mnist", models_dir / "fashion_mnist")
    point_current(models_dir, "fashion_mnist", 5)
    point_candidate(models_dir, "fashion_mnist", 6)
    began = time.time() - 100
    os.utime(models_dir / "fashion_mnist" / "candidate", (began, began))
    settings = TrainingSettings(models_dir=models_dir, retrain_datasets=("fashion_mnist",),
                                retrain_interval_seconds=3600, trial_soak_seconds=400)
    sleeps = []
    scheduler = RetrainScheduler(settings, sleep=lambda seconds: sleeps.append(seconds) or True)
    assert scheduler.trial_ends() == {"fashion_mnist": pytest.approx(began + 400)}
    assert scheduler.run_one("fashion_mnist")  # nothing started: the trial is under way
    assert scheduler.child is None
    assert scheduler.decide_due() == {}  # not yet
    scheduler.run_forever(max_rounds=1)
    assert sleeps and sleeps[0] == pytest.approx(300, abs=5)  # woken when the soak ends, before the round
