"""A true label as clients send it (a class name in any case, or an index) -> the model's class."""

from __future__ import annotations

from service.errors import InvalidParameter
from service.feedback.errors import UnknownLabel
from service.inference.registry import LoadedModel
from service.inference.uploads import whole_number


def parse_label(raw: str | None, model: LoadedModel) -> tuple[int, str]:
    """A class name (as listed in /models/<name>) or its index -> (index, name); anything else is a 422."""
    if raw is None or raw == "":
        raise InvalidParameter("send the true label as 'label': a class name or its index")
    classes = model.classes
    index = whole_number(raw)
    if index is not None and index < len(classes):
        return index, classes[index]
    if raw in classes:
        return classes.index(raw), raw
    folded = [c.casefold() for c in classes]
    if raw.casefold() in folded:
        index = folded.index(raw.casefold())
        return index, classes[index]
    shown = raw if len(raw) <= 64 else raw[:64] + "..."
    raise UnknownLabel(f"{shown!r} is not a class of {model.name!r}: use one of {', '.join(classes)} "
                       f"or an index from 0 to {len(classes) - 1}")
