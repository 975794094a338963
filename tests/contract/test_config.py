"""Settings declared once: parsed by type, bounded, and described, from the declaration alone."""

from dataclasses import dataclass
from pathlib import Path

import pytest

from contract.config import Locations, SettingError, from_environment, markdown_table, parse_interval, setting


@dataclass(frozen=True)
class Example(Locations):
    workers: int = setting("EXAMPLE_WORKERS", 2, "processes", minimum=1)
    ratio: float = setting("EXAMPLE_RATIO", 0.5, "a share", above=0, maximum=1)
    mode: str = setting("EXAMPLE_MODE", "fast", "how", choices=("fast", "slow"))
    names: tuple[str, ...] = setting("EXAMPLE_NAMES", ("a", "b"), "which")
    every: float = setting("EXAMPLE_EVERY", 60.0, "how often", parse=parse_interval, shown="`1m`")
    limit: int | None = setting("EXAMPLE_LIMIT", None, "optional")
    token: str = setting("EXAMPLE_TOKEN", "", "secret", secret=True)


def test_values_are_typed_by_their_annotation_and_empty_means_unset():
    example = from_environment(Example, {"EXAMPLE_WORKERS": "4", "EXAMPLE_RATIO": "1", "EXAMPLE_NAMES": "x, y,",
                                         "EXAMPLE_EVERY": "2h", "EXAMPLE_LIMIT": "10", "EXAMPLE_MODE": "",
                                         "MODELS_DIR": "/m", "FEEDBACK_DIR": "/f"})
    assert (example.workers, example.ratio, example.names, example.every, example.limit, example.mode) == (
        4, 1.0, ("x", "y"), 7200.0, 10, "fast")
    assert example.models_dir == Path("/m") and example.feedback_folder == Path("/f")
    assert Example().feedback_folder == Path("models/.feedback")
    assert "token" not in repr(Example(token="hunter2"))


@pytest.mark.parametrize("environ, message", [
    ({"EXAMPLE_WORKERS": "0"}, "EXAMPLE_WORKERS must be at least 1, not 0"),
    ({"EXAMPLE_WORKERS": "many"}, "EXAMPLE_WORKERS='many' is not a valid int"),
    ({"EXAMPLE_RATIO": "0"}, "EXAMPLE_RATIO must be more than 0"),
    ({"EXAMPLE_RATIO": "nan"}, "EXAMPLE_RATIO must be more than 0"),
    ({"EXAMPLE_RATIO": "2"}, "EXAMPLE_RATIO must be at most 1"),
    ({"EXAMPLE_MODE": "turbo"}, "EXAMPLE_MODE must be one of fast, slow"),
    ({"EXAMPLE_EVERY": "soon"}, "EXAMPLE_EVERY='soon' is not a valid interval"),
])
def test_bad_values_are_refused_naming_the_variable(environ, message):
    with pytest.raises(SettingError, match=message):
        from_environment(Example, environ)


def test_the_docs_table_comes_from_the_declarations():
    table = markdown_table(Example)
    assert "| `EXAMPLE_WORKERS` | 2 | processes (at least 1) |" in table
    assert "| `EXAMPLE_MODE` | `fast` | how (one of `fast`, `slow`) |" in table
    assert "| `EXAMPLE_EVERY` | `1m` | how often |" in table
    assert "| `EXAMPLE_TOKEN` | unset | secret |" in table and "| `MODELS_DIR` | `models` |" in table
