"""How unlike a version's in-distribution data an input is, as a p-value: pure maths both sides share.

Three statistics per image, each turned into a p-value against the same statistic on held-out images of the
training distribution (recorded in metadata.json at publish time):

- the feature distance: the Mahalanobis distance of the model's last hidden features to the nearest class mean
  (class means and a shared covariance fitted on training images), computed inside the served ONNX graph as its
  ``feature_distance`` output; large is unusual (one-sided);
- the mean intensity and the contrast the drift monitoring already measures (``contract.reference``); too low
  or too high is unusual (two-sided).

The smallest of the three decides (Tippett's method: the score is -ln of the smallest p-value), so one statistic
far out is enough; Fisher's sum of logs lets two ordinary statistics dilute an extreme one (measured on the
shipped models: docs/api.md#prediction-sets-unsure-and-out-of-distribution, ``bench/ood_scores.py``). The score is then referred to its own distribution on a second set of
held-out images, so the reported p-value is calibrated: for in-distribution inputs it is uniform, and a p-value
of 0.01 means one in-distribution image in a hundred looks at least this unusual.
"""

from __future__ import annotations

import bisect
import math

import numpy as np

from contract.reference import image_statistics

# The served graphs' second output (training/uncertainty.py), the first statistic below.
DISTANCE_OUTPUT = "feature_distance"
STATISTICS = (DISTANCE_OUTPUT, "mean_intensity", "contrast")
TWO_SIDED = frozenset({"mean_intensity", "contrast"})
TABLE_POINTS = 201  # quantiles at every half percent of the reference
METHOD = ("Tippett's combination (the smallest) of three empirical p-values against held-out in-distribution images: the "
          "Mahalanobis distance of the last hidden features to the nearest class mean (shared covariance), and "
          "the mean intensity and the contrast (two-sided); the combination referred to its own distribution on "
          "a second held-out set")


def verification_distance_key(outputs_key: str) -> str:
    """Where verification.npz keeps the distances of the runtime whose probabilities it keeps under
    ``outputs_key``: "probabilities" -> "feature_distance", "probabilities_onnx_int8" -> "feature_distance_onnx_int8"."""
    return DISTANCE_OUTPUT + outputs_key.removeprefix("probabilities")


def quantile_table(values: np.ndarray) -> list[float]:
    """The reference distribution, as metadata.json keeps it: its quantiles at every half percent."""
    return [float(f"{x:.7g}") for x in np.quantile(np.asarray(values, np.float64), np.linspace(0, 1, TABLE_POINTS))]


class Distribution:
    """One quantile table, prepared once: P(value >= x) by linear interpolation between its points, and
    (``tail``) with an exponential upper tail past its 90th percentile, whose scale is the mean excess the
    table's top tenth shows. Inside the score a value past everything the reference held keeps growing less
    likely instead of sticking at the last quantile, so inputs far out are still told apart from inputs just out.

    Every method has a vectorized form and a per-value one (``*_one``, plain Python: a request of one image pays
    microseconds, not NumPy's per-call overhead); both compute the same formula."""

    def __init__(self, table, samples: int):
        self.table = np.asarray(table, dtype=np.float64)
        self.points = self.table.tolist()
        self.step = 1.0 / (len(self.points) - 1)
        self.floor = 1.0 / (samples + 1)
        start = int(round(0.9 * (len(self.points) - 1)))
        self.knee, self.knee_p = self.points[start], 1.0 - start * self.step
        self.scale = max(float(np.mean(self.table[start:] - self.knee)), 1e-12)

    def below(self, values: np.ndarray) -> np.ndarray:
        """The share of the reference below each value (interpolated; repeated points take the last one)."""
        values = np.asarray(values, dtype=np.float64)
        index = np.searchsorted(self.table, values, side="right")
        inner = np.clip(index, 1, len(self.points) - 1)
        low, high = self.table[inner - 1], self.table[inner]
        share = (inner - 1 + (values - low) / np.where(high > low, high - low, 1.0)) * self.step
        return np.where(index == 0, 0.0, np.where(index >= len(self.points), 1.0, share))

    def below_one(self, value: float) -> float:
        points = self.points
        if value < points[0]:
            return 0.0
        if value >= points[-1]:
            return 1.0
        index = bisect.bisect_right(points, value)
        low, high = points[index - 1], points[index]
        return (index - 1 + (value - low) / (high - low)) * self.step

    def upper(self, values: np.ndarray) -> np.ndarray:
        """The reported p-value: no claim goes past what the reference can show (floored at 1 / (n + 1))."""
        return np.maximum(1.0 - self.below(values), self.floor)

    def upper_one(self, value: float) -> float:
        return max(1.0 - self.below_one(value), self.floor)

    def tail(self, values: np.ndarray) -> np.ndarray:
        values = np.asarray(values, dtype=np.float64)
        far = np.exp(-(np.maximum(values, self.knee) - self.knee) / self.scale) * self.knee_p
        return np.maximum(np.where(values > self.knee, far, 1.0 - self.below(values)), 1e-300)

    def tail_one(self, value: float) -> float:
        if value > self.knee:
            return max(math.exp(-(value - self.knee) / self.scale) * self.knee_p, 1e-300)
        return max(1.0 - self.below_one(value), 1e-300)


