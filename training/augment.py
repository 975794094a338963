"""Training batches as a tf.data pipeline: shuffle, flip, shift, grey backgrounds and MixUp, vectorized per batch.

Augmenting in Python took about half of each CIFAR-10 epoch; here it runs in TensorFlow beside the training
step. Every random draw is stateless and seeded from (seed, batch number), so a seed gives the same batches.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf


def training_batches(images: np.ndarray, labels: np.ndarray, num_classes: int, batch_size: int, seed: int,
                     flip: bool = False, max_shift: int = 0, mixup_alpha: float = 0.0,
                     sample_weights: np.ndarray | None = None, max_background: float = 0.0) -> tf.data.Dataset:
    """One epoch of shuffled, augmented (pixels in [0, 1], one-hot labels) batches; reshuffled every epoch.

    ``sample_weights``, when given, is yielded as a third element (Keras' per-image loss weights).
    """
    columns = (images, labels) if sample_weights is None else (images, labels, sample_weights.astype(np.float32))
    batches = (tf.data.Dataset.from_tensor_slices(columns)
               .shuffle(len(images), seed=seed, reshuffle_each_iteration=True)
               .batch(batch_size))
    # The counter keeps going across epochs (a repeated zip), so no two batches share their random draws.
    numbered = tf.data.Dataset.zip((batches, tf.data.Dataset.counter()))

    def augment(columns, step):
        batch, batch_labels = columns[0], columns[1]
        draw = tf.stack([tf.cast(seed, tf.int64), step])
        pixels = tf.cast(batch, tf.float32) / 255.0
        targets = tf.one_hot(batch_labels, num_classes)
        if flip:
            pixels = random_flip(pixels, draw)
        if max_shift:
            pixels = random_shift(pixels, max_shift, draw + [0, 1 << 32])
        if max_background:
            pixels = random_background(pixels, max_background, draw + [0, 3 << 32])
        if mixup_alpha > 0:
            pixels, targets = mixup(pixels, targets, mixup_alpha, draw + [0, 2 << 32])
        return (pixels, targets) if len(columns) == 2 else (pixels, targets, columns[2])

    return numbered.map(augment, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).prefetch(2)


def random_flip(pixels: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """Mirror half the images left to right (axis 2 is the width for both HW and HWC batches)."""
    flipped = tf.random.stateless_uniform([tf.shape(pixels)[0]], seed) < 0.5
    mask = tf.reshape(flipped, [-1] + [1] * (pixels.shape.rank - 1))
    return tf.where(mask, tf.reverse(pixels, axis=[2]), pixels)


def random_shift(pixels: tf.Tensor, max_shift: int, seed: tf.Tensor) -> tf.Tensor:
    """Translate each image by up to ``max_shift`` pixels each way, filling with the edge pixels."""
    count = tf.shape(pixels)[0]
    height, width = pixels.shape[1], pixels.shape[2]
    pad = [[0, 0], [max_shift, max_shift], [max_shift, max_shift]] + [[0, 0]] * (pixels.shape.rank - 3)
    padded = tf.pad(pixels, pad, mode="SYMMETRIC")
    offsets = tf.random.stateless_uniform([count, 2], seed, 0, 2 * max_shift + 1, dtype=tf.int32)
    rows = offsets[:, :1] + tf.range(height)[None, :]
    cols = offsets[:, 1:] + tf.range(width)[None, :]
    shifted = tf.gather(padded, rows, axis=1, batch_dims=1)
    return tf.gather(shifted, cols, axis=2, batch_dims=1)


def random_background(pixels: tf.Tensor, max_level: float, seed: tf.Tensor) -> tf.Tensor:
    """Raise black to a random grey and lower white, each by up to ``max_level``: a digit written on paper, once
    the service has inverted it, lies on the paper's grey, never on black (MNIST trained without this got 68% of
    such digits right with the grey at 0.12)."""
    count = tf.shape(pixels)[0]
    levels = tf.random.stateless_uniform([count, 2], seed, 0, max_level)
    shape = [-1] + [1] * (pixels.shape.rank - 1)
    low, high = tf.reshape(levels[:, 0], shape), 1 - tf.reshape(levels[:, 1], shape)
    return low + (high - low) * pixels


def mixup(pixels: tf.Tensor, targets: tf.Tensor, alpha: float, seed: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Blend each image and its label with another image of the batch (Zhang et al. 2018)."""
    count = tf.shape(pixels)[0]
    first = tf.random.stateless_gamma([count], seed, alpha)
    second = tf.random.stateless_gamma([count], seed + [0, 1], alpha)
    share = first / (first + second)  # Beta(alpha, alpha)
    partner = tf.reverse(tf.range(count), axis=[0])
    image_share = tf.reshape(share, [-1] + [1] * (pixels.shape.rank - 1))
    mixed = image_share * pixels + (1 - image_share) * tf.gather(pixels, partner)
    mixed_targets = share[:, None] * targets + (1 - share[:, None]) * tf.gather(targets, partner)
    return mixed, mixed_targets
