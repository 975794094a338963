"""Records what each classified batch looked like and how sure the model was: the monitoring metrics.

One ``ModelMonitor`` per worker, configured from the settings at app start. Its drift windows are per model
version, so a newly loaded version starts a fresh window against its own reference, and shared by the workers
(``service.observability.drift.DriftWindow`` in the metrics folder): ``/metrics`` reads them at scrape time.

Why a request only queues its batch: in multiprocess mode every metric update is a locked write to a
memory-mapped file, an image touches a dozen values, and writing them one by one per image cost a visible share
of a request (docs/performance.md#monitoring has the figures). So ``observe`` keeps a reference to the
batch and its answers, and every ``FLUSH_EVERY_IMAGES`` images (and at least every ``MODEL_RELOAD_SECONDS``,
from a background thread, and before ``/metrics`` answers) ``flush`` computes the statistics of all of them at
once with NumPy and writes each value once. The figures reach ``/metrics`` at most that much later.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from contract.reference import Reference, image_statistics
from service.observability import metrics
from service.observability.drift import DriftWindow

if TYPE_CHECKING:  # the monitor reads what inference hands it, and imports none of inference
    from service.inference.images import UploadFacts
    from service.inference.registry import LoadedModel

log = logging.getLogger(__name__)
# A flush costs about 175 us whatever its size (a dozen locked metric writes, the drift window's flock), so larger
# flushes cost less per image: 256 queued images are at most ~3 MB of CIFAR-10 pixels (docs/performance.md).
FLUSH_EVERY_IMAGES = 256  # and the shared drift window is added to as often


def write_histogram(child, values: np.ndarray) -> None:
    """``child.observe(v)`` for every value, as one update per bucket and one of the sum."""
    if not len(values):
        return
    bounds = np.asarray(child._upper_bounds)
    counts = np.bincount(np.searchsorted(bounds, values, side="left"), minlength=len(bounds))
    # prometheus-client has no public bulk observe; these are the two values observe() itself updates.
    child._sum.inc(float(np.sum(values)))
    for index in np.flatnonzero(counts).tolist():
        child._buckets[index].inc(int(counts[index]))


class Observation(NamedTuple):
    """One classified batch, queued until the next flush."""

    model: LoadedModel
    batch: np.ndarray
    probabilities: np.ndarray
    predicted: list[int]
    uploads: list[UploadFacts] | None
    ood_p_values: np.ndarray | None


class Shadowed(NamedTuple):
    """One batch also run through the candidate, queued until the next flush."""

    model: LoadedModel
    candidate: LoadedModel
    batch: np.ndarray
    served: np.ndarray
    shadowed: np.ndarray


class ModelMonitor:
    def __init__(self, enabled: bool = True, low_confidence_threshold: float = 0.5, window_images: int = 1000,
                 shared_dir: Path | None = None):
        """``shared_dir``: where the drift windows the workers share live (the metrics folder); None keeps them
        in this process."""
        self.enabled = enabled
        self.low_confidence_threshold = low_confidence_threshold
        self.window_images = window_images
        self.shared_dir = shared_dir
        self._windows: dict[tuple[str, int, str], DriftWindow | None] = {}
        self._queued: list[Observation] = []
        self._shadowed: list[Shadowed] = []
        self._queued_images = 0
        self._lock = threading.Lock()

    def observe(self, model: LoadedModel, batch: np.ndarray, probabilities: np.ndarray, predicted: list[int],
                uploads: list[UploadFacts] | None = None, ood_p_values: np.ndarray | None = None) -> None:
        """``predicted``: each image's top class, which the caller has already taken from ``probabilities``."""
        if not self.enabled:
            return
        with self._lock:  # the gevent worker runs one greenlet at a time; this guards the flushing thread
            self._queued.append(Observation(model, batch, probabilities, predicted, uploads, ood_p_values))
            self._queued_images += len(predicted)
            if self._queued_images >= FLUSH_EVERY_IMAGES:
                self._flush_locked()

    def observe_shadow(self, model: LoadedModel, candidate: LoadedModel, batch: np.ndarray, served: np.ndarray,
                       shadowed: np.ndarray) -> None:
        """One batch run through both the current version (``served``: its probabilities) and its candidate,
        whichever answered: queued like every observation, then counted at once (``metrics.record_shadow``) and
        added to the candidate's own drift window, so its drift PSI is measured on the same inputs as the served
        version's. Counted even with input monitoring off: a trial's evidence is not optional."""
        with self._lock:
            self._shadowed.append(Shadowed(model, candidate, batch, served, shadowed))
            self._queued_images += len(batch)
            if self._queued_images >= FLUSH_EVERY_IMAGES:
                self._flush_locked()

    def flush(self) -> None:
        """Write everything observed so far to the metrics."""
        with self._lock:
            self._flush_locked()

    def _flush_locked(self) -> None:
        queued, self._queued, self._queued_images = self._queued, [], 0
        shadowed, self._shadowed = self._shadowed, []
        by_version: dict[tuple[str, int], list[Observation]] = {}
        for observation in queued:
            by_version.setdefault((observation.model.name, observation.model.version), []).append(observation)
        for observations in by_version.values():
            self._record(observations)
        by_trial: dict[tuple[str, int, int], list[Shadowed]] = {}
        for item in shadowed:
            by_trial.setdefault((item.model.name, item.model.version, item.candidate.version), []).append(item)
        for items in by_trial.values():
            self._record_shadow(items)

    def _record_shadow(self, items: list[Shadowed]) -> None:
        candidate = items[0].candidate
        shadowed = np.concatenate([item.shadowed for item in items])
        metrics.record_shadow(items[0].model, candidate, np.concatenate([item.served for item in items]), shadowed)
        window = self._window(candidate, "candidate") if self.enabled else None
        if window is not None:
            window.add(*image_statistics(np.concatenate([item.batch for item in items])),
                       shadowed.argmax(axis=1).tolist())

    def _record(self, observations: list[Observation]) -> None:
        """The queued batches of one model version, recorded at once."""
        model = observations[0].model
        name = model.name
        batch = np.concatenate([o.batch for o in observations])
        predicted = [index for o in observations for index in o.predicted]
        probabilities = np.concatenate([o.probabilities for o in observations])
        top1 = probabilities[np.arange(len(predicted)), predicted]
        means, contrasts = image_statistics(batch)
        write_histogram(metrics.series(metrics.TOP1_PROBABILITY, name), top1)
        write_histogram(metrics.series(metrics.INPUT_MEAN, name), means)
        write_histogram(metrics.series(metrics.INPUT_CONTRAST, name), contrasts)
        p_values = [o.ood_p_values for o in observations if o.ood_p_values is not None]
        if p_values:
            write_histogram(metrics.series(metrics.OOD_P_VALUE, name), np.concatenate(p_values))
        low = int(np.count_nonzero(top1 < self.low_confidence_threshold))
        if low:
            metrics.series(metrics.LOW_CONFIDENCE, name).inc(low)
        uploads = [facts for o in observations if o.uploads for facts in o.uploads]
        if uploads:
            kinds = Counter((facts.format.lower(), "color" if facts.color else "gray") for facts in uploads)
            for (file_format, color), count in kinds.items():
                metrics.series(metrics.INPUT_UPLOADS, name, file_format, color).inc(count)
            inverted = sum(facts.inverted for facts in uploads)
            if inverted:
                metrics.series(metrics.INPUT_INVERTED, name).inc(inverted)
            longest = np.array([max(facts.width, facts.height) for facts in uploads], dtype=np.float64)
            write_histogram(metrics.series(metrics.INPUT_SIZE, name), longest)
            write_histogram(metrics.series(metrics.INPUT_RESIZE, name), longest / max(model.input_spec.shape[:2]))
        window = self._window(model)
        if window is not None:
            window.add(means, contrasts, predicted)

    def _window(self, model: LoadedModel, role: str = "served") -> DriftWindow | None:
        key = (model.name, model.version, role)
        if key not in self._windows:
            for old in [k for k in self._windows if k[0] == model.name and k[2] == role]:  # the old version's
                window = self._windows.pop(old)
                if window is not None:
                    window.close()
            reference = Reference.from_profile(model.metadata.reference)
            suffix = "" if role == "served" else f"-{role}"
            path = None if self.shared_dir is None else \
                self.shared_dir / f"drift-{model.name}-{model.version}{suffix}.window"
            self._windows[key] = DriftWindow(reference, self.window_images, path) if reference else None
        return self._windows[key]

    def drift_windows(self, models: list[LoadedModel], role: str = "served") -> list[tuple[LoadedModel, DriftWindow]]:
        """The shared window of each model that has a reference (empty until its first images); ``role``
        "candidate" for versions on trial."""
        if not self.enabled:
            return []
        with self._lock:
            pairs = [(model, self._window(model, role)) for model in models]
        return [(model, window) for model, window in pairs if window is not None]

    def start(self, interval_seconds: float) -> threading.Thread:
        """Flush at least every ``interval_seconds``, in a daemon thread, so quiet periods are reported too."""
        def run():
            while True:
                time.sleep(interval_seconds)
                try:
                    self.flush()
                except Exception:  # keep flushing whatever happens
                    log.exception("writing the monitoring metrics failed")

        thread = threading.Thread(target=run, name="monitor-flush", daemon=True)
        thread.start()
        return thread
