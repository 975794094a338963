"""Settings declared once: each field of a settings dataclass names its environment variable, its type (the
annotation), its default, its bounds and its doc, in one ``setting(...)`` call, as Starlette's ``config`` does.

Reading the environment (``from_environment``), validation and its error messages (``check``), and the tables in
the docs (``markdown_table``, compared with the docs by a test) are all derived from those fields. Both packages'
settings build on ``Locations``: where the models and the feedback store are, which they share.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from contract.layout import FEEDBACK_FOLDER

TRUE_WORDS, FALSE_WORDS = ("1", "true", "yes", "on"), ("0", "false", "no", "off")
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


class SettingError(ValueError):
    """A setting's value cannot be used; the message names its environment variable."""


def setting(env: str, default, doc: str, *, minimum: float | None = None, above: float | None = None,
            maximum: float | None = None, choices: tuple[str, ...] | None = None, secret: bool = False,
            parse: Callable[[str], object] | None = None, shown: str | None = None):
    """A settings field: ``env`` is its variable, ``doc`` says what it does (one line, for the docs' table),
    ``minimum``/``above``/``maximum``/``choices`` bound it, ``secret`` keeps it out of repr and the docs' defaults,
    ``parse`` reads a value that is not a plain int, float, bool, str or path, ``shown`` is the default as the
    docs write it when the value alone would not say it well."""
    return field(default=default, repr=not secret, metadata={
        "env": env, "doc": doc, "minimum": minimum, "above": above, "maximum": maximum, "choices": choices,
        "secret": secret, "parse": parse, "shown": shown})


@dataclass(frozen=True)
class Declared:
    name: str
    env: str
    kind: object  # the annotation
    default: object
    doc: str
    minimum: float | None
    above: float | None
    maximum: float | None
    choices: tuple[str, ...] | None
    secret: bool
    parse: Callable[[str], object] | None
    shown: str | None


def declared(cls) -> list[Declared]:
    hints = typing.get_type_hints(cls)
    return [Declared(f.name, f.metadata["env"], hints[f.name], f.default, f.metadata["doc"], f.metadata["minimum"],
                     f.metadata["above"], f.metadata["maximum"], f.metadata["choices"], f.metadata["secret"],
                     f.metadata["parse"], f.metadata["shown"])
            for f in dataclasses.fields(cls) if "env" in f.metadata]


def from_environment(cls, environ: Mapping[str, str] | None = None, **overrides):
    """An instance of ``cls`` from the environment (empty values count as unset), then ``overrides``, checked."""
    environ = os.environ if environ is None else environ
    values = {}
    for item in declared(cls):
        raw = environ.get(item.env)
        if raw is not None and raw != "":
            values[item.name] = _parse(item, raw)
    values.update(overrides)
    instance = cls(**values)
    check(instance)
    return instance


def check(instance) -> None:
    """Every field within its declared bounds and choices, then the class's own ``cross_check``."""
    for item in declared(type(instance)):
        value = getattr(instance, item.name)
        if value is None or isinstance(value, bool) or not isinstance(value, (int, float, str)):
            continue
        if item.choices is not None and value not in item.choices:
            raise SettingError(f"{item.env} must be one of {', '.join(item.choices)}, not {value!r}")
        if isinstance(value, str):
            continue
        if item.minimum is not None and not value >= item.minimum:
            raise SettingError(f"{item.env} must be at least {_number(item.minimum)}, not {_number(value)}")
        if item.above is not None and not value > item.above:
            raise SettingError(f"{item.env} must be more than {_number(item.above)}, not {_number(value)}")
        if item.maximum is not None and not value <= item.maximum:
            raise SettingError(f"{item.env} must be at most {_number(item.maximum)}, not {_number(value)}")
        if isinstance(value, float) and not math.isfinite(value):
            raise SettingError(f"{item.env} must be a finite number")
    cross_check = getattr(instance, "cross_check", None)
    if cross_check is not None:
        cross_check()


def _parse(item: Declared, raw: str):
    kind = item.kind
    try:
        if item.parse is not None:
            return item.parse(raw)
        optional = typing.get_origin(kind) in (typing.Union, getattr(__import__("types"), "UnionType", None))
        if optional:
            kind = next(arg for arg in typing.get_args(kind) if arg is not type(None))
        if kind is bool:
            if raw.lower() not in TRUE_WORDS + FALSE_WORDS:
                raise ValueError(raw)
            return raw.lower() in TRUE_WORDS
        if kind is Path:
            return Path(raw)
        if typing.get_origin(kind) is tuple:
            return tuple(part.strip() for part in raw.split(",") if part.strip())
        if kind is int:
            return int(raw.replace("_", ""))
        return kind(raw)
    except (TypeError, ValueError) as exc:
        detail = f": {exc}" if item.parse is not None and str(exc) else ""
        raise SettingError(f"{item.env}={raw!r} is not a valid {_kind_name(item)}{detail}") from None


def _kind_name(item: Declared) -> str:
    if item.parse is parse_interval:
        return "interval (90s, 15m, 6h, 1d)"
    text = getattr(item.kind, "__name__", str(item.kind))
    return re.sub(r"\s*\|\s*None", "", text)


def _number(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def parse_interval(text: str) -> float:
    """'90', '90s', '15m', '6h' or '1d' -> seconds."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text)
    if not match or float(match.group(1)) <= 0:
        raise ValueError(f"not an interval: {text!r} (use e.g. 90s, 15m, 6h, 1d)")
    return float(match.group(1)) * UNITS[match.group(2) or "s"]


def markdown_table(cls) -> str:
    """The docs' table of ``cls``'s settings: variable, default, meaning with its bounds."""
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for item in declared(cls):
        rows.append(f"| `{item.env}` | {_shown_default(item)} | {item.doc}{_bounds(item)} |")
    return "\n".join(rows) + "\n"


def _shown_default(item: Declared) -> str:
    if item.shown is not None:
        return item.shown
    value = item.default
    if item.secret or value in ("", None, ()):
        return "unset"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, tuple):
        return "`" + ",".join(value) + "`"
    if isinstance(value, (str, Path)):
        return f"`{value}`"
    return _number(value)


def _bounds(item: Declared) -> str:
    parts = []
    if item.choices:
        parts.append("one of " + ", ".join(f"`{c}`" for c in item.choices))
    if item.minimum is not None:
        parts.append(f"at least {_number(item.minimum)}")
    if item.above is not None:
        parts.append(f"more than {_number(item.above)}")
    if item.maximum is not None:
        parts.append(f"at most {_number(item.maximum)}")
    return f" ({'; '.join(parts)})" if parts else ""


@dataclass(frozen=True)
class Locations:
    """Where the models and the feedback store are: read by the service and by training alike."""

    models_dir: Path = setting("MODELS_DIR", Path("models"), "where published models are (training publishes "
                                                             "there, the service reads there)")
    feedback_dir: Path | None = setting("FEEDBACK_DIR", None, "the feedback images and, without `DATABASE_URL`, "
                                                              "the SQLite database `feedback.db`",
                                        shown=f"`<MODELS_DIR>/{FEEDBACK_FOLDER}`")
    database_url: str = setting("DATABASE_URL", "", "a PostgreSQL database for feedback "
                                                    "(`postgresql://user:password@host/db`), for several replicas",
                                secret=True)

    @property
    def feedback_folder(self) -> Path:
        return Path(self.feedback_dir) if self.feedback_dir else Path(self.models_dir) / FEEDBACK_FOLDER
