"""Fit a dataset's MLP and measure it honestly: the test split is touched once, after training."""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import keras
import numpy as np

from training.architectures import build_mlp
from training.augment import training_batches
from training.baseline import course_baseline
from training.compress import compress, effective_ranks
from training.datasets import Dataset
from training.feedback import FeedbackData
from training.evaluation import (
    calibration_figures,
    classification_metrics,
    fit_temperature,
    model_accuracy,
    reliability_bins,
    softmax,
)


@dataclass(frozen=True)
class TrainingConfig:
    """Everything that decides a training run; stored in the artifact's metadata."""

    dataset: str
    epochs: int
    hidden_units: tuple[int, ...]
    dropout: float
    batch_size: int = 128
    learning_rate: float = 2e-3
    weight_decay: float = 1e-4
    label_smoothing: float = 0.1
    flip: bool = True  # random horizontal flips of training images
    max_shift: int = 0  # random translation of training images by up to this many pixels
    mixup_alpha: float = 0.0  # MixUp of training images and labels, Beta(alpha, alpha); 0 turns it off
    max_background: float = 0.0  # random grey background and dimmed strokes, up to this much of the range
    course_baseline: bool = False  # also train and measure the course's first model (training/baseline.py)
    # After training, hidden layer i's kernel becomes its truncated SVD at ranks[i] (0: kept whole), so a served
    # image reads fewer weights (training/compress.py); () serves the wide model as trained.
    ranks: tuple[int, ...] = ()
    # Held out of the training split: the learning curves use all of it; its first fifth fits the temperature,
    # the rest the conformal thresholds and the out-of-distribution reference (``calibration_split``).
    validation_size: int = 5000
    seed: int = 0
    train_limit: int | None = None  # train on the first N (shuffled) images: quick runs and tests
    test_limit: int | None = None  # evaluate on the first N test images: quick runs and tests

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


# The shipped recipes; docs/training.md has their measured figures and training times.
DEFAULT_CONFIGS = {
    "fashion_mnist": TrainingConfig("fashion_mnist", epochs=60, hidden_units=(1024, 512), dropout=0.2,
                                    label_smoothing=0.0, max_shift=1, validation_size=6000, ranks=(256, 256)),
    "cifar10": TrainingConfig("cifar10", epochs=45, hidden_units=(1024, 512), dropout=0.2, batch_size=256,
                              max_shift=2, ranks=(128, 0)),
    # No flips: a mirrored digit is another shape. Grey backgrounds: a digit written in ink on paper is, once the
    # service has inverted it, a light stroke on the paper's grey, never on black (docs/training.md).
    "mnist": TrainingConfig("mnist", epochs=80, hidden_units=(1024, 512), dropout=0.2, flip=False, max_shift=2,
                            max_background=0.3, validation_size=1000, course_baseline=True, ranks=(256, 256)),
}


@dataclass
class TrainingResult:
    model: keras.Model
    config: TrainingConfig
    history: dict[str, list[float]]
    test_metrics: dict
    validation_metrics: dict | None
    test_inputs: np.ndarray  # float32 in [0, 1], exactly what the model was evaluated on
    test_labels: np.ndarray
    test_probabilities: np.ndarray
    standardization: dict
    duration_seconds: float
    calibration: dict | None = None
    extra: dict = field(default_factory=dict)
    # The validation images no step has fitted anything on: the conformal thresholds and the out-of-distribution
    # reference are fitted on them, with the served runtime's outputs, at publish time (training/uncertainty.py).
    holdout_inputs: np.ndarray | None = None
    holdout_labels: np.ndarray | None = None


def to_model_input(images: np.ndarray) -> np.ndarray:
    """uint8 pixels -> float32 in [0, 1]: the preprocessing contract the service implements."""
    return images.astype(np.float32) / np.float32(255.0)


