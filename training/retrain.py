"""Champion/challenger retraining: a candidate is published, and promoted only if it is at least as good.

The champion is re-measured on exactly the candidate's test images, so the comparison is like for like even
when the data changed since the champion was trained. Every decision goes to the model's history.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from contract.layout import append_history, candidate_version, current_version, list_versions, point_candidate
from training.datasets import load_dataset
from training.feedback import PRODUCTION_FRACTION, FeedbackData, load_feedback
from training.pipeline import evaluate_version, make_config, publish_result, version_accuracy
from training.publish import PublishError, prune_versions, set_current
from training.settings import TrainingSettings
from training.train import train_and_evaluate

DEFAULTS = TrainingSettings()  # the defaults of the settings declared in training/settings.py


@dataclass(frozen=True)
class FeedbackOptions:
    """Where the service's feedback is (FEEDBACK_DIR, DATABASE_URL) and how much of it training uses."""

    folder: Path | None = None  # default: the models folder's own (contract.config.Locations)
    database_url: str | None = None
    weight: float = DEFAULTS.feedback_weight
    cap: int = DEFAULTS.feedback_cap
    production_fraction: float = PRODUCTION_FRACTION


@dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str


def decide_promotion(candidate_accuracy: float, champion_accuracy: float | None, tolerance: float,
                     production: tuple[float, float] | None = None) -> Decision:
    """Promote when there is no champion, or the candidate is within ``tolerance`` of it or better on the test
    split and, when there is a production set, (candidate, champion) ``production``, on that too."""
    if champion_accuracy is None:
        return Decision(True, "no current version to compare with")
    margin = candidate_accuracy - champion_accuracy
    if margin >= -tolerance:
        reason = (f"candidate {candidate_accuracy:.4f} >= champion {champion_accuracy:.4f} "
                  f"- tolerance {tolerance:.4f}")
    else:
        return Decision(False, f"candidate {candidate_accuracy:.4f} < champion {champion_accuracy:.4f} "
                               f"- tolerance {tolerance:.4f}")
    if production is None:
        return Decision(True, reason)
    candidate_production, champion_production = production
    if candidate_production - champion_production >= -tolerance:
        return Decision(True, f"{reason}; on production feedback {candidate_production:.4f} >= "
                              f"{champion_production:.4f} - tolerance {tolerance:.4f}")
    return Decision(False, f"on production feedback candidate {candidate_production:.4f} < champion "
                           f"{champion_production:.4f} - tolerance {tolerance:.4f} (test: {reason})")


@dataclass(frozen=True)
class RetrainOutcome:
    version: int
    promoted: bool
    reason: str
    candidate_accuracy: float
    champion_version: int | None
    champion_accuracy: float | None
    pruned: list[int]
    production: dict | None = None