class Reference:
    """A version's record (``out_of_distribution`` in metadata.json), prepared for scoring."""

    SMALL_BATCH = 4  # up to this many images, the per-value path is faster

    def __init__(self, record: dict):
        samples = int(record["component_samples"])
        self.components = {name: Distribution(record["components"][name], samples) for name in STATISTICS}
        # A two-sided statistic's lower tail is the upper tail of its negation.
        self.negated = {name: Distribution(-self.components[name].table[::-1], samples) for name in TWO_SIDED}
        self.combined = Distribution(record["combined"], int(record["combined_samples"]))

    def component_p_values(self, statistics: dict[str, np.ndarray]) -> list[np.ndarray]:
        p_values = []
        for name in STATISTICS:
            values = np.asarray(statistics[name], dtype=np.float64)
            p = self.components[name].tail(values)
            if name in TWO_SIDED:
                p = np.minimum(2.0 * np.minimum(p, self.negated[name].tail(-values)), 1.0)
            p_values.append(p)
        return p_values

    def _score_one(self, statistics: tuple[float, float, float]) -> float:
        smallest = 1.0
        for name, value in zip(STATISTICS, statistics):
            p = self.components[name].tail_one(value)
            if name in TWO_SIDED:
                p = min(2.0 * min(p, self.negated[name].tail_one(-value)), 1.0)
            smallest = min(smallest, p)
        return -math.log(smallest)

    def scores(self, batch: np.ndarray, feature_distance: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per image of a normalized batch: (score, p-value). The score is -ln of the smallest p-value (higher is
        more unusual); the p-value is how often a held-out in-distribution image scored at least as high."""
        statistics = input_statistics(batch, feature_distance)
        if len(batch) <= self.SMALL_BATCH:
            rows = zip(*(statistics[name].tolist() for name in STATISTICS))
            score = [self._score_one(row) for row in rows]
            return np.array(score), np.array([self.combined.upper_one(s) for s in score])
        score = combined_score(self.component_p_values(statistics))
        return score, self.combined.upper(score)


def combined_score(p_values: list[np.ndarray]) -> np.ndarray:
    """-ln of the smallest p-value: large when any statistic is far out."""
    return -np.log(np.minimum(np.minimum(p_values[0], p_values[1]), p_values[2]))


def component_p_values(record: dict, statistics: dict[str, np.ndarray]) -> list[np.ndarray]:
    return Reference(record).component_p_values(statistics)


def input_statistics(batch: np.ndarray, feature_distance: np.ndarray) -> dict[str, np.ndarray]:
    means, contrasts = image_statistics(batch)
    return {"feature_distance": np.asarray(feature_distance, np.float64), "mean_intensity": means,
            "contrast": contrasts}


def ood_scores(record: dict, batch: np.ndarray, feature_distance: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``Reference(record).scores``: for one-off use (training); the service prepares the Reference once."""
    return Reference(record).scores(batch, feature_distance)


def fit_record(batch_a: np.ndarray, distance_a: np.ndarray, batch_b: np.ndarray, distance_b: np.ndarray) -> dict:
    """The metadata.json record from two disjoint held-out sets: the components' tables from the first, the
    combination's from the second."""
    components = {name: quantile_table(values) for name, values in input_statistics(batch_a, distance_a).items()}
    record = {"method": METHOD, "components": components, "component_samples": int(len(batch_a)),
              "combined_samples": int(len(batch_b))}
    score = combined_score(Reference({**record, "combined": [0.0, 1.0]}).component_p_values(
        input_statistics(batch_b, distance_b)))
    record["combined"] = quantile_table(score)
    return record


def auroc(in_scores: np.ndarray, out_scores: np.ndarray) -> float:
    """The probability that an out-of-distribution image scores higher than an in-distribution one (ties half):
    the Mann-Whitney statistic."""
    values = np.concatenate([in_scores, out_scores]).astype(np.float64)
    order = np.argsort(values, kind="mergesort")
    ranks = np.empty(len(values))
    _, first, counts = np.unique(values[order], return_index=True, return_counts=True)
    ranks[order] = np.repeat(first + (counts + 1) / 2.0, counts)
    n_in, n_out = len(in_scores), len(out_scores)
    return float((ranks[n_in:].sum() - n_out * (n_out + 1) / 2) / (n_in * n_out))
