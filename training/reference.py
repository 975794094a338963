"""The monitoring reference of a version: what its inputs and answers look like on training images.

Recorded in metadata.json at publish time (``write_artifact``) and, for versions published before it existed,
by ``python -m training reference``. The service's drift metrics compare live traffic with it; the statistics
are computed by the contract's code (``contract.reference``), which the service measures live traffic with.
"""

from __future__ import annotations

from pathlib import Path

from contract.layout import version_dir
from contract.metadata import read_metadata, write_metadata
from contract.monitoring import LOW_CONFIDENCE_THRESHOLD
from contract.reference import reference_profile
from training.datasets import Dataset
from training.export import onnx_probabilities
from training.train import to_model_input

REFERENCE_SAMPLES = 5000


def training_reference(dataset: Dataset, onnx_bytes: bytes) -> dict:
    """The reference profile over the first training images, answered by the float ONNX graph."""
    inputs = to_model_input(dataset.x_train[:REFERENCE_SAMPLES])
    return reference_profile(inputs, onnx_probabilities(onnx_bytes, inputs), LOW_CONFIDENCE_THRESHOLD,
                             source=f"the first {len(inputs)} images of the training split")


def add_reference(models_dir: Path, name: str, version: int, dataset: Dataset) -> dict:
    """Record the reference in an already published version's metadata.json (replaced atomically; the file is
    not among the hashed ones, so the version stays valid)."""
    folder = version_dir(models_dir, name, version)
    metadata = read_metadata(folder)
    document = dict(metadata.document)
    document["monitoring_reference"] = training_reference(dataset, (folder / metadata.runtimes["onnx"].file)
                                                          .read_bytes())
    write_metadata(folder, document, replace=True)
    return document["monitoring_reference"]
