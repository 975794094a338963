"""Prometheus metrics, defined in one place.

Under gunicorn the workers share values through prometheus-client's multiprocess mode
(``PROMETHEUS_MULTIPROC_DIR``, set up by gunicorn.conf.py); label values are always bounded: endpoint rules,
published model names and their classes, status codes, protocol names.
"""

from __future__ import annotations

import collections
import functools
import os

import calendar
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import REGISTRY, Collector

if TYPE_CHECKING:  # the gunicorn master imports this module, and the window's NumPy is ~11 MB it does not need
    from service.observability.drift import DriftWindow

PREFIX = "classifier"
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

REQUESTS = Counter(f"{PREFIX}_http_requests_total", "HTTP requests by protocol, endpoint, model and status",
                   ["protocol", "endpoint", "model", "status"])
REQUEST_DURATION = Histogram(f"{PREFIX}_http_request_duration_seconds", "Whole request time by endpoint",
                             ["endpoint"], buckets=LATENCY_BUCKETS)
DECODE_DURATION = Histogram(f"{PREFIX}_decode_duration_seconds", "Decode and normalize time per request",
                            ["model"], buckets=LATENCY_BUCKETS)
INFERENCE_DURATION = Histogram(f"{PREFIX}_inference_duration_seconds", "Model inference time per request",
                               ["model"], buckets=LATENCY_BUCKETS)
PREDICTIONS = Counter(f"{PREFIX}_predictions_total", "Top-1 predictions by model and class", ["model", "label"])
IMAGES_PER_REQUEST = Histogram(f"{PREFIX}_images_per_request", "Images in one /predict request", ["model"],
                               buckets=(1, 2, 4, 8, 16, 32, 64, 128))
MODEL_INFO = Gauge(f"{PREFIX}_model_info", "1 for the version each model serves", ["model", "version"],
                   multiprocess_mode="livemax")
MODEL_RELOADS = Counter(f"{PREFIX}_model_reloads_total", "Model version loads by result (loaded or refused)",
                        ["model", "result"])

# Monitoring: confidence, what the inputs look like (service/observability/model_monitor.py); drift from the training data is read
# at scrape time from the workers' shared windows (drift_families).
TOP1_PROBABILITY = Histogram(f"{PREFIX}_top1_probability", "Probability of the top class, per image", ["model"],
                             buckets=(0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0))
LOW_CONFIDENCE = Counter(f"{PREFIX}_low_confidence_predictions_total",
                         "Images whose top-1 probability is below LOW_CONFIDENCE_THRESHOLD", ["model"])
INPUT_MEAN = Histogram(f"{PREFIX}_input_mean_intensity", "Mean pixel value of each normalized image, in [0, 1]",
                       ["model"], buckets=(0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9))
INPUT_CONTRAST = Histogram(f"{PREFIX}_input_contrast", "Standard deviation of each normalized image's pixels",
                           ["model"], buckets=(0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.5))
INPUT_UPLOADS = Counter(f"{PREFIX}_input_uploads_total", "Uploaded images by file format and gray or color",
                        ["model", "format", "color"])
INPUT_INVERTED = Counter(f"{PREFIX}_input_inverted_total", "Uploads inverted for their light background",
                         ["model"])
INPUT_SIZE = Histogram(f"{PREFIX}_input_original_size_pixels", "Longest side of each uploaded image", ["model"],
                       buckets=(28, 32, 64, 128, 256, 512, 1024, 2048, 4096))
INPUT_RESIZE = Histogram(f"{PREFIX}_input_resize_factor",
                         "Longest side of each upload over the model's input side (1: untouched)", ["model"],
                         buckets=(0.5, 1, 2, 4, 8, 16, 32, 64, 128))
OOD_P_VALUE = Histogram(f"{PREFIX}_ood_p_value",
                        "Per image, how often a held-out training-distribution image looks at least as unusual "
                        "(contract.ood): small is unlike the training data", ["model"],
                        buckets=(0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0))