def retrain(
    name: str,
    models_dir: Path,
    data_dir: Path | None = None,
    tolerance: float = DEFAULTS.tolerance,
    keep_versions: int = DEFAULTS.keep_versions,
    report: Callable[[str], None] = print,
    feedback: FeedbackOptions | None = FeedbackOptions(),
    stage: str = "current",
    **overrides,
) -> RetrainOutcome:
    """Train a candidate, compare it with the current version on the same test images (and production set),
    publish, maybe promote. ``feedback=None`` ignores stored feedback. ``stage="candidate"`` puts a passing
    candidate on trial beside the current version instead of promoting it (the service shadows it; ``end_trial``
    promotes or rejects it)."""
    dataset = load_dataset(name, data_dir)
    production_data = stored_feedback(name, dataset, models_dir, feedback)
    if overrides.get("seed") is None:
        overrides["seed"] = int(time.time()) % 2**31  # a fresh candidate each run unless a seed is given
    config = make_config(name, **overrides)
    champion_version = current_version(models_dir, name)

    result = train_and_evaluate(dataset, config, report, production_data)
    champion_accuracy = None
    if champion_version is not None:
        # Same images as the candidate: the champion is re-measured, not trusted from its metadata.
        champion = evaluate_version(models_dir, name, dataset, champion_version,
                                    test_count=result.test_metrics["samples"])
        champion_accuracy = champion["measured"]["accuracy"]
    production = production_comparison(result, production_data, models_dir, name, champion_version)
    decision = decide_promotion(
        result.test_metrics["accuracy"], champion_accuracy, tolerance,
        (production["candidate"], production["champion"]) if production and production["champion"] is not None
        else None)
    on_trial = decision.promote and stage == "candidate"
    published, metadata = publish_result(dataset, result, models_dir, promote=decision.promote and not on_trial)
    if on_trial:
        point_candidate(models_dir, name, published.version)
    candidate_accuracy = metadata["metrics"]["test"]["accuracy"]
    append_history(models_dir, name, {
        "event": "retrain",
        "outcome": "candidate" if on_trial else "promoted" if decision.promote else "kept",
        "version": published.version,
        "promoted": decision.promote and not on_trial,
        "reason": decision.reason,
        "tolerance": tolerance,
        "candidate": {"version": published.version, "accuracy": candidate_accuracy,
                      "samples": metadata["metrics"]["test"]["samples"], "seed": config.seed},
        "champion": {"version": champion_version, "accuracy": champion_accuracy},
        **({"production": production} if production else {}),
    })
    pruned = prune_versions(models_dir, name, keep_versions)
    verdict = "ON TRIAL beside the current version" if on_trial else \
        "PROMOTED" if decision.promote else "kept as challenger"
    report(f"{name} v{published.version}: {verdict} "
           f"({decision.reason}){'; pruned v' + ', v'.join(map(str, pruned)) if pruned else ''}")
    return RetrainOutcome(published.version, decision.promote and not on_trial, decision.reason, candidate_accuracy,
                          champion_version, champion_accuracy, pruned, production)


def stored_feedback(name: str, dataset, models_dir: Path, feedback: FeedbackOptions | None) -> FeedbackData | None:
    """The model's production feedback, split for training and judging; None without any (or when ignored)."""
    if feedback is None:
        return None
    folder = feedback.folder or TrainingSettings(models_dir=models_dir).feedback_folder
    data = load_feedback(name, dataset.spec.classes, dataset.spec.image_shape, folder, feedback.database_url,
                         feedback.weight, feedback.cap, feedback.production_fraction)
    return None if data.empty else data


def production_comparison(result, production_data: FeedbackData | None, models_dir: Path, name: str,
                          champion_version: int | None) -> dict | None:
    """The candidate's and the champion's accuracy on the held-out production set, when there is one."""
    if "production" not in result.extra:
        return None
    figures = result.extra["production"]
    production = {"samples": figures["samples"], "candidate": figures["accuracy"], "champion": None,
                  "train_samples": figures["train_samples"], "weight": figures["weight"]}
    if champion_version is not None:
        production["champion"] = version_accuracy(models_dir, name, champion_version,
                                                  production_data.x_production, production_data.y_production)
    return production


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


def end_trial(name: str, models_dir: Path, verdict: str, evidence: dict | None = None,
              report: Callable[[str], None] = print, reason: str | None = None) -> int:
    """Promote the version on trial (``verdict="promote"``: it becomes current) or reject it; either way the
    trial ends and the decision goes to the history, with the live ``evidence`` (the service's figures) if given,
    and the ``reason`` (by default: decided by hand)."""
    version = candidate_version(models_dir, name)
    if version is None:
        raise PublishError(f"{name} has no version on trial (no candidate pointer)")
    current = current_version(models_dir, name)
    if verdict == "promote":
        set_current(models_dir, name, version)
    point_candidate(models_dir, name, None)
    append_history(models_dir, name, {
        "event": "trial", "outcome": "promoted" if verdict == "promote" else "rejected", "version": version,
        "promoted": verdict == "promote", "previous": current,
        "reason": reason or f"{'promoted' if verdict == 'promote' else 'rejected'} by hand after its trial beside "
                            f"v{current}",
        **({"evidence": evidence} if evidence else {})})
    report(f"{name} v{version}: {'promoted, current is now v' + str(version) if verdict == 'promote' else 'rejected'}"
           f" (v{current} {'was' if verdict == 'promote' else 'stays'} current)")
    return version
