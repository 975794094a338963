import gzip
import pickle

import numpy as np
import pytest

from tests.conftest import png_bytes
from training.datasets import (
    FASHION_MNIST_FILES,
    SPECS,
    DatasetError,
    load_dataset,
    load_fashion_mnist_idx,
)


def test_fashion_mnist_loads_from_the_keras_cache_layout(fashion_dir, tmp_path):
    dataset = load_dataset("fashion_mnist", fashion_dir.parent)
    assert dataset.x_train.shape == (60000, 28, 28) and dataset.x_test.shape == (10000, 28, 28)
    assert dataset.x_train.dtype == np.uint8
    assert np.bincount(dataset.y_test).tolist() == [1000] * 10
    assert dataset.fingerprint == load_fashion_mnist_idx(fashion_dir).fingerprint


def test_keras_home_cache_is_used_without_data_dir(fashion_dir, tmp_path, monkeypatch):
    cache = tmp_path / "datasets" / "fashion-mnist"
    cache.mkdir(parents=True)
    for name in FASHION_MNIST_FILES.values():
        (cache / name).symlink_to(fashion_dir / name)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    assert load_dataset("fashion_mnist", download=False).source == f"idx:{cache}"


def test_unknown_dataset_is_refused():
    with pytest.raises(DatasetError, match="unknown dataset 'emnist'"):
        load_dataset("emnist")


def test_mnist_reads_the_idx_copy_and_keras_mnist_npz_alike(mnist_dir, tmp_path, monkeypatch):
    idx = load_dataset("mnist", mnist_dir.parent)
    assert idx.source == f"idx:{mnist_dir}" and idx.spec.classes[7] == "7"
    assert (len(idx.x_train), len(idx.x_test)) == (8004, 1996) and idx.x_test.shape[1:] == (28, 28)
    # Keras' own download is one file, mnist.npz, in the Keras cache.
    cache = tmp_path / "datasets"
    cache.mkdir()
    np.savez(cache / "mnist.npz", x_train=idx.x_train, y_train=idx.y_train, x_test=idx.x_test, y_test=idx.y_test)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    npz = load_dataset("mnist", download=False)
    assert npz.source == f"npz:{cache / 'mnist.npz'}" and npz.fingerprint == idx.fingerprint
    np.savez(cache / "mnist.npz", x_train=idx.x_train, y_train=idx.y_train, x_test=idx.x_test)
    with pytest.raises(DatasetError, match="not a readable mnist.npz"):
        load_dataset("mnist", cache)
    np.savez(cache / "mnist.npz", x_train=idx.x_train[:, :20], y_train=idx.y_train, x_test=idx.x_test,
             y_test=idx.y_test)
    with pytest.raises(DatasetError, match=r"expected uint8 \(28, 28\)"):
        load_dataset("mnist", cache)


def test_missing_data_names_every_path_tried(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "empty"))
    with pytest.raises(DatasetError) as error:
        load_dataset("cifar10", tmp_path)
    message = str(error.value)
    assert "cifar-10-batches-py" in message and "cifar10-jpeg.tar.gz" in message and str(tmp_path) in message
    with pytest.raises(DatasetError, match="does not exist"):
        load_dataset("cifar10", tmp_path / "nowhere")


def test_corrupt_and_truncated_idx_files_are_reported(fashion_dir, tmp_path):
    folder = tmp_path / "fashion-mnist"
    folder.mkdir()
    for name in FASHION_MNIST_FILES.values():
        (folder / name).write_bytes((fashion_dir / name).read_bytes())
    (folder / FASHION_MNIST_FILES["y_test"]).write_bytes(b"not gzip at all")
    with pytest.raises(DatasetError, match="corrupt or not gzip"):
        load_dataset("fashion_mnist", tmp_path)
    labels = gzip.decompress((fashion_dir / FASHION_MNIST_FILES["y_test"]).read_bytes())
    (folder / FASHION_MNIST_FILES["y_test"]).write_bytes(gzip.compress(labels[:-10]))
    with pytest.raises(DatasetError, match="truncated"):
        load_dataset("fashion_mnist", tmp_path)


def _write_folder(root, images, labels, spec, split, fmt="PNG"):
    for i, (pixels, label) in enumerate(zip(images, labels)):
        folder = root / split / spec.folder_names[label]
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{i:05d}.{fmt.lower()}").write_bytes(png_bytes(pixels, fmt))


def test_image_folder_gives_the_same_pixels_as_the_idx_files(fashion, tmp_path):
    spec = SPECS["fashion_mnist"]
    _write_folder(tmp_path, fashion.x_train[:200], fashion.y_train[:200], spec, "train")
    _write_folder(tmp_path, fashion.x_test[:100], fashion.y_test[:100], spec, "test")
    loaded = load_dataset("fashion_mnist", tmp_path)
    assert loaded.source.startswith("image-folder:")
    # Folder order is (class, file name); compare as sets of (label, image) pairs.
    order = np.lexsort((np.arange(100), fashion.y_test[:100]))
    assert np.array_equal(loaded.x_test, fashion.x_test[:100][order])
    assert np.array_equal(loaded.y_test, fashion.y_test[:100][order])


def test_cifar_jpeg_archive_unpacks_into_an_image_folder(cifar_folder):
    classes = sorted(p.name for p in (cifar_folder / "test").iterdir())
    assert classes == list(SPECS["cifar10"].folder_names)
    assert len(list((cifar_folder / "test" / "cat").glob("*.jpg"))) == 1000


def test_cifar_python_batches_are_read(cifar_folder, tmp_path):
    from training.datasets import load_image_split

    images, labels = load_image_split(cifar_folder / "test", SPECS["cifar10"])
    images, labels = images[::100], labels[::100]
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    channels_first = images.transpose(0, 3, 1, 2).reshape(len(images), -1)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(folder / name, "wb") as f:
            pickle.dump({b"data": channels_first, b"labels": labels.tolist()}, f)
    loaded = load_dataset("cifar10", tmp_path)
    assert loaded.x_train.shape == (5 * len(images), 32, 32, 3)
    assert np.array_equal(loaded.x_test, images)
    (folder / "test_batch").write_bytes(b"garbage")
    with pytest.raises(DatasetError, match="not a CIFAR-10 python batch"):
        load_dataset("cifar10", tmp_path)


def test_empty_or_mislabeled_image_folders_are_clear_errors(tmp_path):
    (tmp_path / "train" / "cat").mkdir(parents=True)
    (tmp_path / "test" / "cat").mkdir(parents=True)
    with pytest.raises(DatasetError, match="no images found"):
        load_dataset("cifar10", tmp_path)
    (tmp_path / "train" / "unicorn").mkdir()
    with pytest.raises(DatasetError, match="unknown class folder 'unicorn'"):
        load_dataset("cifar10", tmp_path)
    (tmp_path / "train" / "unicorn").rmdir()
    (tmp_path / "train" / "cat" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.raises(DatasetError, match="not a readable image"):
        load_dataset("cifar10", tmp_path)