REFERENCE_TOP1 = Gauge(f"{PREFIX}_reference_top1_probability",
                       "Mean top-1 probability on training images, recorded at publish time", ["model"],
                       multiprocess_mode="livemax")

CLIENT_TIMEOUTS = Counter(f"{PREFIX}_client_timeouts_total",
                          "Requests cut off with a 408 because the client was too slow, by phase (header, body)",
                          ["phase"])

# Shadowing (a candidate version run on the same inputs as the served one, its answer never sent): labelled with
# the candidate's version, a published one, so bounded; the labels pair is bounded by the model's classes.
SHADOW_IMAGES = Counter(f"{PREFIX}_shadow_images_total", "Images also run through the model's candidate version",
                        ["model", "candidate"])
SHADOW_AGREEMENTS = Counter(f"{PREFIX}_shadow_agreements_total",
                            "Shadowed images whose top-1 label the candidate shares with the served version",
                            ["model", "candidate"])
SHADOW_TOP1 = Counter(f"{PREFIX}_shadow_top1_probability_total",
                      "Sum of shadowed images' top-1 probabilities, by role (served: the current version, "
                      "candidate): over classifier_shadow_images_total, each version's mean confidence on the same "
                      "inputs",
                      ["model", "candidate", "role"])
CANARY_IMAGES = Counter(f"{PREFIX}_canary_images_total", "Images answered by the model's candidate version "
                        "(CANARY_PERCENT)", ["model", "candidate"])
SHADOW_LABELS = Counter(f"{PREFIX}_shadow_labels_total",
                        "Shadowed images by the served version's top-1 label and the candidate's",
                        ["model", "candidate", "served_label", "candidate_label"])

# API keys (service/access): the key's configured name is the label, never anything a client sends; refusals
# before a key is known (none sent, or one that matches nothing) have the empty name.
API_KEY_REQUESTS = Counter(f"{PREFIX}_api_key_requests_total", "Requests admitted, by API key", ["key"])
API_KEY_IMAGES = Counter(f"{PREFIX}_api_key_images_total", "Images admitted, by API key", ["key"])
API_KEY_REFUSALS = Counter(f"{PREFIX}_api_key_refusals_total",
                           "Requests refused by API key and reason (missing, invalid, model, requests, images)",
                           ["key", "reason"])


def start_model_series(model: str, classes: tuple[str, ...] = ()) -> None:
    """Create a model's series at zero when it is first published or loaded. A counter's series otherwise appears
    with its first event already counted, and Prometheus sees no increase in a series' first sample: the first
    refused version of a model would never fire its alert (tests/test_monitoring_stack.py showed it)."""
    for result in ("loaded", "refused"):
        series(MODEL_RELOADS, model, result)
    if classes:
        for metric in (TOP1_PROBABILITY, LOW_CONFIDENCE, INPUT_MEAN, INPUT_CONTRAST, INPUT_INVERTED, INPUT_SIZE,
                       INPUT_RESIZE, IMAGES_PER_REQUEST, DECODE_DURATION, INFERENCE_DURATION, OOD_P_VALUE):
            series(metric, model)
        for label in classes:
            series(PREDICTIONS, model, label)


@functools.lru_cache(maxsize=4096)
def series(metric, *label_values: str):
    """``metric.labels(*label_values)``, looked up once: the lookup takes a lock and builds a key on every call,
    which on the request path costs as much as the update itself. Label values are bounded, so is the cache."""
    return metric.labels(*label_values)


def _timestamp(text: str | None) -> float | None:
    try:
        return float(calendar.timegm(time.strptime(text, "%Y-%m-%dT%H:%M:%SZ"))) if text else None
    except ValueError:
        return None


