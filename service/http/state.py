"""One worker's app state, built once by ``create_app`` and handed to every blueprint that needs it.

Every endpoint reaches what it serves with through this one object, passed to its blueprint's factory; nothing is
a module global or a string key looked up at request time.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from flask import g

from service.inference.classify import Inference
from service.inference.registry import LoadedModel, ModelRegistry
from service.observability.model_monitor import ModelMonitor
from service.settings import Settings

if TYPE_CHECKING:  # imported only when feedback is on: SQLAlchemy is about 20 MB per worker
    from contract.feedback_store import FeedbackStore
    from service.access.gate import AccessGate
    from service.access.keys import ApiKey


@dataclass
class AppState:
    settings: Settings
    registry: ModelRegistry
    monitor: ModelMonitor
    inference: Inference
    feedback_store: FeedbackStore | None = None  # with FEEDBACK_TOKEN set
    access: AccessGate | None = None  # with API keys on; the request's key is then ``g.api_key``
    # Set by the worker on SIGTERM (service/front_door/worker.py): /readyz answers 503 while requests are served.
    draining: threading.Event = field(default_factory=threading.Event)

    def ready(self) -> bool:
        """Models loaded and no drain under way: what every readiness endpoint answers."""
        return self.registry.ready and not self.draining.is_set()

    def served_model(self, name: str, version: str | None = None) -> LoadedModel:
        """The model (and, if named, version) an HTTP request asks for; labels the request's metrics with it."""
        g.model_label = "unknown"
        model = self.model_for(name, version, g.get("api_key"))
        g.model_label = model.name
        return model

    def model_for(self, name: str, version: str | None, key: ApiKey | None) -> LoadedModel:
        """The model a call asks for, whatever its transport. With API keys on, a model outside the key's scope is
        refused before it is looked up, so the answer does not tell whether it exists."""
        if key is not None and not key.allows(name):
            self.access.check_model(key, name)
        return self.registry.get(name, version)

    def may_call(self, name: str) -> bool:
        """Whether this request's key (if keys are on) may call the model; lists show only such models."""
        key = g.get("api_key")
        return key is None or key.allows(name)
