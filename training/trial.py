"""Deciding a trial on live evidence: promote the candidate, or reject it, by rules written down in advance.

A candidate put on trial (``retrain --stage candidate``) is shadowed by every replica on live traffic. After a
soak, ``decide`` reads what the replicas measured (from Prometheus, which sums them, or from each replica's
``/models/<name>``), and what feedback arrived during the soak, and applies ``TrialRules``: enough images
shadowed, top-1 agreement with the current version and mean confidence within bounds, and feedback that does not
favour the current version. The decision, the figures and the rules go to the model's history.
"""

from __future__ import annotations

import json
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from contract.layout import candidate_since, candidate_version, current_version
from training.publish import PublishError
from training.retrain import Decision, end_trial
from training.settings import TrainingSettings

DEFAULTS = TrainingSettings()


@dataclass(frozen=True)
class TrialRules:
    min_images: int = DEFAULTS.trial_min_images
    min_agreement: float = DEFAULTS.trial_min_agreement
    max_confidence_change: float = DEFAULTS.trial_max_confidence_change

    @classmethod
    def from_settings(cls, settings: TrainingSettings) -> TrialRules:
        return cls(settings.trial_min_images, settings.trial_min_agreement, settings.trial_max_confidence_change)


@dataclass(frozen=True)
class LiveFigures:
    """What the replicas measured with the candidate in the shadow, all of them together."""

    images: int
    agreements: float
    served_top1_sum: float  # the current version's top-1 probabilities on the shadowed images, summed
    candidate_top1_sum: float
    sources: tuple[str, ...] = ()
    disagreements: dict[str, int] = field(default_factory=dict)  # "<served label> -> <candidate label>": images
    drift_psi: dict[str, dict[str, float] | None] = field(default_factory=dict)  # per source, the candidate's

    @property
    def agreement(self) -> float | None:
        return self.agreements / self.images if self.images else None

    def mean_top1(self, role: str) -> float | None:
        total = self.served_top1_sum if role == "served" else self.candidate_top1_sum
        return total / self.images if self.images else None

    def as_evidence(self) -> dict:
        return {"images": self.images, "agreement": self.agreement,
                "mean_top1": {role: self.mean_top1(role) for role in ("served", "candidate")},
                "disagreements": dict(sorted(self.disagreements.items(), key=lambda item: -item[1])),
                "drift_psi": self.drift_psi, "sources": list(self.sources)}


@dataclass(frozen=True)
class SoakFeedback:
    """Labels that arrived during the soak, and how many each version gets right."""

    samples: int
    candidate_correct: int
    champion_correct: int
    since: float


def judge_trial(live: LiveFigures, feedback: SoakFeedback | None, rules: TrialRules) -> Decision:
    """Promote when every rule holds; otherwise reject, saying which did not."""
    failed, held = [], []

    def check(ok: bool, text: str) -> None:
        (held if ok else failed).append(text)

    check(live.images >= rules.min_images, f"{live.images} images shadowed (at least {rules.min_images})")
    if live.images:
        check(live.agreement >= rules.min_agreement,
              f"top-1 agreement {live.agreement:.4f} (at least {rules.min_agreement})")
        change = live.mean_top1("candidate") - live.mean_top1("served")
        check(abs(change) <= rules.max_confidence_change,
              f"mean top-1 probability {live.mean_top1('candidate'):.4f} vs {live.mean_top1('served'):.4f} "
              f"(within {rules.max_confidence_change})")
    if feedback is not None and feedback.samples:
        check(feedback.candidate_correct >= feedback.champion_correct,
              f"soak feedback: candidate right on {feedback.candidate_correct}, current version on "
              f"{feedback.champion_correct} of {feedback.samples}")
    else:
        held.append("no feedback arrived during the soak")
    if failed:
        return Decision(False, "rejected on live evidence: " + "; ".join(failed) + " (held: " + "; ".join(held) + ")")
    return Decision(True, "promoted on live evidence: " + "; ".join(held))


def figures_from_services(urls: list[str], name: str, version: int, api_key: str | None = None) -> LiveFigures:
    """Summed over the replicas at ``urls``, each read at ``GET /models/<name>`` (``candidate.shadow``); every one
    must report the same candidate, or the evidence is refused."""
    images = agreements = served = candidate = 0.0
    disagreements: dict[str, int] = {}
    drift = {}
    for url in urls:
        request = urllib.request.Request(f"{url.rstrip('/')}/models/{urllib.parse.quote(name)}",
                                         headers={"X-API-Key": api_key} if api_key else {})
        with urllib.request.urlopen(request, timeout=30) as response:
            trial = json.load(response).get("candidate")
        if trial is None or trial["version"] != version:
            raise PublishError(f"the service at {url} does not have v{version} of {name} on trial "
                               f"(it has {'none' if trial is None else 'v' + str(trial['version'])})")
        shadow = trial["shadow"]
        count = shadow["images"]
        drift[url] = shadow.get("drift_psi")
        for pair, images_of_pair in shadow.get("disagreements", {}).items():
            disagreements[pair] = disagreements.get(pair, 0) + images_of_pair
        images += count
        if count:
            agreements += shadow["agreement"] * count
            served += shadow["mean_top1"]["served"] * count
            candidate += shadow["mean_top1"]["candidate"] * count
    return LiveFigures(int(images), round(agreements), served, candidate, tuple(urls), disagreements, drift)