def state_families(ready: bool, histories: dict[str, list[dict]]) -> list[Metric]:
    """Metrics read from state at scrape time rather than counted: readiness, and the retraining job's runs
    from each model's history.jsonl (written by whatever ran the retrain: compose, a CronJob, by hand)."""
    ready_family = GaugeMetricFamily(f"{PREFIX}_ready", "1 while /readyz answers 200 (models loaded, not draining)")
    ready_family.add_metric([], 1.0 if ready else 0.0)
    families = {name: GaugeMetricFamily(f"{PREFIX}_retrain_{name}", help_text, labels=["model"])
                for name, help_text in (
                    ("last_run_timestamp_seconds", "When the last retrain of the model ended"),
                    ("last_success_timestamp_seconds", "When the last retrain that did not fail ended"),
                    ("last_run_failed", "1 if the last retrain failed"),
                    ("last_promoted", "1 if the last successful retrain promoted its candidate"),
                    ("candidate_accuracy", "Test accuracy of the last successful retrain's candidate"),
                    ("champion_accuracy", "Test accuracy of the champion it was compared with"))}
    runs = GaugeMetricFamily(f"{PREFIX}_retrain_runs", "Retrains in the model's history, by outcome",
                             labels=["model", "outcome"])
    for model, history in sorted(histories.items()):
        retrains = [r for r in history if r.get("event") == "retrain"]
        if not retrains:
            continue
        outcomes = {"promoted": 0, "kept": 0, "failed": 0}
        for record in retrains:
            outcome = record.get("outcome") or ("promoted" if record.get("promoted") else "kept")
            outcomes[outcome if outcome in outcomes else "failed"] += 1
        for outcome, count in outcomes.items():
            runs.add_metric([model, outcome], count)
        last = retrains[-1]
        failed = last.get("outcome") == "failed"
        if (when := _timestamp(last.get("time"))) is not None:
            families["last_run_timestamp_seconds"].add_metric([model], when)
        families["last_run_failed"].add_metric([model], 1.0 if failed else 0.0)
        successes = [r for r in retrains if r.get("outcome") != "failed"]
        if successes:
            success = successes[-1]
            if (when := _timestamp(success.get("time"))) is not None:
                families["last_success_timestamp_seconds"].add_metric([model], when)
            families["last_promoted"].add_metric([model], 1.0 if success.get("promoted") else 0.0)
            for role in ("candidate", "champion"):
                accuracy = (success.get(role) or {}).get("accuracy")
                if accuracy is not None:
                    families[f"{role}_accuracy"].add_metric([model], accuracy)
    return [ready_family, runs, *families.values()]


def drift_families(windows: list[tuple[str, DriftWindow]]) -> list[Metric]:
    """Drift read at scrape time from the window every worker adds to: its PSI per signal against the training
    reference, how many images the window holds, and how many the reference was measured on."""
    psi = GaugeMetricFamily(f"{PREFIX}_drift_psi", "Population stability index of the service's recent images "
                            "against the training data, by signal (mean_intensity, contrast, predicted_class)",
                            labels=["model", "signal"])
    window_images = GaugeMetricFamily(f"{PREFIX}_drift_window_images",
                                      "Images in the window the drift is measured over, all workers together",
                                      labels=["model"])
    reference_images = GaugeMetricFamily(f"{PREFIX}_drift_reference_images",
                                         "Training images the drift reference was measured on", labels=["model"])
    for name, window in windows:
        values, filled = window.reading()
        window_images.add_metric([name], filled)
        reference_images.add_metric([name], window.reference.samples)
        for signal, value in (values or {}).items():
            psi.add_metric([name, signal], value)
    return [psi, window_images, reference_images]


def candidate_drift_families(windows: list[tuple[str, int, DriftWindow]]) -> list[Metric]:
    """The drift of each candidate's answers on the inputs it ran on (shadow or canary), against its own
    reference: beside the served version's ``classifier_drift_psi`` on the same inputs."""
    psi = GaugeMetricFamily(f"{PREFIX}_candidate_drift_psi", "Population stability index of a candidate version's "
                            "recent inputs and answers against its training data, by signal",
                            labels=["model", "candidate", "signal"])
    for name, version, window in windows:
        for signal, value in (window.reading()[0] or {}).items():
            psi.add_metric([name, str(version), signal], value)
    return [psi]


def multiprocess_dir() -> Path | None:
    """prometheus-client's folder of shared metric files, set up by gunicorn.conf.py; None in a single process."""
    folder = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    return Path(folder) if folder else None


