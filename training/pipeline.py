"""The steps a command runs end to end: load data, train, evaluate, publish."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

from contract.layout import append_history, current_version, list_versions, version_dir
from training.artifact import write_artifact
from training.datasets import Dataset, load_dataset
from training.publish import PublishError, PublishedVersion, publish_version, version_metadata
from training.train import DEFAULT_CONFIGS, TrainingConfig, TrainingResult, format_duration, train_and_evaluate


def make_config(dataset: str, **overrides) -> TrainingConfig:
    """The dataset's default recipe with the given fields replaced (``None`` values are ignored)."""
    return dataclasses.replace(DEFAULT_CONFIGS[dataset], **{k: v for k, v in overrides.items() if v is not None})


def publish_result(dataset: Dataset, result: TrainingResult, models_dir: Path,
                   promote: bool) -> tuple[PublishedVersion, dict]:
    """Export, verify and publish a trained result as a new version; ``promote`` makes it current."""
    holder: dict = {}

    def write(folder: Path, version: int) -> None:
        holder["metadata"] = write_artifact(folder, version, dataset, result)

    published = publish_version(models_dir, dataset.spec.name, write, promote=promote)
    return published, holder["metadata"]


def train_and_publish(
    dataset: Dataset,
    config: TrainingConfig,
    models_dir: Path,
    promote: bool = True,
    report: Callable[[str], None] = print,
) -> tuple[PublishedVersion, TrainingResult, dict]:
    """Train, verify the export, publish a new version; ``promote`` makes it current."""
    result = train_and_evaluate(dataset, config, report)
    published, metadata = publish_result(dataset, result, models_dir, promote)
    return published, result, metadata


def train_command(name: str, models_dir: Path, data_dir: Path | None, report: Callable[[str], None] = print,
                  **overrides) -> PublishedVersion:
    """``python -m training train``: a new version, made current, with a one-line summary."""
    dataset = load_dataset(name, data_dir)
    report(f"data: {dataset.source} ({dataset.fingerprint[:19]}...)")
    config = make_config(name, **overrides)
    published, result, metadata = train_and_publish(dataset, config, models_dir, promote=True, report=report)
    test = metadata["metrics"]["test"]
    append_history(models_dir, name, {
        "event": "train", "version": published.version, "promoted": True,
        "reason": "trained by hand with 'train'", "candidate": {"accuracy": test["accuracy"]},
    })
    report(f"{name} v{published.version}: test accuracy {test['accuracy']:.4f} on {test['samples']} images, "
           f"{metadata['training']['epochs_run']} epochs in {format_duration(result.duration_seconds)}, "
           f"published to {published.path} (current)")
    return published


def evaluate_version(models_dir: Path, name: str, dataset: Dataset, version: int | None = None,
                     test_count: int | None = None) -> dict:
    """Test metrics recomputed from a published version's saved Keras model, over its recorded test size
    (or the first ``test_count`` test images)."""
    import keras

    from training.artifact import KERAS_FILE
    from training.evaluation import calibration_figures, classification_metrics
    from training.train import to_model_input

    version = version or current_version(models_dir, name)
    if version is None:
        raise PublishError(f"{name} has no current version in {models_dir}")
    document = version_metadata(models_dir, name, version).document
    count = test_count or document["metrics"]["test"]["samples"]
    model = keras.models.load_model(version_dir(models_dir, name, version) / KERAS_FILE)
    probabilities = model.predict(to_model_input(dataset.x_test[:count]), batch_size=1000, verbose=0)
    measured = classification_metrics(dataset.y_test[:count], probabilities, dataset.spec.classes)
    recorded = dict(document["metrics"]["test"])
    if "calibration" in document:
        measured["calibration"] = calibration_figures(dataset.y_test[:count], probabilities)
        recorded["calibration"] = document["calibration"]["test"]["after"]
    return {"version": version, "recorded": recorded, "measured": measured}


def version_accuracy(models_dir: Path, name: str, version: int, images, labels) -> float:
    """A published version's accuracy on some uint8 images, from its saved Keras model (calibrated or not,
    the top-1 class is the same)."""
    import keras

    from training.artifact import KERAS_FILE
    from training.evaluation import model_accuracy
    from training.train import to_model_input

    model = keras.models.load_model(version_dir(models_dir, name, version) / KERAS_FILE)
    return model_accuracy(model, to_model_input(images), labels)


def evaluate_command(name: str, models_dir: Path, data_dir: Path | None, version: int | None,
                     report: Callable[[str], None] = print) -> dict:
    outcome = evaluate_version(models_dir, name, load_dataset(name, data_dir), version)
    recorded, measured = outcome["recorded"]["accuracy"], outcome["measured"]["accuracy"]
    report(f"{name} v{outcome['version']}: test accuracy {measured:.4f} on {outcome['measured']['samples']} images "
           f"(recorded {recorded:.4f}: {'same' if recorded == measured else 'DIFFERENT'})")
    return outcome


def versions_command(name: str, models_dir: Path, report: Callable[[str], None] = print) -> None:
    current = current_version(models_dir, name)
    for version in list_versions(models_dir, name):
        metadata = version_metadata(models_dir, name, version)
        marker = "*" if version == current else " "
        report(f"{marker} v{version}  test accuracy {metadata.test_accuracy:.4f}  "
               f"created {metadata.document['created_at']}")
