"""The MLP definitions: dense-only networks over flattened, standardized pixels."""

from __future__ import annotations

from collections.abc import Sequence

import keras
import numpy as np
from keras import layers


def build_mlp(
    name: str,
    input_shape: Sequence[int],
    num_classes: int,
    hidden_units: Sequence[int],
    dropout: float,
    channel_mean: np.ndarray,
    channel_std: np.ndarray,
    ranks: Sequence[int] = (),
) -> keras.Model:
    """Flatten -> standardize -> [Dense -> BatchNorm -> ReLU -> Dropout] x N -> Dense softmax.

    The input is the service's contract: pixels scaled to [0, 1]. Standardization lives inside the model,
    so its constants travel with it and no caller can forget them. ``ranks[i]``, when given and not 0, makes
    hidden layer i a product of two thinner Dense layers through a linear bottleneck of that width
    (``dense_i_factor`` then ``dense_i``): fewer weights to read per image (training/compress.py).
    """
    inputs = keras.Input(shape=tuple(input_shape), name="pixels")
    # Per-channel constants broadcast over the last axis; a gray image has no channel axis (one scalar).
    axis = -1 if len(input_shape) == 3 else None
    x = layers.Normalization(axis=axis, mean=channel_mean, variance=np.square(channel_std), name="standardize")(inputs)
    x = layers.Flatten(name="flatten")(x)
    for i, units in enumerate(hidden_units, start=1):
        rank = ranks[i - 1] if i <= len(ranks) else 0
        if rank:
            x = layers.Dense(rank, use_bias=False, name=f"dense_{i}_factor")(x)
        # The bias would be cancelled by BatchNorm's own shift.
        x = layers.Dense(units, use_bias=False, name=f"dense_{i}")(x)
        x = layers.BatchNormalization(name=f"batchnorm_{i}")(x)
        x = layers.Activation("relu", name=f"relu_{i}")(x)
        if dropout > 0:
            x = layers.Dropout(dropout, name=f"dropout_{i}")(x)
    outputs = layers.Dense(num_classes, activation="softmax", name="probabilities")(x)
    return keras.Model(inputs, outputs, name=name)