def feedback_families(stats: list[dict]) -> list[Metric]:
    """Production accuracy from the feedback store, read at scrape time (the store is shared by all workers)."""
    items = GaugeMetricFamily(f"{PREFIX}_feedback_items", "Stored feedback, by model and true label",
                              labels=["model", "label"])
    agreement = GaugeMetricFamily(f"{PREFIX}_feedback_agreement_ratio",
                                  "Share of feedback whose served prediction was the true label: production accuracy",
                                  labels=["model"])
    for model in stats:
        for label, figures in model["per_label"].items():
            items.add_metric([model["model"], label], figures["items"])
        if model["agreement"] is not None:
            agreement.add_metric([model["model"]], model["agreement"])
    return [items, agreement]


class _ReadFamilies(Collector):
    """Metric families already read (``state_families``), handed to a registry for one exposition."""

    def __init__(self, families: Iterable[Metric]):
        self.families = list(families)

    def collect(self) -> Iterable[Metric]:
        return self.families


def render_metrics(extra: Iterable[Metric] = ()) -> tuple[bytes, str]:
    """The exposition text: every worker's values when running under gunicorn, this process's otherwise, plus
    ``extra`` families read at scrape time."""
    state = CollectorRegistry()
    state.register(_ReadFamilies(extra))
    return generate_latest(all_workers()) + generate_latest(state), CONTENT_TYPE_LATEST


def all_workers() -> CollectorRegistry:
    """Every worker's values when running under gunicorn (the shared multiprocess files), this process's
    otherwise."""
    if multiprocess_dir() is None:
        return REGISTRY
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    return registry


def record_shadow(model, candidate, served, shadowed) -> None:
    """One batch run through both versions (``served``: the current version's probabilities, ``shadowed``: the
    candidate's, whichever answered): counts, agreements, confidence sums and label pairs."""
    name, version = model.name, str(candidate.version)
    predicted, trial = served.argmax(axis=1).tolist(), shadowed.argmax(axis=1).tolist()
    series(SHADOW_IMAGES, name, version).inc(len(trial))
    series(SHADOW_AGREEMENTS, name, version).inc(sum(a == b for a, b in zip(predicted, trial)))
    series(SHADOW_TOP1, name, version, "served").inc(float(served.max(axis=1).sum()))
    series(SHADOW_TOP1, name, version, "candidate").inc(float(shadowed.max(axis=1).sum()))
    for (a, b), count in collections.Counter(zip(predicted, trial)).items():
        series(SHADOW_LABELS, name, version, model.classes[a], candidate.classes[b]).inc(count)


def shadow_figures(model: str, candidate: int) -> dict:
    """The candidate's live figures, all workers together: images shadowed, top-1 agreement, each version's mean
    top-1 probability on them, and where they disagree (``"<served label> -> <candidate label>": images``)."""
    totals = {"images": 0.0, "agreements": 0.0, "served": 0.0, "candidate": 0.0}
    disagreements: dict[str, int] = {}
    wanted = {f"{PREFIX}_shadow_images_total": "images", f"{PREFIX}_shadow_agreements_total": "agreements"}
    for family in all_workers().collect():
        for sample in family.samples:
            labels = sample.labels
            if labels.get("model") != model or labels.get("candidate") != str(candidate):
                continue
            if sample.name in wanted:
                totals[wanted[sample.name]] += sample.value
            elif sample.name == f"{PREFIX}_shadow_top1_probability_total":
                totals[labels["role"]] += sample.value
            elif sample.name == f"{PREFIX}_shadow_labels_total" and sample.value and \
                    labels["served_label"] != labels["candidate_label"]:
                pair = f"{labels['served_label']} -> {labels['candidate_label']}"
                disagreements[pair] = disagreements.get(pair, 0) + int(sample.value)
    images = totals["images"]
    return {"images": int(images),
            "agreement": totals["agreements"] / images if images else None,
            "mean_top1": {role: totals[role] / images if images else None for role in ("served", "candidate")},
            "disagreements": dict(sorted(disagreements.items(), key=lambda item: -item[1]))}
