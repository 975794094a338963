"""Which model versions this worker serves, and switching to a newly published one without downtime.

Every model folder in ``models/`` has a ``current`` pointer. A background thread re-reads the pointers; when one
names a new version, that version is loaded and verified (files match their recorded hashes, the runtime
reproduces the recorded verification outputs) while the old one keeps serving, then swapped in with a single
reference assignment. Requests already running finish on the version they started with. A version that
fails any check is refused, logged and counted, and the old version stays.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from contract.layout import candidate_version, current_version, published_models, sha256_file, version_dir
from contract.metadata import InputSpec, MetadataError, VersionMetadata, read_metadata
from contract.ood import verification_distance_key
from service.observability import metrics
from service.errors import NotReady, UnknownModel, UnknownVersion
from service.inference.runtimes import Runtime, load_runtime, resolve_kind
from service.inference.uncertainty import ModelUncertainty

log = logging.getLogger(__name__)


class VersionRefused(Exception):
    """A published version that must not serve; the message says why."""


@dataclass(frozen=True)
class LoadedModel:
    name: str
    version: int
    path: Path
    metadata: VersionMetadata
    runtime: Runtime
    uncertainty: ModelUncertainty = ModelUncertainty(None, None)
    loaded_at: float = field(default_factory=time.time)

    @property
    def classes(self) -> tuple[str, ...]:
        return self.metadata.classes

    @property
    def input_spec(self) -> InputSpec:
        return self.metadata.input


def load_version(models_dir: Path, name: str, version: int, runtime_kind: str, threads: int = 1) -> LoadedModel:
    """Load and verify one version folder, or raise ``VersionRefused`` saying why."""
    path = version_dir(models_dir, name, version)
    try:
        metadata = read_metadata(path)
    except FileNotFoundError:
        raise VersionRefused(f"{path} has no metadata.json (incomplete version)") from None
    except (OSError, MetadataError) as exc:
        raise VersionRefused(f"{path}: {exc}") from exc
    try:
        if metadata.name != name or metadata.version != version:
            raise VersionRefused(f"{path}: metadata says {metadata.name} v{metadata.version}")
        kind = resolve_kind(runtime_kind, metadata)
        if kind not in metadata.runtimes:
            raise VersionRefused(f"{path}: no {kind!r} model in this version (MODEL_RUNTIME={runtime_kind})")
        for file_name, expected in metadata.files.items():
            if not (path / file_name).is_file():
                raise VersionRefused(f"{path}: {file_name} is missing")
            if file_name in (metadata.runtimes[kind].file, metadata.verification_file):
                if sha256_file(path / file_name) != expected:
                    raise VersionRefused(f"{path}: {file_name} does not match its recorded hash")
        runtime = load_runtime(metadata.runtimes[kind], path, threads)
        _verify(runtime, path / metadata.verification_file, metadata)
        uncertainty = ModelUncertainty.from_metadata(metadata, runtime.has_distance)
    except VersionRefused:
        raise
    except Exception as exc:  # any failure to load is a refusal, never a crash of the worker
        raise VersionRefused(f"{path}: {type(exc).__name__}: {exc}") from exc
    return LoadedModel(name, version, path, metadata, runtime, uncertainty)


def _verify(runtime: Runtime, samples_path: Path, metadata: VersionMetadata) -> None:
    """The runtime must reproduce the probabilities recorded at publish time."""
    # The float runtimes reproduce Keras' outputs; the int8 model its own, recorded beside them.
    check = metadata.runtimes[runtime.kind]
    with np.load(samples_path, allow_pickle=False) as samples:
        if check.verification_outputs not in samples:
            raise VersionRefused(f"the verification samples have no {check.verification_outputs!r}")
        pixels, expected = samples["pixels"], samples[check.verification_outputs]
        distance_key = verification_distance_key(check.verification_outputs)
        expected_distance = samples[distance_key] if distance_key in samples else None
    if pixels.shape[1:] != metadata.input.shape or expected.shape[1] != len(metadata.classes):
        raise VersionRefused(f"verification samples do not match the input {metadata.input.shape} or the classes")
    actual, distance = runtime.run(pixels.astype(np.float32) / np.float32(255.0))
    difference = float(np.max(np.abs(actual - expected)))
    if not difference <= check.verification_atol:
        raise VersionRefused(f"the model's outputs differ from the recorded ones by {difference:.2e} "
                             f"(> {check.verification_atol})")
    if distance is not None and expected_distance is not None:
        # A distance is a sum over hundreds of features: compare relative to its size.
        relative = float(np.max(np.abs(distance - expected_distance) / np.maximum(np.abs(expected_distance), 1.0)))
        if not relative <= check.verification_atol:
            raise VersionRefused(f"the graph's feature distances differ from the recorded ones by {relative:.2e} "
                                 f"(relative, > {check.verification_atol})")


class ModelRegistry:
    """The models one worker serves; ``get`` is lock-free, ``refresh`` swaps in new versions."""

    def __init__(self, models_dir: Path, runtime_kind: str = "auto", threads: int = 1):
        self.models_dir = Path(models_dir)
        self.runtime_kind = runtime_kind
        self.threads = threads
        self._models: dict[str, LoadedModel] = {}
        # Versions on trial (the ``candidate`` pointer): loaded and verified like the current ones, shadowed on
        # live traffic, never answering. Refused the same way, and kept apart from the current versions' state.
        self._candidates: dict[str, LoadedModel] = {}
        self._refused_candidates: dict[str, int] = {}
        self._refused: dict[str, int] = {}  # the last refused version per model, so it is not retried every poll
        self._refresh_lock = threading.Lock()
        self.initial_load_done = threading.Event()
        self.errors: dict[str, str] = {}

    @property
    def ready(self) -> bool:
        return self.initial_load_done.is_set() and bool(self._models)

    def names(self) -> list[str]:
        return sorted(self._models)

    def get(self, name: str, version: str | int | None = None) -> LoadedModel:
        """The model serving under ``name``; with ``version``, only if that is the version it serves."""
        if not self.initial_load_done.is_set():
            raise NotReady("models are still loading")
        try:
            model = self._models[name]
        except KeyError:
            known = ", ".join(self.names()) or "none"
            raise UnknownModel(f"no model named {name!r}; served models: {known}") from None
        if version is not None and str(version) != str(model.version):
            raise UnknownVersion(f"version {version} of model {name!r} is not loaded; it serves version "
                                 f"{model.version} (the published current version)")
        return model

    def snapshot(self) -> dict[str, LoadedModel]:
        return dict(self._models)

    def candidate(self, name: str) -> LoadedModel | None:
        """The version on trial beside ``name``'s current one, if one is loaded."""
        return self._candidates.get(name)

    def published_names(self) -> list[str]:
        return published_models(self.models_dir)

    def refresh(self) -> list[str]:
        """Load every model whose ``current`` pointer moved; returns what changed, for logs and tests."""
        changes = []
        with self._refresh_lock:
            for name in self.published_names():  # the folder read once a poll, for both pointers
                changes += self._refresh_current(name)
                changes += self._refresh_candidate(name)
        self.initial_load_done.set()
        return changes

    def _refresh_current(self, name: str) -> list[str]:
        metrics.start_model_series(name)
        version = current_version(self.models_dir, name)
        active = self._models.get(name)
        if version is None or (active and active.version == version) or self._refused.get(name) == version:
            return []
        loaded = self._load(name, version, self._refused, name,
                            f"still serving {f'v{active.version}' if active else 'nothing'}")
        if loaded is None:
            return [f"{name} v{version} refused"]
        metrics.start_model_series(name, loaded.classes)
        self._models = {**self._models, name: loaded}  # one assignment: readers see old or new
        metrics.MODEL_RELOADS.labels(name, "loaded").inc()
        if active:
            metrics.MODEL_INFO.labels(name, str(active.version)).set(0)
        metrics.MODEL_INFO.labels(name, str(version)).set(1)
        reference = loaded.metadata.reference
        if reference:
            metrics.REFERENCE_TOP1.labels(name).set(reference["top1_probability_mean"])
        log.info("serving %s v%s (was %s)", name, version, f"v{active.version}" if active else "none")
        return [f"{name} v{version} loaded"]

    def _refresh_candidate(self, name: str) -> list[str]:
        held, served = self._candidates.get(name), self._models.get(name)
        wanted = candidate_version(self.models_dir, name)
        if wanted is None or served is None or wanted == served.version:  # no trial, or it was promoted
            if held:
                self._candidates = {k: v for k, v in self._candidates.items() if k != name}
                log.info("candidate %s v%s is no longer on trial", name, held.version)
                return [f"{name} candidate v{held.version} ended"]
            return []
        if (held and held.version == wanted) or self._refused_candidates.get(name) == wanted:
            return []
        loaded = self._load(name, wanted, self._refused_candidates, f"{name} candidate",
                            f"as the candidate beside v{served.version}", served)
        if loaded is None:
            return [f"{name} candidate v{wanted} refused"]
        self._candidates = {**self._candidates, name: loaded}
        log.info("candidate %s v%s on trial beside v%s", name, wanted, served.version)
        return [f"{name} candidate v{wanted} loaded"]

    def _load(self, name: str, version: int, refused: dict[str, int], error_key: str, instead: str,
              beside: LoadedModel | None = None) -> LoadedModel | None:
        """Load and verify a version (one that must take ``beside``'s inputs and classes, if given), or record
        its refusal (not retried until its pointer moves), count it, and log what serves ``instead``."""
        try:
            loaded = load_version(self.models_dir, name, version, self.runtime_kind, self.threads)
            if beside is not None and (loaded.input_spec != beside.input_spec or loaded.classes != beside.classes):
                raise VersionRefused(f"it takes other inputs or names other classes than v{beside.version}")
        except VersionRefused as exc:
            refused[name] = version
            self.errors[error_key] = str(exc)
            metrics.MODEL_RELOADS.labels(name, "refused").inc()
            log.error("refused %s v%s, %s: %s", name, version, instead, exc)
            return None
        refused.pop(name, None)
        self.errors.pop(error_key, None)
        return loaded

    def start(self, interval_seconds: float) -> threading.Thread:
        """Keep watching the pointers, in a daemon thread: the first look is after ``interval_seconds``."""
        thread = threading.Thread(target=self._watch, args=(interval_seconds,), name="model-watcher", daemon=True)
        thread.start()
        return thread

    def _watch(self, interval_seconds: float) -> None:
        while True:
            time.sleep(interval_seconds)
            try:
                self.refresh()
            except Exception:  # keep watching whatever happens: the next poll may succeed
                log.exception("model refresh failed")
