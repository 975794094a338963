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
from training.datasets import Dataset
from training.evaluation import classification_metrics


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
    validation_size: int = 5000  # held out of the training split for the learning curves
    seed: int = 0
    train_limit: int | None = None  # train on the first N (shuffled) images: quick runs and tests
    test_limit: int | None = None  # evaluate on the first N test images: quick runs and tests

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


# Recipes measured to reach the README's figures within 15 minutes on a 2-core CPU.
DEFAULT_CONFIGS = {
    "fashion_mnist": TrainingConfig("fashion_mnist", epochs=40, hidden_units=(512, 256), dropout=0.3,
                                    validation_size=3000),
    "cifar10": TrainingConfig("cifar10", epochs=35, hidden_units=(384, 256), dropout=0.2, max_shift=2),
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
    extra: dict = field(default_factory=dict)


def to_model_input(images: np.ndarray) -> np.ndarray:
    """uint8 pixels -> float32 in [0, 1]: the preprocessing contract the service implements."""
    return images.astype(np.float32) / np.float32(255.0)


class AugmentedBatches(keras.utils.PyDataset):
    """Shuffled mini-batches with random flips and shifts, reproducible from one seed."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, config: TrainingConfig):
        super().__init__(workers=1, use_multiprocessing=False)
        self.images = images
        self.labels = keras.utils.to_categorical(labels, 10).astype(np.float32)
        self.config = config
        self.rng = np.random.default_rng(config.seed)
        self.order = np.arange(len(images))
        self.on_epoch_end()

    def __len__(self) -> int:
        return math.ceil(len(self.images) / self.config.batch_size)

    def on_epoch_end(self) -> None:
        self.order = self.rng.permutation(len(self.images))

    def __getitem__(self, index: int):
        picked = self.order[index * self.config.batch_size:(index + 1) * self.config.batch_size]
        batch = self.images[picked].copy()
        if self.config.flip:
            flip = self.rng.random(len(batch)) < 0.5
            batch[flip] = batch[flip][:, :, ::-1]
        if self.config.max_shift:
            batch = random_shift(batch, self.config.max_shift, self.rng)
        return to_model_input(batch), self.labels[picked]


def random_shift(images: np.ndarray, max_shift: int, rng: np.random.Generator) -> np.ndarray:
    """Translate each image by up to ``max_shift`` pixels, filling with the edge pixels."""
    pad = [(0, 0), (max_shift, max_shift), (max_shift, max_shift)] + [(0, 0)] * (images.ndim - 3)
    padded = np.pad(images, pad, mode="edge")
    height, width = images.shape[1:3]
    dy = rng.integers(0, 2 * max_shift + 1, len(images))
    dx = rng.integers(0, 2 * max_shift + 1, len(images))
    out = np.empty_like(images)
    for oy in range(2 * max_shift + 1):
        for ox in range(2 * max_shift + 1):
            chosen = (dy == oy) & (dx == ox)
            out[chosen] = padded[chosen, oy:oy + height, ox:ox + width]
    return out


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


def train_and_evaluate(dataset: Dataset, config: TrainingConfig,
                       report: Callable[[str], None] = print) -> TrainingResult:
    """Train on the training split (less a validation hold-out), then evaluate once on the test split."""
    started = time.monotonic()
    keras.utils.set_random_seed(config.seed)
    _make_deterministic()

    order = np.random.default_rng(config.seed).permutation(len(dataset.x_train))
    if config.train_limit:
        order = order[:config.train_limit]
    validation_size = min(config.validation_size, len(order) // 5)
    validation_idx, train_idx = order[:validation_size], order[validation_size:]
    x_train, y_train = dataset.x_train[train_idx], dataset.y_train[train_idx]
    x_val, y_val = dataset.x_train[validation_idx], dataset.y_train[validation_idx]
    test_count = config.test_limit or len(dataset.x_test)
    x_test, y_test = dataset.x_test[:test_count], dataset.y_test[:test_count]

    mean, std = channel_statistics(x_train)
    model = build_mlp(dataset.spec.name, dataset.spec.image_shape, len(dataset.spec.classes),
                      config.hidden_units, config.dropout, mean, std)
    batches = AugmentedBatches(x_train, y_train, config)
    steps = config.epochs * len(batches)
    schedule = keras.optimizers.schedules.CosineDecay(
        0.0, decay_steps=steps, warmup_target=config.learning_rate, warmup_steps=max(1, steps // 20))
    model.compile(
        optimizer=keras.optimizers.AdamW(schedule, weight_decay=config.weight_decay),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=config.label_smoothing),
        metrics=["accuracy"],
    )
    report(f"training {dataset.spec.name}: {len(x_train)} train / {len(x_val)} validation / {len(x_test)} test "
           f"images, {model.count_params():,} parameters, {config.epochs} epochs")
    validation_data = (to_model_input(x_val), keras.utils.to_categorical(y_val, 10)) if len(x_val) else None
    fit = model.fit(batches, epochs=config.epochs, validation_data=validation_data, verbose=0,
                    callbacks=[ProgressLine(config.epochs, report)])

    test_inputs = to_model_input(x_test)
    test_probabilities = model.predict(test_inputs, batch_size=1000, verbose=0)
    validation_metrics = None
    if validation_data is not None:
        val_probabilities = model.predict(validation_data[0], batch_size=1000, verbose=0)
        validation_metrics = classification_metrics(y_val, val_probabilities, dataset.spec.classes)
    return TrainingResult(
        model=model,
        config=config,
        history={k: [float(v) for v in values] for k, values in fit.history.items() if k != "learning_rate"},
        test_metrics=classification_metrics(y_test, test_probabilities, dataset.spec.classes),
        validation_metrics=validation_metrics,
        test_inputs=test_inputs,
        test_labels=y_test,
        test_probabilities=test_probabilities,
        standardization={"mean": np.atleast_1d(mean).tolist(), "std": np.atleast_1d(std).tolist()},
        duration_seconds=time.monotonic() - started,
    )


def _make_deterministic() -> None:
    import tensorflow as tf

    tf.config.experimental.enable_op_determinism()
