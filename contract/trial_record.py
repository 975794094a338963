"""A version's live trial as its model card shows it: the decision in the model's history, in Markdown.

A published version's files never change (their hashes are recorded), so the card the service serves is the
file written at training time followed by this section, read from ``history.jsonl`` whenever the card is asked
for: the decision and its evidence appear on the card the moment they are recorded.
"""

from __future__ import annotations


def trial_decision(history: list[dict], version: int) -> dict | None:
    """The last decided trial of ``version`` (promoted or rejected), if it had one."""
    for record in reversed(history):
        if record.get("event") == "trial" and record.get("version") == version:
            return record
    return None


def trial_section(record: dict) -> str:
    """The card's "Live trial" section for one decision record."""
    evidence = record.get("evidence") or {}
    shadow = evidence.get("shadow") or {}
    lines = ["", "## Live trial", "",
             f"- **Decision:** {record.get('outcome', '?')} at {record.get('time', '?')}, beside "
             f"v{record.get('previous')}: {record.get('reason', '')}"]
    if shadow:
        top1 = shadow.get("mean_top1") or {}
        lines.append(f"- **Shadowed on live traffic:** {shadow.get('images', 0)} images; top-1 agreement "
                     f"{_figure(shadow.get('agreement'))}; mean top-1 probability {_figure(top1.get('candidate'))} "
                     f"(current version: {_figure(top1.get('served'))})")
    feedback = evidence.get("feedback")
    if feedback:
        lines.append(f"- **Feedback during the soak:** {feedback['samples']} labelled images; this version right on "
                     f"{feedback['candidate_correct']}, the version it was compared with on "
                     f"{feedback['champion_correct']}")
    if evidence.get("rules"):
        rules = evidence["rules"]
        lines.append(f"- **Rules:** at least {rules['min_images']} images, agreement at least "
                     f"{rules['min_agreement']}, mean top-1 probability within {rules['max_confidence_change']}, "
                     f"feedback not favouring the current version")
    return "\n".join(lines) + "\n"


def _figure(value) -> str:
    return "n/a" if value is None else f"{value:.4f}"
