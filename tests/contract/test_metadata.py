"""metadata.json as a typed object: the shipped documents read, and documents the service cannot use refused."""

import copy

import pytest

from contract.metadata import MetadataError, VersionMetadata, write_metadata
from tests.conftest import shipped_metadata


@pytest.mark.parametrize("name, shape, mode", [("fashion_mnist", (28, 28), "L"), ("cifar10", (32, 32, 3), "RGB")])
def test_the_shipped_documents_are_typed(name, shape, mode):
    metadata = VersionMetadata.from_document(shipped_metadata(name))
    assert metadata.name == name and metadata.input.shape == shape and metadata.input.pillow_mode == mode
    assert len(metadata.classes) == 10 and {"onnx", "onnx_int8", "keras"} <= set(metadata.runtimes)
    assert metadata.runtimes["onnx_int8"].verification_outputs == "probabilities_onnx_int8"
    assert metadata.runtimes["onnx"].verification_outputs == "probabilities"
    assert metadata.reference["samples"] == 5000 and metadata.test_samples == 10_000


@pytest.mark.parametrize("damage, words", [
    (lambda d: d.update(schema_version=2), "unsupported metadata schema 2"),
    (lambda d: d["input"].update(color_mode="cmyk"), "does not fit color mode"),
    (lambda d: d["input"].update(shape=[28, 28, 3]), "does not fit color mode 'grayscale'"),
    (lambda d: d.update(classes=[]), "none listed"),
    (lambda d: d.pop("runtimes"), "lacks or mistypes"),
    (lambda d: d["verification"].pop("file"), "lacks or mistypes"),
])
def test_documents_the_service_cannot_use_are_refused_saying_why(tmp_path, damage, words):
    document = copy.deepcopy(shipped_metadata("fashion_mnist"))
    damage(document)
    with pytest.raises(MetadataError, match=words):
        VersionMetadata.from_document(document)
    with pytest.raises(MetadataError):
        write_metadata(tmp_path, document)  # training cannot write one either
    assert not (tmp_path / "metadata.json").exists()
