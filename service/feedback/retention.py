"""Served inputs kept for a while, so that feedback can name a prediction by its id alone (RETAIN_PREDICTIONS)."""

from __future__ import annotations

import logging

import sqlalchemy as sa

from contract.feedback_store import FeedbackStore, Ranking
from service.inference.classify import Classified
from service.inference.registry import LoadedModel
from service.inference.uncertainty import QUEUE_SET, prediction_sets

log = logging.getLogger("service.feedback")


class Retention:
    """Keeps each served input for feedback by id, within the size and age limits (pruned every 200 inputs)."""

    PRUNE_EVERY = 200

    def __init__(self, store: FeedbackStore, max_bytes: int, max_age_seconds: float):
        self.store, self.max_bytes, self.max_age_seconds = store, max_bytes, max_age_seconds
        self.kept = 0

    def keep(self, model: LoadedModel, classified: Classified, predicted: list[int]) -> None:
        """Never fails the prediction it follows: a store that is down costs the retained copy, not the answer."""
        ids = classified.ids
        try:
            for position, ranking in enumerate(rankings(model, classified)):
                self.store.retain(ids[position], classified.inputs[position], model.name, model.version,
                                  model.classes[predicted[position]], ranking)
            self.kept += len(ids)
            if self.kept >= self.PRUNE_EVERY:
                self.kept = 0
                self.store.prune_retained(self.max_age_seconds, self.max_bytes)
        except (sa.exc.SQLAlchemyError, OSError) as error:
            log.warning("could not retain %d input(s) of %s for feedback: %s", len(ids), model.name, error)


def rankings(model: LoadedModel, classified: Classified) -> list[Ranking]:
    """What each input is ranked by in the labeling queue: its set at QUEUE_SET and how unusual it is."""
    sets = prediction_sets(model, classified, QUEUE_SET if model.uncertainty.thresholds is not None else None)
    result = []
    for position in range(len(classified.ids)):
        labels = None if sets is None else [model.classes[i] for i in sets[position].indices]
        scores = (None, None) if classified.ood_scores is None else \
            (float(classified.ood_scores[position]), float(classified.ood_p_values[position]))
        result.append(Ranking(labels, *scores))
    return result