class ProgressLine(keras.callbacks.Callback):
    """One line per epoch with the metrics, the epoch time and the time left."""

    def __init__(self, epochs: int, report: Callable[[str], None]):
        super().__init__()
        self.epochs = epochs
        self.report = report
        self.started = time.monotonic()

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        logs = logs or {}
        elapsed = time.monotonic() - self.started
        left = elapsed / (epoch + 1) * (self.epochs - epoch - 1)
        shown = "  ".join(f"{k} {v:.4f}" for k, v in logs.items() if k != "learning_rate")
        self.report(f"epoch {epoch + 1:>3}/{self.epochs}  {shown}  {elapsed / (epoch + 1):.1f}s/epoch  "
                    f"ETA {format_duration(left)}")


def format_duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def channel_statistics(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation of [0, 1] pixels, per channel (one value for gray images)."""
    scaled = images.reshape(len(images), -1, images.shape[-1] if images.ndim == 4 else 1) / 255.0
    mean = scaled.mean(axis=(0, 1))
    std = scaled.std(axis=(0, 1))
    if images.ndim == 3:
        return np.float32(mean[0]), np.float32(std[0])
    return mean.astype(np.float32), std.astype(np.float32)


@dataclass(frozen=True)
class Splits:
    """A run's images: training (less the validation hold-out), validation, test (uint8, as loaded)."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def split(dataset: Dataset, config: TrainingConfig) -> Splits:
    """A seeded shuffle of the training split, cut into training and a validation hold-out; the test split's
    first ``test_limit`` images (all of them by default)."""
    order = np.random.default_rng(config.seed).permutation(len(dataset.x_train))
    if config.train_limit:
        order = order[:config.train_limit]
    validation_size = min(config.validation_size, len(order) // 5)
    validation_idx, train_idx = order[:validation_size], order[validation_size:]
    test_count = config.test_limit or len(dataset.x_test)
    return Splits(dataset.x_train[train_idx], dataset.y_train[train_idx], dataset.x_train[validation_idx],
                  dataset.y_train[validation_idx], dataset.x_test[:test_count], dataset.y_test[:test_count])


# The share of the validation hold-out the temperature is fitted on: one parameter needs few images, while
# per-class conformal thresholds need hundreds of each class (docs/api.md#prediction-sets-unsure-and-out-of-distribution).
TEMPERATURE_SHARE = 0.2


def calibration_split(data: Splits) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """The validation hold-out cut in two: (images, labels) the temperature is fitted on, and (images, labels)
    kept for the conformal thresholds. A conformal guarantee needs calibration images the model, temperature
    included, was never fitted on."""
    cut = int(len(data.x_val) * TEMPERATURE_SHARE)
    return (data.x_val[:cut], data.y_val[:cut]), (data.x_val[cut:], data.y_val[cut:])


def with_feedback(x_train: np.ndarray, y_train: np.ndarray, feedback: FeedbackData | None,
                  report: Callable[[str], None]) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """The training images with production feedback appended, and per-image loss weights (None: all equal)."""
    if feedback is None or not len(feedback.y_train):
        return x_train, y_train, None
    weights = np.concatenate([np.ones(len(y_train), np.float32),
                              np.full(len(feedback.y_train), feedback.weight, np.float32)])
    report(f"feedback: {len(feedback.y_train)} production images added (loss weight {feedback.weight}), "
           f"{len(feedback.y_production)} held out")
    return np.concatenate([x_train, feedback.x_train]), np.concatenate([y_train, feedback.y_train]), weights


def compile_for(model: keras.Model, config: TrainingConfig, train_count: int) -> None:
    """AdamW with weight decay on a cosine schedule with a short warm-up, over the run's steps."""
    steps = config.epochs * math.ceil(train_count / config.batch_size)
    schedule = keras.optimizers.schedules.CosineDecay(
        0.0, decay_steps=steps, warmup_target=config.learning_rate, warmup_steps=max(1, steps // 20))
    model.compile(
        optimizer=keras.optimizers.AdamW(schedule, weight_decay=config.weight_decay),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=config.label_smoothing),
        metrics=["accuracy"],
    )


def train_and_evaluate(dataset: Dataset, config: TrainingConfig, report: Callable[[str], None] = print,
                       feedback: FeedbackData | None = None) -> TrainingResult:
    """Train on the training split (less a validation hold-out), then evaluate once on the test split.

    ``feedback`` adds production images to the training data, with their loss weight, and its held-out part
    is evaluated like the test split. Without it (or with none stored) the run is exactly the public one.
    """
    started = time.monotonic()
    keras.utils.set_random_seed(config.seed)
    _make_deterministic()
    data = split(dataset, config)
    mean, std = channel_statistics(data.x_train)
    classes = dataset.spec.classes
    model = build_mlp(dataset.spec.name, dataset.spec.image_shape, len(classes), config.hidden_units,
                      config.dropout, mean, std)
    x_train, y_train, weights = with_feedback(data.x_train, data.y_train, feedback, report)
    batches = training_batches(x_train, y_train, len(classes), config.batch_size, config.seed, config.flip,
                               config.max_shift, config.mixup_alpha, weights, config.max_background)
    compile_for(model, config, len(x_train))
    report(f"training {dataset.spec.name}: {len(x_train)} train / {len(data.x_val)} validation / "
           f"{len(data.x_test)} test images, {model.count_params():,} parameters, {config.epochs} epochs")
    validation_data = (to_model_input(data.x_val), keras.utils.to_categorical(data.y_val, len(classes))) \
        if len(data.x_val) else None
    fit = model.fit(batches, epochs=config.epochs, validation_data=validation_data, verbose=0, shuffle=False,
                    callbacks=[ProgressLine(config.epochs, report)])
    extra = {}
    if any(effective_ranks(int(np.prod(dataset.spec.image_shape)), config.hidden_units, config.ranks)):
        model, extra["compression"] = low_rank(model, config, data, report)
    measured = measure(model, data, classes, report)
    duration = time.monotonic() - started
    if feedback is not None and len(feedback.y_production):
        extra["production"] = production_figures(model, feedback)
    if config.course_baseline:
        extra["baseline"] = course_baseline(data, classes, config.seed, report)
    return TrainingResult(
        model=model,
        config=config,
        history={k: [float(v) for v in values] for k, values in fit.history.items() if k != "learning_rate"},
        standardization={"mean": np.atleast_1d(mean).tolist(), "std": np.atleast_1d(std).tolist()},
        duration_seconds=duration,
        extra=extra,
        **measured,
    )


def low_rank(wide: keras.Model, config: TrainingConfig, data: Splits,
             report: Callable[[str], None]) -> tuple[keras.Model, dict]:
    """The trained model factored to the recipe's ranks, and the record of it, with the wide model's test
    accuracy measured here, once, beside the factored model's."""
    factored, record = compress(wide, config.hidden_units, config.ranks, config.dropout,
                                to_model_input(data.x_val), data.y_val)
    record["test_accuracy_wide"] = model_accuracy(wide, to_model_input(data.x_test), data.y_test)
    report(f"factored to ranks {record['ranks']}: {record['weights_wide']:,} -> {record['weights']:,} weights"
           + (f", validation accuracy {record['validation_accuracy_wide']:.4f} -> {record['validation_accuracy']:.4f}"
              if "validation_accuracy" in record else ""))
    return factored, record


def measure(model: keras.Model, data: Splits, classes: tuple[str, ...], report: Callable[[str], None]) -> dict:
    """Calibrate on the first part of the validation hold-out, then measure once on the test split: the result's
    figures, with the rest kept for the conformal step."""
    test_inputs = to_model_input(data.x_test)
    calibration = validation_metrics = holdout_inputs = holdout_labels = None
    (x_temperature, y_temperature), (x_holdout, holdout_labels) = calibration_split(data)
    if len(x_temperature):
        val_inputs = to_model_input(x_temperature)
        calibration = calibrate(model, val_inputs, y_temperature, test_inputs, data.y_test)
        holdout_inputs = to_model_input(x_holdout)
    test_probabilities = model.predict(test_inputs, batch_size=1000, verbose=0)
    if calibration is not None:
        val_probabilities = model.predict(val_inputs, batch_size=1000, verbose=0)
        validation_metrics = classification_metrics(y_temperature, val_probabilities, classes)
        calibration["validation"]["after"] = calibration_figures(y_temperature, val_probabilities)
        calibration["test"]["after"] = calibration_figures(data.y_test, test_probabilities)
        report(f"calibration: temperature {calibration['temperature']:.4f}, validation ECE "
               f"{calibration['validation']['before']['ece']:.4f} -> {calibration['validation']['after']['ece']:.4f}")
    return {"test_metrics": classification_metrics(data.y_test, test_probabilities, classes),
            "validation_metrics": validation_metrics, "test_inputs": test_inputs, "test_labels": data.y_test,
            "test_probabilities": test_probabilities, "calibration": calibration,
            "holdout_inputs": holdout_inputs, "holdout_labels": holdout_labels if holdout_inputs is not None else None}


def production_figures(model: keras.Model, feedback: FeedbackData) -> dict:
    """The model's accuracy on the held-out production set, and what the feedback it learned from was."""
    production = model.predict(to_model_input(feedback.x_production), batch_size=1000, verbose=0)
    return {
        "samples": int(len(feedback.y_production)),
        "accuracy": float(np.mean(production.argmax(axis=1) == feedback.y_production)),
        "train_samples": int(len(feedback.y_train)),
        "weight": feedback.weight,
        "source": feedback.source,
    }


OUTPUT_LAYER = "probabilities"


def output_logits(model: keras.Model, inputs: np.ndarray) -> np.ndarray:
    """The final layer's inputs to its softmax, in float64: what a temperature divides."""
    layer = model.get_layer(OUTPUT_LAYER)
    features = keras.Model(model.inputs, layer.input).predict(inputs, batch_size=1000, verbose=0)
    kernel, bias = (keras.ops.convert_to_numpy(w).astype(np.float64) for w in (layer.kernel, layer.bias))
    return features.astype(np.float64) @ kernel + bias


def calibrate(model: keras.Model, val_inputs: np.ndarray, y_val: np.ndarray, test_inputs: np.ndarray,
              y_test: np.ndarray) -> dict:
    """Fit a temperature on the validation hold-out and bake it into the output layer (its kernel and bias
    divided by T), so Keras, the ONNX export and its int8 copy all give calibrated probabilities.

    Returns the temperature and the ECE/NLL before and after; the "after" figures are filled in by the caller
    from the calibrated model's own outputs.
    """
    val_logits = output_logits(model, val_inputs)
    test_logits = output_logits(model, test_inputs)
    temperature = round(fit_temperature(val_logits, y_val), 6)
    layer = model.get_layer(OUTPUT_LAYER)
    kernel, bias = (keras.ops.convert_to_numpy(w) for w in (layer.kernel, layer.bias))
    layer.kernel.assign((kernel / temperature).astype(np.float32))
    layer.bias.assign((bias / temperature).astype(np.float32))
    return {
        "method": "temperature scaling (Guo et al. 2017), fitted by NLL on the validation hold-out, "
                  "baked into the output layer's weights",
        "temperature": temperature,
        "validation": {"samples": int(len(y_val)), "before": calibration_figures(y_val, softmax(val_logits))},
        "test": {"samples": int(len(y_test)), "before": calibration_figures(y_test, softmax(test_logits)),
                 "reliability_before": reliability_bins(y_test, softmax(test_logits))},
    }


def _make_deterministic() -> None:
    import tensorflow as tf

    tf.config.experimental.enable_op_determinism()
