"""Diagnostic target: the real service with every model's inference replaced by a fixed answer.

Loaded beside the service and the bare app, it splits their gap in two: what running the model costs under
load, and what the rest of the request path (parse, decode, normalize, metrics, JSON) costs.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from flask import Flask

from service.app import STATE_KEY
from service.app import create_app as create_service_app
from service.inference.registry import LoadedModel


class FixedAnswer:
    """Answers every image with what the real model answers for an all-black one."""

    def __init__(self, model: LoadedModel):
        self.kind = model.runtime.kind
        self._row, self._distance = model.runtime.run(np.zeros((1, *model.input_spec.shape), np.float32))
        self.has_distance = self._distance is not None

    def predict(self, batch: np.ndarray) -> np.ndarray:
        return np.repeat(self._row, len(batch), axis=0)

    def run(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """The fixed probabilities and, for a graph that has one, its fixed feature distance: the rest of the
        request path (the out-of-distribution p-value included) still runs."""
        distance = None if self._distance is None else np.repeat(self._distance, len(batch))
        return self.predict(batch), distance


def create_app() -> Flask:
    app = create_service_app(watch=False)
    registry = app.extensions[STATE_KEY].registry
    registry._models = {name: dataclasses.replace(model, runtime=FixedAnswer(model))
                        for name, model in registry.snapshot().items()}
    return app
