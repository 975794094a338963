"""The out-of-distribution p-value: calibrated on in-distribution images, small for unlike ones."""

import numpy as np

from contract import ood


def images(count: int, mean: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(rng.normal(mean, 0.2, size=(count, 8, 8)), 0, 1).astype(np.float32)


def test_p_values_are_uniform_in_distribution_and_small_outside():
    rng = np.random.default_rng(0)
    record = ood.fit_record(images(2000, 0.4, 1), rng.chisquare(20, 2000), images(2000, 0.4, 2),
                            rng.chisquare(20, 2000))
    assert all(len(record["components"][name]) == ood.TABLE_POINTS for name in ood.STATISTICS)
    _, p_in = ood.ood_scores(record, images(5000, 0.4, 3), rng.chisquare(20, 5000))
    for level in (0.05, 0.1, 0.5):
        assert abs((p_in <= level).mean() - level) < 0.03
    score_out, p_out = ood.ood_scores(record, images(500, 0.4, 4), rng.chisquare(20, 500) + 60)
    assert (p_out <= 0.01).mean() > 0.9
    score_in, _ = ood.ood_scores(record, images(500, 0.4, 5), rng.chisquare(20, 500))
    assert ood.auroc(score_in, score_out) > 0.99


def test_the_reported_p_value_is_floored_at_one_over_the_reference_size():
    distribution = ood.Distribution(np.linspace(0, 1, ood.TABLE_POINTS), 999)
    p = distribution.upper(np.array([-1.0, 0.5, 2.0]))
    assert p[0] == 1.0 and abs(p[1] - 0.5) < 1e-9 and p[2] == 1 / 1000


def test_inside_the_score_tails_are_extrapolated_so_far_out_ranks_above_just_out():
    table = list(np.linspace(0, 1, ood.TABLE_POINTS))
    reference = ood.Reference({"components": {name: table for name in ood.STATISTICS}, "component_samples": 999,
                               "combined": table, "combined_samples": 999})
    values = np.array([0.5, 0.95, 1.5, 3.0])
    upper = reference.component_p_values({name: values for name in ood.STATISTICS})[0]
    assert abs(upper[0] - 0.5) < 1e-9 and upper[3] < upper[2] < upper[1] < 0.1
    values = np.array([0.5, -1.0, 2.0, -3.0])
    two = reference.component_p_values({name: values for name in ood.STATISTICS})[1]
    assert abs(two[0] - 1.0) < 1e-9 and two[3] < two[1] < 0.01 and abs(two[1] - two[2]) < 1e-9


def test_auroc_is_the_mann_whitney_statistic_with_ties_half():
    assert ood.auroc(np.array([0.0, 1.0]), np.array([2.0, 3.0])) == 1.0
    assert ood.auroc(np.array([1.0]), np.array([1.0])) == 0.5
    assert ood.auroc(np.array([0.0, 2.0]), np.array([1.0])) == 0.5


def test_one_image_at_a_time_scores_what_the_batch_does():
    rng = np.random.default_rng(7)
    record = ood.fit_record(images(1000, 0.4, 1), rng.chisquare(20, 1000), images(1000, 0.4, 2),
                            rng.chisquare(20, 1000))
    reference = ood.Reference(record)
    batch = np.concatenate([images(20, 0.4, 3), images(10, 0.9, 4)])
    distance = np.concatenate([rng.chisquare(20, 20), rng.chisquare(20, 10) + 40])
    scores, p_values = reference.scores(batch, distance)
    for i in range(len(batch)):
        one_score, one_p = reference.scores(batch[i:i + 1], distance[i:i + 1])
        assert abs(one_score[0] - scores[i]) < 1e-9 and abs(one_p[0] - p_values[i]) < 1e-12
    table = reference.components["feature_distance"]
    for value in (-1.0, table.points[0], table.points[50], 0.5 * (table.points[50] + table.points[51]), 1e9):
        assert table.below_one(value) == table.below(np.array([value]))[0]
