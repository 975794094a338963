"""Champion/challenger retraining: a candidate is published, and promoted only if it is at least as good.

The champion is re-measured on exactly the candidate's test images, so the comparison is like for like even
when the data changed since the champion was trained. Every decision goes to the model's history.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from training.datasets import load_dataset
from training.pipeline import evaluate_version, make_config, publish_result
from training.publish import (
    PublishError,
    append_history,
    current_version,
    list_versions,
    prune_versions,
    set_current,
)
from training.train import train_and_evaluate

DEFAULT_TOLERANCE = 0.0  # a candidate may be this much less accurate (absolute) and still be promoted
DEFAULT_KEEP_VERSIONS = 5


@dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str


def decide_promotion(candidate_accuracy: float, champion_accuracy: float | None, tolerance: float) -> Decision:
    """Promote when there is no champion, or the candidate is within ``tolerance`` of it or better."""
    if champion_accuracy is None:
        return Decision(True, "no current version to compare with")
    margin = candidate_accuracy - champion_accuracy
    if margin >= -tolerance:
        return Decision(True, f"candidate {candidate_accuracy:.4f} >= champion {champion_accuracy:.4f} "
                              f"- tolerance {tolerance:.4f}")
    return Decision(False, f"candidate {candidate_accuracy:.4f} < champion {champion_accuracy:.4f} "
                           f"- tolerance {tolerance:.4f}")


@dataclass(frozen=True)
class RetrainOutcome:
    version: int
    promoted: bool
    reason: str
    candidate_accuracy: float
    champion_version: int | None
    champion_accuracy: float | None
    pruned: list[int]


def retrain(
    name: str,
    models_dir: Path,
    data_dir: Path | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
    keep_versions: int = DEFAULT_KEEP_VERSIONS,
    report: Callable[[str], None] = print,
    **overrides,
) -> RetrainOutcome:
    """Train a candidate, compare it with the current version on the same test images, publish, maybe promote."""
    dataset = load_dataset(name, data_dir)
    if overrides.get("seed") is None:
        overrides["seed"] = int(time.time()) % 2**31  # a fresh candidate each run unless a seed is given
    config = make_config(name, **overrides)
    champion_version = current_version(models_dir, name)

    result = train_and_evaluate(dataset, config, report)
    champion_accuracy = None
    if champion_version is not None:
        # Same images as the candidate: the champion is re-measured, not trusted from its metadata.
        champion = evaluate_version(models_dir, name, dataset, champion_version,
                                    test_count=result.test_metrics["samples"])
        champion_accuracy = champion["measured"]["accuracy"]
    decision = decide_promotion(result.test_metrics["accuracy"], champion_accuracy, tolerance)
    published, metadata = publish_result(dataset, result, models_dir, promote=decision.promote)
    candidate_accuracy = metadata["metrics"]["test"]["accuracy"]
    append_history(models_dir, name, {
        "event": "retrain",
        "outcome": "promoted" if decision.promote else "kept",
        "version": published.version,
        "promoted": decision.promote,
        "reason": decision.reason,
        "tolerance": tolerance,
        "candidate": {"version": published.version, "accuracy": candidate_accuracy,
                      "samples": metadata["metrics"]["test"]["samples"], "seed": config.seed},
        "champion": {"version": champion_version, "accuracy": champion_accuracy},
    })
    pruned = prune_versions(models_dir, name, keep_versions)
    report(f"{name} v{published.version}: {'PROMOTED' if decision.promote else 'kept as challenger'} "
           f"({decision.reason}){'; pruned v' + ', v'.join(map(str, pruned)) if pruned else ''}")
    return RetrainOutcome(published.version, decision.promote, decision.reason, candidate_accuracy,
                          champion_version, champion_accuracy, pruned)


def retrain_recording_failures(name: str, models_dir: Path, *args, **kwargs) -> RetrainOutcome:
    """``retrain``, with a failed run recorded in the history too: the service's retraining metrics (and the
    alert on failed or missing retrains) read it, whatever started the run."""
    try:
        return retrain(name, models_dir, *args, **kwargs)
    except BaseException as exc:
        append_history(models_dir, name, {"event": "retrain", "outcome": "failed", "version": None,
                                          "promoted": False, "reason": f"{type(exc).__name__}: {exc}"})
        raise


def rollback(name: str, models_dir: Path, version: int | None = None,
             report: Callable[[str], None] = print) -> int:
    """Point ``current`` at ``version``, by default the newest complete version older than the current one."""
    current = current_version(models_dir, name)
    if version is None:
        older = [v for v in list_versions(models_dir, name) if current is None or v < current]
        if not older:
            raise PublishError(f"{name} has no version older than v{current} to roll back to")
        version = older[-1]
    set_current(models_dir, name, version)
    append_history(models_dir, name, {"event": "rollback", "version": version, "promoted": True,
                                      "reason": f"rolled back from v{current} by hand", "previous": current})
    report(f"{name}: current is now v{version} (was v{current})")
    return version
