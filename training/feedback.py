"""Production feedback as training data: read from the service's feedback store, split once into a training
part and a held-out "production" set.

The split is a pure function of each image's id and a seed, so an image stays on its side as feedback grows,
and the production set is the same for the candidate and the champion it is compared with.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

PRODUCTION_FRACTION = 0.2  # held out of training as the production evaluation set
SPLIT_SEED = 0


@dataclass(frozen=True)
class FeedbackData:
    """Feedback images (uint8, the model's input size) and label indices, split for training and evaluation."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_production: np.ndarray
    y_production: np.ndarray
    weight: float
    source: str

    @property
    def empty(self) -> bool:
        return len(self.y_train) + len(self.y_production) == 0


def in_production_set(image_id: str, fraction: float, seed: int = SPLIT_SEED) -> bool:
    """Whether an image belongs to the held-out production set: a fixed share of ids, chosen by hash."""
    digest = hashlib.sha256(f"{seed}:{image_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def labelled_images(name: str, classes: list[str] | tuple[str, ...], image_shape: tuple[int, ...], folder: Path,
                    database_url: str | None, limit: int | None = None, since: float | None = None,
                    ) -> tuple[list[tuple[str, np.ndarray, int]], str] | None:
    """The model's stored feedback, newest first (``limit`` keeps the newest; ``since``: labelled from then on),
    as (image id, uint8 pixels, label index), leaving out classes the model no longer has and other input sizes;
    and where it was read. None, and nothing created, when there is no store."""
    if database_url is None and not (folder / "feedback.db").exists():
        return None
    from contract.feedback_store import FeedbackStore

    store = FeedbackStore(folder, database_url)
    try:
        images = []
        for item in store.feedback_items(name, limit=limit):
            if since is not None and item.created_at < since:
                break
            if item.true_label not in classes:
                continue  # a class the model no longer has
            pixels = store.read_image(item.image_file)
            if pixels.shape != tuple(image_shape):
                continue  # stored for an input size this model does not take
            images.append((item.image_id, pixels, classes.index(item.true_label)))
        return images, store.url
    finally:
        store.close()


def load_feedback(name: str, classes: list[str] | tuple[str, ...], image_shape: tuple[int, ...], folder: Path,
                  database_url: str | None, weight: float, cap: int,
                  production_fraction: float = PRODUCTION_FRACTION) -> FeedbackData:
    """The model's stored feedback; empty (and nothing created) when there is no store."""
    shape = tuple(image_shape)
    stored = labelled_images(name, classes, shape, folder, database_url, limit=cap)
    if stored is None:
        return FeedbackData(np.zeros((0, *shape), np.uint8), np.zeros(0, np.int64),
                            np.zeros((0, *shape), np.uint8), np.zeros(0, np.int64), weight, "none")
    images, source = stored
    train, production = ([], []), ([], [])
    for image_id, pixels, label in images:
        side = production if in_production_set(image_id, production_fraction) else train
        side[0].append(pixels)
        side[1].append(label)

    def stacked(part):
        images = np.stack(part[0]) if part[0] else np.zeros((0, *shape), np.uint8)
        return images.astype(np.uint8), np.asarray(part[1], np.int64)

    return FeedbackData(*stacked(train), *stacked(production), weight, source)
