"""Loading, verifying and refusing versions, on copies of the shipped models."""

import json

import numpy as np
import pytest

from contract.layout import METADATA_FILE, current_version
from service.errors import UnknownModel
from service.inference.registry import ModelRegistry, VersionRefused, load_version
from tests.conftest import SHIPPED_MODELS, copy_current_version, publish_copy


MODEL_FILES = ("model.onnx", "model.int8.onnx")


def copy_model(tmp_path, name="fashion_mnist"):
    target = tmp_path / "models"
    return target, copy_current_version(target, name)


def add_version(models_dir, name, source_version, new_version, promote=True):
    return publish_copy(models_dir, name, source_version, new_version, promote=promote)


def test_shipped_models_load_and_pass_their_own_verification():
    registry = ModelRegistry(SHIPPED_MODELS)
    registry.refresh()
    assert registry.ready and registry.names() == ["cifar10", "fashion_mnist", "mnist"]
    with pytest.raises(UnknownModel, match="served models: cifar10, fashion_mnist, mnist"):
        registry.get("svhn")


def test_a_new_current_version_is_swapped_in(tmp_path):
    models_dir, version = copy_model(tmp_path)
    registry = ModelRegistry(models_dir)
    registry.refresh()
    before = registry.get("fashion_mnist")
    add_version(models_dir, "fashion_mnist", version, version + 1)
    assert registry.refresh() == [f"fashion_mnist v{version + 1} loaded"]
    assert registry.get("fashion_mnist").version == version + 1 and before.version == version


@pytest.mark.parametrize("damage", ["missing_metadata", "tampered_model", "wrong_outputs", "missing_model"])
def test_a_bad_version_is_refused_and_the_old_one_keeps_serving(tmp_path, damage):
    models_dir, version = copy_model(tmp_path)
    registry = ModelRegistry(models_dir)
    registry.refresh()
    folder = add_version(models_dir, "fashion_mnist", version, version + 1)
    if damage == "missing_metadata":
        (folder / METADATA_FILE).unlink()
    elif damage == "tampered_model":
        for model_file in MODEL_FILES:
            (folder / model_file).write_bytes((folder / model_file).read_bytes()[:-100])
    elif damage == "missing_model":
        for model_file in MODEL_FILES:
            (folder / model_file).unlink()
    else:  # the recorded outputs no longer match what the models compute
        samples = dict(np.load(folder / "verification.npz"))
        for outputs in ("probabilities", "probabilities_onnx_int8"):
            samples[outputs] = np.roll(samples[outputs], 1, axis=1)
        np.savez(folder / "verification.npz", **samples)
        metadata = json.loads((folder / METADATA_FILE).read_text())
        metadata["files"].pop("verification.npz")
        (folder / METADATA_FILE).write_text(json.dumps(metadata))
    assert registry.refresh() == [f"fashion_mnist v{version + 1} refused"]
    assert registry.get("fashion_mnist").version == version
    assert "fashion_mnist" in registry.errors
    assert registry.refresh() == []  # the same refused version is not retried on every poll
    with pytest.raises(VersionRefused):
        load_version(models_dir, "fashion_mnist", version + 1, "onnx")


def test_keras_reference_and_onnx_runtimes_agree_on_real_test_images(fashion):
    onnx_model = load_version(SHIPPED_MODELS, "fashion_mnist", _current("fashion_mnist"), "onnx")
    keras_model = load_version(SHIPPED_MODELS, "fashion_mnist", _current("fashion_mnist"), "keras")
    batch = fashion.x_test[:500].astype(np.float32) / np.float32(255)
    onnx_out, keras_out = onnx_model.runtime.predict(batch), keras_model.runtime.predict(batch)
    assert np.max(np.abs(onnx_out - keras_out)) < 1e-4
    assert np.array_equal(onnx_out.argmax(1), keras_out.argmax(1))


def _current(name):
    return current_version(SHIPPED_MODELS, name)


def test_auto_serves_the_int8_model_and_falls_back_to_float_where_there_is_none(tmp_path):
    models_dir, version = copy_model(tmp_path)
    assert load_version(models_dir, "fashion_mnist", version, "auto").runtime.kind == "onnx_int8"
    assert load_version(models_dir, "fashion_mnist", version, "onnx").runtime.kind == "onnx"
    folder = add_version(models_dir, "fashion_mnist", version, version + 1)
    metadata = json.loads((folder / METADATA_FILE).read_text())
    del metadata["runtimes"]["onnx_int8"]  # a version published without an int8 copy
    del metadata["files"]["model.int8.onnx"]
    (folder / METADATA_FILE).write_text(json.dumps(metadata))
    (folder / "model.int8.onnx").unlink()
    assert load_version(models_dir, "fashion_mnist", version + 1, "auto").runtime.kind == "onnx"
    with pytest.raises(VersionRefused, match="no 'onnx_int8' model"):
        load_version(models_dir, "fashion_mnist", version + 1, "onnx_int8")


@pytest.mark.parametrize("name", ["fashion_mnist", "cifar10"])
def test_int8_results_do_not_depend_on_the_batch_and_agree_with_float(name, fashion, cifar_folder):
    from PIL import Image

    if name == "fashion_mnist":
        images = fashion.x_test[:500]
    else:
        files = sorted((cifar_folder / "test").glob("*/*.jpg"))[::20]
        images = np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files])
    batch = images.astype(np.float32) / np.float32(255)
    int8 = load_version(SHIPPED_MODELS, name, _current(name), "onnx_int8").runtime
    float32 = load_version(SHIPPED_MODELS, name, _current(name), "onnx").runtime
    together = int8.predict(batch)
    assert np.array_equal(together, np.concatenate([int8.predict(batch[i:i + 1]) for i in range(len(batch))]))
    assert np.mean(together.argmax(1) == float32.predict(batch).argmax(1)) >= 0.97
