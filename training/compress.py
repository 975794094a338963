"""A trained MLP made cheaper to serve: its hidden layers factored to low rank.

Under load a single image's inference is bound by reading the int8 weights (docs/performance.md#floors), so
fewer weight bytes is the largest saving on the request path. The wide layers of a trained MLP are close to low
rank: a hidden kernel W truncated to its top singular vectors, (U_r S_r)(V_r^T), keeps nearly all the accuracy
with a fraction of the weights. The product of the two factors is exactly what the serving graph computes (two
MatMuls, no activation between them), so the network stays dense-only. The wide model is trained as before and
factored after training, before calibration; the factored model is calibrated, measured and published like any
other, and the wide model's figures go into its metadata beside it.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
import numpy as np

from training.architectures import build_mlp
from training.evaluation import model_accuracy


def weight_count(model: keras.Model) -> int:
    """The matrix weights a single image reads: every Dense kernel (the rest is folded or tiny)."""
    return sum(int(np.prod(layer.kernel.shape)) for layer in model.layers if isinstance(layer, keras.layers.Dense))


def effective_ranks(input_size: int, hidden_units: Sequence[int], ranks: Sequence[int]) -> tuple[int, ...]:
    """``ranks`` per hidden layer, with 0 (kept whole) wherever the two factors would hold at least as many
    weights as the layer itself: a rank only pays below fan_in x fan_out / (fan_in + fan_out)."""
    fan_ins = [input_size, *hidden_units[:-1]]
    return tuple(rank if 0 < rank and rank * (fan_in + units) < fan_in * units else 0
                 for rank, fan_in, units in zip(list(ranks) + [0] * len(hidden_units), fan_ins, hidden_units))


def factorize(wide: keras.Model, hidden_units: Sequence[int], ranks: Sequence[int], dropout: float) -> keras.Model:
    """The same network with hidden layer i's kernel replaced by its truncated SVD at ``ranks[i]`` (0 keeps the
    layer whole; see ``effective_ranks``); every other weight is copied."""
    standardize = wide.get_layer("standardize")
    mean = np.asarray(keras.ops.convert_to_numpy(standardize.mean)).reshape(-1)
    variance = np.asarray(keras.ops.convert_to_numpy(standardize.variance)).reshape(-1)
    image_shape = tuple(wide.inputs[0].shape[1:])
    ranks = effective_ranks(int(np.prod(image_shape)), hidden_units, ranks)
    if len(image_shape) == 2:  # gray: one scalar, as build_mlp takes it
        mean, variance = np.float32(mean[0]), np.float32(variance[0])
    factored = build_mlp(wide.name, image_shape, wide.get_layer("probabilities").units, hidden_units, dropout,
                         mean, np.sqrt(variance), ranks)
    for layer in factored.layers:
        if not layer.weights or layer.name.endswith("_factor"):
            continue
        source = wide.get_layer(layer.name)
        index = int(layer.name.split("_")[1]) - 1 if layer.name.startswith("dense_") else -1
        rank = ranks[index] if 0 <= index < len(ranks) else 0
        if rank:
            u, s, vt = np.linalg.svd(keras.ops.convert_to_numpy(source.kernel).astype(np.float64), full_matrices=False)
            factored.get_layer(f"{layer.name}_factor").set_weights([(u[:, :rank] * s[:rank]).astype(np.float32)])
            layer.set_weights([vt[:rank].astype(np.float32)])
        else:
            layer.set_weights(source.get_weights())
    return factored


def compress(wide: keras.Model, hidden_units: Sequence[int], ranks: Sequence[int], dropout: float,
             val_inputs: np.ndarray, y_val: np.ndarray) -> tuple[keras.Model, dict]:
    """The factored model and what was done, with both models' accuracy on the validation hold-out."""
    factored = factorize(wide, hidden_units, ranks, dropout)
    ranks = effective_ranks(int(np.prod(wide.inputs[0].shape[1:])), hidden_units, ranks)
    record = {"method": "truncated SVD of the hidden layers' kernels, after training, before calibration",
              "ranks": list(ranks), "weights_wide": weight_count(wide), "weights": weight_count(factored)}
    if len(y_val):
        record["validation_accuracy_wide"] = model_accuracy(wide, val_inputs, y_val)
        record["validation_accuracy"] = model_accuracy(factored, val_inputs, y_val)
    return factored, record
