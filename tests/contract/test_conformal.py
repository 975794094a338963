"""Prediction sets: the APS scores, the thresholds, and the coverage they give on exchangeable data."""

import hashlib

import numpy as np
import pytest

from contract import conformal


def ids(count: int, salt: str = "") -> list[str]:
    return [hashlib.sha256(f"{salt}{i}".encode()).hexdigest() for i in range(count)]


def synthetic(count: int, classes: int = 5, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Calibrated probabilities: labels drawn from the probabilities themselves, with one hard class."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(count, classes)) * np.array([3.0, 3.0, 3.0, 3.0, 0.5])
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    labels = np.array([rng.choice(classes, p=row) for row in probabilities])
    return probabilities.astype(np.float32), labels


def test_a_class_score_is_the_mass_above_it_plus_u_times_its_own():
    p = np.array([[0.5, 0.2, 0.3], [0.25, 0.25, 0.5]])
    scores = conformal.class_scores(p, np.array([0.5, 0.0]))
    assert np.allclose(scores[0], [0.25, 0.8 + 0.1, 0.5 + 0.15])
    # equal probabilities rank by index: class 0 before class 1
    assert np.allclose(scores[1], [0.5, 0.75, 0.0])


def test_tie_breaks_are_uniform_and_fixed_by_the_id():
    u = conformal.tie_breaks(ids(4000))
    assert 0 <= u.min() and u.max() < 1 and abs(u.mean() - 0.5) < 0.02
    assert np.array_equal(u, conformal.tie_breaks(ids(4000)))


def test_the_threshold_is_the_conformal_rank_or_none_past_the_sample():
    scores = np.arange(1, 10) / 10  # 9 scores
    assert conformal.conformal_threshold(scores, 0.8) == pytest.approx(0.8)  # ceil(10 * 0.8) = 8th
    assert conformal.conformal_threshold(scores, 0.95) is None  # ceil(10 * 0.95) = 10 > 9


@pytest.mark.parametrize("guarantee", conformal.GUARANTEES)
def test_sets_cover_the_target_on_fresh_exchangeable_images(guarantee):
    cal_p, cal_y = synthetic(4000, seed=1)
    record = conformal.fit_thresholds(cal_p, cal_y, conformal.tie_breaks(ids(4000, "cal")), 5)
    thresholds = conformal.Thresholds(record)
    test_p, test_y = synthetic(20000, seed=2)
    u = conformal.tie_breaks(ids(20000, "test"))
    for level in (0.5, 0.8, 0.9, 0.95, 0.99):
        sets = conformal.prediction_sets(test_p, u, thresholds.for_level(level, guarantee))
        covered = sets[np.arange(len(test_y)), test_y]
        assert abs(covered.mean() - level) < 0.015, (level, covered.mean())
        if guarantee == "per_class":  # the hard class is covered too
            assert covered[test_y == 4].mean() > level - 0.05
    report = conformal.coverage_report(test_p, test_y, u, thresholds, tuple("abcde"))
    assert [row["coverage_target"] for row in report[guarantee]] == [0.8, 0.9, 0.95]


def test_marginal_coverage_fails_the_hard_class_and_per_class_does_not():
    cal_p, cal_y = synthetic(4000, seed=3)
    thresholds = conformal.Thresholds(conformal.fit_thresholds(cal_p, cal_y, conformal.tie_breaks(ids(4000)), 5))
    test_p, test_y = synthetic(20000, seed=4)
    u = conformal.tie_breaks(ids(20000, "t"))
    report = conformal.coverage_report(test_p, test_y, u, thresholds, tuple("abcde"), levels=(0.9,))
    assert report["per_class"][0]["min_class_coverage"] > report["marginal"][0]["min_class_coverage"]


def test_a_record_keeps_every_level_and_rounds_thresholds_up():
    p, y = synthetic(300, seed=5)
    record = conformal.fit_thresholds(p, y, conformal.tie_breaks(ids(300)), 5)
    assert record["levels"] == list(conformal.COVERAGE_LEVELS) and len(record["marginal"]) == 50
    assert len(record["per_class"]) == 5 and sum(record["samples_per_class"]) == 300
    exact = conformal.conformal_threshold(
        conformal.class_scores(p, conformal.tie_breaks(ids(300)))[np.arange(300), y], 0.9)
    assert exact <= record["marginal"][40] <= exact + 1e-9
