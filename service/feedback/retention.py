"""Served inputs kept for a while, so that feedback can name a prediction by its id alone (RETAIN_PREDICTIONS)."""

from __future__ import annotations

import logging

import numpy as np
import sqlalchemy as sa

from contract.feedback_store import FeedbackStore
from service.inference.registry import LoadedModel

log = logging.getLogger("service.feedback")


class Retention:
    """Keeps each served input for feedback by id, within the size and age limits (pruned every 200 inputs)."""

    PRUNE_EVERY = 200

    def __init__(self, store: FeedbackStore, max_bytes: int, max_age_seconds: float):
        self.store, self.max_bytes, self.max_age_seconds = store, max_bytes, max_age_seconds
        self.kept = 0

    def keep(self, model: LoadedModel, batch: np.ndarray, ids: list[str], predicted: list[int]) -> None:
        """Never fails the prediction it follows: a store that is down costs the retained copy, not the answer."""
        try:
            for pixels, image_id, index in zip(batch, ids, predicted):
                self.store.retain(image_id, pixels, model.name, model.version, model.classes[index])
            self.kept += len(ids)
            if self.kept >= self.PRUNE_EVERY:
                self.kept = 0
                self.store.prune_retained(self.max_age_seconds, self.max_bytes)
        except (sa.exc.SQLAlchemyError, OSError) as error:
            log.warning("could not retain %d input(s) of %s for feedback: %s", len(ids), model.name, error)
