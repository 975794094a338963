"""The course's first model, trained beside the shipped recipe on the same images, as its baseline.

Flatten the 28x28 pixels (scaled to [0, 1]), one Dense(512, relu) layer, a softmax over the classes; RMSprop,
5 epochs, batches of 128, no augmentation, no standardization, no calibration. Its test accuracy is the first
row of the model card's comparison, so what the shipped recipe adds is measured, not claimed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import keras
import numpy as np

from training.evaluation import calibration_figures

if TYPE_CHECKING:
    from training.train import Splits

RECIPE = "Dense(512, relu) + softmax, RMSprop, 5 epochs, batch 128, no augmentation"
EPOCHS, BATCH_SIZE, UNITS = 5, 128, 512


def course_baseline(data: Splits, classes: tuple[str, ...], seed: int, report: Callable[[str], None]) -> dict:
    """Train the course's model on the run's training images; its validation and test accuracy."""
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input(data.x_train.shape[1:]), keras.layers.Flatten(),
                              keras.layers.Dense(UNITS, activation="relu"),
                              keras.layers.Dense(len(classes), activation="softmax")])
    model.compile(optimizer="rmsprop", loss="categorical_crossentropy", metrics=["accuracy"])
    model.fit(data.x_train / 255.0, keras.utils.to_categorical(data.y_train, len(classes)), epochs=EPOCHS,
              batch_size=BATCH_SIZE, verbose=0)
    figures = {"recipe": RECIPE}
    for split, images, labels in (("validation", data.x_val, data.y_val), ("test", data.x_test, data.y_test)):
        if len(images):
            probabilities = model.predict(images / 255.0, batch_size=1000, verbose=0)
            figures[f"{split}_accuracy"] = float(np.mean(probabilities.argmax(axis=1) == labels))
            figures[f"{split}_ece"] = calibration_figures(labels, probabilities)["ece"]
    figures["test_samples"] = int(len(data.y_test))
    report(f"course baseline ({RECIPE}): test accuracy {figures.get('test_accuracy', float('nan')):.4f}")
    return figures
