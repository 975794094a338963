"""The one inference path every protocol calls: encoded images or pixel tensors in, probabilities out.

Protocols (``service/protocols/``) only translate their wire format to these calls and the probabilities back;
decoding, normalization, validation of pixel tensors, the runtime call, the per-model metrics and the monitor
live here, once. One ``Inference`` per worker, built by the app with what it needs passed in.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from contract.ids import input_id
from service.errors import InvalidTensor
from service.inference.decode_gate import DecodeGate
from service.inference.images import DecodeLimits, UploadFacts, decode_planned, plan_batch
from service.inference.registry import LoadedModel
from service.inference.trial import Route, Trials
from service.inference.uncertainty import ood_scores
from service.observability import metrics
from service.observability.model_monitor import ModelMonitor

# Called after each classified batch with (model, what was classified, predicted classes), e.g. to retain inputs
# for feedback by id (service.feedback.retention); never allowed to fail the prediction it follows.
KeepInputs = Callable[[LoadedModel, "Classified", list[int]], None]
# Called with (model, number of images) before any of a request's images is decoded, e.g. to charge them to the
# caller's API key (service.access); raises the client error that refuses them.
ChargeImages = Callable[[LoadedModel, int], None]
log = logging.getLogger("service.inference")


class Classified(NamedTuple):
    """What the model saw (normalization explains many answers), what it answered, and each input's id: the
    SHA-256 of its normalized pixels, by which feedback can name the prediction. With a version that records an
    out-of-distribution reference, each input's score and p-value (``service.inference.uncertainty``). ``model``:
    the version that answered, which is the candidate for a canary's share of inputs (``service.inference.trial``);
    every protocol names it in its answer, and builds prediction sets with its calibration."""

    inputs: np.ndarray
    probabilities: np.ndarray
    ids: list[str]
    ood_scores: np.ndarray | None = None
    ood_p_values: np.ndarray | None = None
    model: LoadedModel | None = None


class Inference:
    def __init__(self, limits: DecodeLimits, monitor: ModelMonitor, decode_gate: DecodeGate | None = None,
                 keep_inputs: KeepInputs | None = None, charge_images: ChargeImages | None = None,
                 trials: Trials | None = None):
        self.limits = limits
        self.monitor = monitor
        self.decode_gate = decode_gate or DecodeGate()
        self.keep_inputs = keep_inputs
        self.charge_images = charge_images
        self.trials = trials  # with a candidate on trial: the canary and the shadow

    def classify_images(self, model: LoadedModel, images: list[bytes], pinned: bool = False) -> Classified:
        """Encoded image files (PNG, JPEG, ...) -> (len(images), classes) probabilities, through the same
        decoding and normalization as every upload. Every image's header is read and the request's cost checked
        against the limits before the first one is decoded. ``pinned``: the caller named the version, so a canary
        never answers instead."""
        if self.charge_images is not None:
            self.charge_images(model, len(images))
        started = time.perf_counter()
        prepared = []
        for plan in plan_batch(images, model.input_spec, self.limits):
            with self.decode_gate.decoding(plan.work):
                prepared.append(decode_planned(plan, model.input_spec))
        batch = prepared[0][0][np.newaxis] if len(prepared) == 1 else np.stack([array for array, _ in prepared])
        return self._predict(model, batch, started, [facts for _, facts in prepared], pinned)

    def classify_pixels(self, model: LoadedModel, pixels: np.ndarray, pinned: bool = False) -> Classified:
        """A float32 batch already in the model's input shape, values in [0, 1] -> probabilities."""
        batch = check_pixels(model, pixels)
        if self.charge_images is not None:
            self.charge_images(model, len(batch))
        return self._predict(model, batch, time.perf_counter(), pinned=pinned)

    def _predict(self, model: LoadedModel, batch: np.ndarray, started: float,
                 uploads: list[UploadFacts] | None = None, pinned: bool = False) -> Classified:
        prepared = time.perf_counter()
        ids = [input_id(pixels) for pixels in batch]
        requested = model
        route = Route(model) if self.trials is None else self.trials.route(model, ids[0], pinned)
        model = route.answering
        probabilities, distance = model.runtime.run(batch)
        inferred = time.perf_counter()
        metrics.series(metrics.DECODE_DURATION, model.name).observe(prepared - started)
        metrics.series(metrics.INFERENCE_DURATION, model.name).observe(inferred - prepared)
        metrics.series(metrics.IMAGES_PER_REQUEST, model.name).observe(len(batch))
        predicted = probabilities.argmax(axis=1).tolist()
        for index in predicted:
            metrics.series(metrics.PREDICTIONS, model.name, model.classes[index]).inc()
        if route.canary:
            metrics.series(metrics.CANARY_IMAGES, model.name, str(model.version)).inc(len(batch))
        if route.shadow is not None:
            self._shadow(route, batch, probabilities)
        scores = ood_scores(model.uncertainty, batch, distance)
        # Under the version asked for: the monitor's drift window is of what the model's name answered.
        self.monitor.observe(requested, batch, probabilities, predicted, uploads, scores[1] if scores else None)
        classified = Classified(batch, probabilities, ids, *(scores or (None, None)), model=model)
        if self.keep_inputs is not None:
            self.keep_inputs(model, classified, predicted)
        return classified

    def _shadow(self, route: Route, batch: np.ndarray, probabilities: np.ndarray) -> None:
        """The same inputs through the other version, in the same request: one more runtime call on a batch
        already decoded (tens of microseconds; running it after the answer is sent cost more, see
        docs/performance.md), its answer queued for the monitor to count, never sent; a failure never fails the
        request it shadows. The figures always compare the candidate with the current version, whichever
        answered."""
        try:
            other, _ = route.shadow.runtime.run(batch)
            if route.canary:
                self.monitor.observe_shadow(route.shadow, route.answering, batch, other, probabilities)
            else:
                self.monitor.observe_shadow(route.answering, route.shadow, batch, probabilities, other)
        except Exception:
            log.exception("shadowing %s v%s with v%s failed", route.answering.name, route.answering.version,
                          route.shadow.version)


def check_pixels(model: LoadedModel, pixels: np.ndarray) -> np.ndarray:
    """The batch as the model takes it, or a client error saying what is wrong with it."""
    shape = model.input_spec.shape
    if pixels.ndim == len(shape) and pixels.shape == shape:
        pixels = pixels[np.newaxis]  # one image without its batch dimension
    if pixels.shape[1:] != shape or len(pixels) == 0:
        expected = "x".join(str(n) for n in shape)
        raise InvalidTensor(f"pixels of shape {list(pixels.shape)} do not fit model {model.name!r}, which takes "
                            f"a batch of {expected} images: shape [batch, {', '.join(map(str, shape))}]")
    pixels = np.ascontiguousarray(pixels, dtype=np.float32)
    if not np.isfinite(pixels).all() or pixels.min() < 0 or pixels.max() > 1:
        raise InvalidTensor("pixel values must be finite and within [0, 1] (the image scaled by 1/255)")
    return pixels
