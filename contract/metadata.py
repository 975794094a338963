"""A version's ``metadata.json``, as a typed object both sides check.

Training writes the whole document (``write_metadata`` refuses one the service could not serve); the service
reads it (``read_metadata``) and refuses a version whose document says too little. The fields the service acts
on are typed here; everything else (metrics, calibration, the training run, the data) stays in ``document``, for
people and for the model card.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from contract.layout import METADATA_FILE, write_text_atomically

SCHEMA_VERSION = 1  # what training writes
SUPPORTED_SCHEMA_VERSIONS = frozenset({1})  # what the service reads
COLOR_MODES = ("grayscale", "rgb")


class MetadataError(ValueError):
    """metadata.json does not say what the contract needs; the message says what."""


@dataclass(frozen=True)
class InputSpec:
    """What a model takes: size, color mode, and whether to invert light backgrounds."""

    shape: tuple[int, ...]
    color_mode: str  # "grayscale" or "rgb"
    invert_light_background: bool

    @property
    def size(self) -> tuple[int, int]:
        """(width, height), as Pillow wants it."""
        return (self.shape[1], self.shape[0])

    @property
    def pillow_mode(self) -> str:
        return "L" if self.color_mode == "grayscale" else "RGB"


@dataclass(frozen=True)
class RuntimeFile:
    """One serialized form of the model (``onnx``, ``onnx_int8``, ``keras``) and how to check it when loaded."""

    kind: str
    file: str
    test_accuracy: float | None  # measured at publish time; None: the Keras model's own
    verification_outputs: str  # the array of the verification samples this runtime must reproduce
    verification_atol: float


@dataclass(frozen=True)
class VersionMetadata:
    name: str
    version: int
    schema_version: int
    classes: tuple[str, ...]
    input: InputSpec
    runtimes: dict[str, RuntimeFile]
    verification_file: str
    files: dict[str, str]  # file name -> "sha256:<hex>"
    test_accuracy: float
    test_samples: int
    document: dict  # the whole metadata.json

    @property
    def reference(self) -> dict | None:
        """The monitoring reference recorded at publish time (``contract.reference``), if any."""
        return self.document.get("monitoring_reference")

    @classmethod
    def from_document(cls, document: dict) -> VersionMetadata:
        try:
            return cls._parse(document)
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, MetadataError):
                raise
            raise MetadataError(f"metadata.json lacks or mistypes {exc}") from exc

    @classmethod
    def _parse(cls, document: dict) -> VersionMetadata:
        schema = document.get("schema_version")
        if schema not in SUPPORTED_SCHEMA_VERSIONS:
            raise MetadataError(f"unsupported metadata schema {schema!r} (this service reads "
                                f"{sorted(SUPPORTED_SCHEMA_VERSIONS)})")
        shape = tuple(int(n) for n in document["input"]["shape"])
        color_mode = document["input"]["color_mode"]
        if color_mode not in COLOR_MODES or len(shape) != (2 if color_mode == "grayscale" else 3):
            raise MetadataError(f"input: shape {list(shape)} does not fit color mode {color_mode!r}")
        classes = tuple(str(c) for c in document["classes"])
        if not classes:
            raise MetadataError("classes: none listed")
        check = document["verification"]
        runtimes = {
            kind: RuntimeFile(kind, str(entry["file"]), entry.get("test_accuracy"),
                              str(entry.get("verification", {}).get("outputs", "probabilities")),
                              float(entry.get("verification", {}).get("atol", check.get("atol", 1e-4))))
            for kind, entry in document["runtimes"].items()}
        test = document["metrics"]["test"]
        spec = InputSpec(shape, color_mode, bool(document["preprocessing"].get("invert_light_background", False)))
        return cls(str(document["name"]), int(document["version"]), int(schema), classes, spec, runtimes,
                   str(check["file"]), dict(document.get("files", {})), float(test["accuracy"]),
                   int(test["samples"]), document)


def read_metadata(folder: Path) -> VersionMetadata:
    """The metadata of the version in ``folder``; FileNotFoundError for an incomplete version, MetadataError
    for a document the contract cannot use."""
    text = (Path(folder) / METADATA_FILE).read_text()
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise MetadataError(f"metadata.json is not JSON: {exc}") from exc
    if not isinstance(document, dict):
        raise MetadataError("metadata.json is not a JSON object")
    return VersionMetadata.from_document(document)


def write_metadata(folder: Path, document: dict, replace: bool = False) -> VersionMetadata:
    """Write ``document`` as the version's metadata.json, after checking that the service can read it;
    ``replace`` swaps an existing one atomically."""
    metadata = VersionMetadata.from_document(document)
    text = json.dumps(document, indent=2) + "\n"
    if replace:
        write_text_atomically(Path(folder) / METADATA_FILE, text)
    else:
        (Path(folder) / METADATA_FILE).write_text(text)
    return metadata