def figures_from_prometheus(url: str, name: str, version: int) -> LiveFigures:
    """Summed over every replica Prometheus scrapes now. A replica's counters start again when it restarts, so a
    restarted replica's earlier images are not counted: the evidence can only fall short, never be inflated."""

    def query(expression: str) -> list[dict]:
        encoded = urllib.parse.urlencode({"query": expression})
        with urllib.request.urlopen(f"{url.rstrip('/')}/api/v1/query?{encoded}", timeout=30) as response:
            return json.load(response)["data"]["result"]

    trial = f'model="{name}",candidate="{version}"'

    def total(metric: str, role: str = "") -> float:
        labels = trial + (f',role="{role}"' if role else "")
        result = query(f"sum({metric}{{{labels}}})")
        return float(result[0]["value"][1]) if result else 0.0

    pairs = query(f"sum by (served_label, candidate_label) (classifier_shadow_labels_total{{{trial}}})")
    disagreements = {f"{p['metric']['served_label']} -> {p['metric']['candidate_label']}": int(float(p["value"][1]))
                     for p in pairs if p["metric"]["served_label"] != p["metric"]["candidate_label"]}
    # The largest over the replicas: the one whose traffic moved furthest from the candidate's training data.
    drift = {p["metric"]["signal"]: float(p["value"][1])
             for p in query(f"max by (signal) (classifier_candidate_drift_psi{{{trial}}})")}
    return LiveFigures(int(total("classifier_shadow_images_total")), total("classifier_shadow_agreements_total"),
                       total("classifier_shadow_top1_probability_total", "served"),
                       total("classifier_shadow_top1_probability_total", "candidate"), (url,), disagreements,
                       {url: drift or None})


def soak_feedback(name: str, models_dir: Path, champion: int, candidate: int, since: float,
                  folder: Path | None, database_url: str | None) -> SoakFeedback | None:
    """The feedback labelled since the trial began, judged by both versions; None without a feedback store."""
    import numpy as np

    from contract.layout import version_dir
    from contract.metadata import read_metadata
    from training.feedback import labelled_images

    folder = folder or TrainingSettings(models_dir=models_dir).feedback_folder
    metadata = read_metadata(version_dir(models_dir, name, champion))
    stored = labelled_images(name, metadata.classes, metadata.input.shape, folder, database_url, since=since)
    if stored is None:
        return None
    images = stored[0]
    if not images:
        return SoakFeedback(0, 0, 0, since)
    from training.pipeline import version_accuracy

    x, y = np.stack([pixels for _, pixels, _ in images]), np.asarray([label for *_, label in images])
    correct = {version: round(version_accuracy(models_dir, name, version, x, y) * len(y))
               for version in (champion, candidate)}
    return SoakFeedback(len(y), correct[candidate], correct[champion], since)


def decide(name: str, models_dir: Path, rules: TrialRules, service_urls: list[str] | None = None,
           prometheus_url: str | None = None, api_key: str | None = None, feedback_folder: Path | None = None,
           database_url: str | None = None, report: Callable[[str], None] = print) -> Decision:
    """Decide ``name``'s trial by ``rules``: promote or reject the candidate, with the evidence in the history."""
    candidate = candidate_version(models_dir, name)
    if candidate is None:
        raise PublishError(f"{name} has no version on trial (no candidate pointer)")
    champion = current_version(models_dir, name)
    since = candidate_since(models_dir, name)
    if prometheus_url:
        live = figures_from_prometheus(prometheus_url, name, candidate)
    elif service_urls:
        live = figures_from_services(service_urls, name, candidate, api_key)
    else:
        raise PublishError("no source of live figures: give the service's URLs or a Prometheus URL")
    feedback = soak_feedback(name, models_dir, champion, candidate, since, feedback_folder, database_url)
    decision = judge_trial(live, feedback, rules)
    evidence = {"version": candidate, "champion": champion, "shadow": live.as_evidence(), "rules": asdict(rules),
                "soak_seconds": round(time.time() - since, 1),
                "feedback": None if feedback is None else asdict(feedback)}
    end_trial(name, models_dir, "promote" if decision.promote else "reject", evidence, report, decision.reason)
    return decision
