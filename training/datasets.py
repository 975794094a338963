"""Load MNIST, Fashion-MNIST and CIFAR-10 as uint8 arrays, from wherever they are.

Sources are tried in a fixed order and every path tried is named in the error when none works:
an explicit ``data_dir`` (Keras cache layout: IDX files or ``mnist.npz``, CIFAR-10 python batches, a folder of
labeled images, or the ``cifar10-jpeg.tar.gz`` archive of one), then the Keras cache under
``$KERAS_HOME/datasets``, then the normal Keras download.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import pickle
import re
import shutil
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
FASHION_MNIST_FILES = {
    "x_train": "train-images-idx3-ubyte.gz",
    "y_train": "train-labels-idx1-ubyte.gz",
    "x_test": "t10k-images-idx3-ubyte.gz",
    "y_test": "t10k-labels-idx1-ubyte.gz",
}


class DatasetError(Exception):
    """The data could not be found or read; the message says where and why."""


@dataclass(frozen=True)
class DatasetSpec:
    """What a dataset is: its classes, image shape and where its copies usually live."""

    name: str
    classes: tuple[str, ...]
    image_shape: tuple[int, ...]
    color_mode: str  # "grayscale" or "rgb"
    # Fashion-MNIST shows light garments on black; photos of garments are usually the opposite.
    dark_background: bool
    folder_names: tuple[str, ...]  # names of <split>/<class> folders, aliases for ``classes``
    keras_cache_dirs: tuple[str, ...]  # under $KERAS_HOME/datasets
    archive_name: str | None = None  # a tarball of an image folder, unpacked into the Keras cache
    idx_dirs: tuple[str, ...] = ()  # folders that may hold the four IDX files (the MNIST family's format)
    npz_name: str | None = None  # Keras' single-file download of the four arrays (MNIST's, not Fashion-MNIST's)

    @property
    def image_size(self) -> tuple[int, int]:
        """(width, height) as Pillow wants it."""
        return (self.image_shape[1], self.image_shape[0])


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
DIGIT_CLASSES = tuple(str(digit) for digit in range(10))
OFFICIAL_MNIST_TEST_SIZE = 10_000
CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)

SPECS: dict[str, DatasetSpec] = {
    "fashion_mnist": DatasetSpec(
        name="fashion_mnist",
        classes=FASHION_MNIST_CLASSES,
        image_shape=(28, 28),
        color_mode="grayscale",
        dark_background=True,
        folder_names=tuple(_slug(c) for c in FASHION_MNIST_CLASSES),
        keras_cache_dirs=("fashion-mnist", "fashion_mnist-images"),
        idx_dirs=("fashion-mnist",),
    ),
    "mnist": DatasetSpec(
        name="mnist",
        classes=DIGIT_CLASSES,
        image_shape=(28, 28),
        color_mode="grayscale",
        dark_background=True,  # white digits on black, as Fashion-MNIST; written digits are usually ink on paper
        folder_names=DIGIT_CLASSES,
        keras_cache_dirs=("mnist",),
        idx_dirs=("mnist", "mnist-10k"),  # mnist-10k: the 10,000-digit offline copy (shared datasets README)
        npz_name="mnist.npz",
    ),
    "cifar10": DatasetSpec(
        name="cifar10",
        classes=CIFAR10_CLASSES,
        image_shape=(32, 32, 3),
        color_mode="rgb",
        dark_background=False,
        folder_names=CIFAR10_CLASSES,
        keras_cache_dirs=(
            "cifar-10-batches-py-target/cifar-10-batches-py",
            "cifar-10-batches-py",
            "cifar10-jpeg",
        ),
        archive_name="cifar10-jpeg.tar.gz",
    ),
}


@dataclass
class Dataset:
    """A dataset's train and test splits as uint8 images and integer labels."""

    spec: DatasetSpec
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    source: str
    _fingerprint: str | None = field(default=None, repr=False)
    # The data directory it was loaded from (None: the Keras cache or download), where related datasets are
    # looked for too (the out-of-distribution probe, training/uncertainty.py).
    data_dir: Path | None = None

    @property
    def fingerprint(self) -> str:
        """SHA-256 of the pixels and labels, the same whichever format they were read from."""
        if self._fingerprint is None:
            digest = hashlib.sha256()
            for array in (self.x_train, self.y_train, self.x_test, self.y_test):
                digest.update(str(array.shape).encode())
                digest.update(np.ascontiguousarray(array).tobytes())
            self._fingerprint = "sha256:" + digest.hexdigest()
        return self._fingerprint

    @property
    def note(self) -> str | None:
        """What accuracy measured on this copy is comparable with, when it is not the official test split."""
        if self.spec.name == "cifar10" and "jpeg" in self.source.lower():
            return "JPEG copy of CIFAR-10: accuracy is close to, not identical with, the original test set"
        if self.spec.name == "mnist" and len(self.x_test) != OFFICIAL_MNIST_TEST_SIZE:
            return (f"a subset of MNIST ({len(self.x_train):,} training and {len(self.x_test):,} test digits), not "
                    "the official split: accuracy on it is not comparable with results on the official "
                    "10,000-digit test set")
        return None


def get_spec(name: str) -> DatasetSpec:
    try:
        return SPECS[name]
    except KeyError:
        raise DatasetError(f"unknown dataset {name!r}; known: {', '.join(sorted(SPECS))}") from None


def keras_datasets_dir() -> Path:
    """Where Keras caches downloads: ``$KERAS_HOME/datasets``, else ``~/.keras/datasets``."""
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    return Path(home) / "datasets"


def load_dataset(name: str, data_dir: str | os.PathLike | None = None, download: bool = True) -> Dataset:
    """Load ``name`` from ``data_dir`` if given, else from the Keras cache, else by Keras' download."""
    spec = get_spec(name)
    tried: list[str] = []
    roots = [Path(data_dir)] if data_dir is not None else [keras_datasets_dir()]
    if data_dir is not None and not Path(data_dir).is_dir():
        raise DatasetError(f"data directory {data_dir} does not exist")
    for root in roots:
        dataset = _load_from_root(spec, root, tried)
        if dataset is not None:
            dataset.data_dir = Path(data_dir) if data_dir is not None else None
            return dataset
    if data_dir is None and download:
        try:
            return _download_with_keras(spec)
        except Exception as exc:  # offline, blocked, or a bad download: say what was tried
            tried.append(f"Keras download ({type(exc).__name__}: {exc})")
    raise DatasetError(
        f"no {name} data found; tried:\n  " + "\n  ".join(tried)
        + "\nPass --data-dir pointing at a local copy (see README: 'Where the data comes from')."
    )


def _load_from_root(spec: DatasetSpec, root: Path, tried: list[str]) -> Dataset | None:
    if spec.idx_dirs:
        for folder in [root / d for d in spec.idx_dirs] + [root]:
            tried.append(f"{folder}/{{{','.join(FASHION_MNIST_FILES.values())}}}")
            if all((folder / f).is_file() for f in FASHION_MNIST_FILES.values()):
                return load_idx_folder(folder, spec)
        if spec.npz_name:
            tried.append(str(root / spec.npz_name))
            if (root / spec.npz_name).is_file():
                return load_npz(root / spec.npz_name, spec)
    else:
        for folder in (root / "cifar-10-batches-py-target" / "cifar-10-batches-py", root / "cifar-10-batches-py", root):
            tried.append(f"{folder}/data_batch_1..5,test_batch")
            if (folder / "data_batch_1").is_file() and (folder / "test_batch").is_file():
                return load_cifar10_batches(folder)
    for folder in [root / d for d in spec.keras_cache_dirs] + [root / spec.name, root]:
        tried.append(f"{folder}/{{train,test}}/<class>/*.png|jpg")
        if (folder / "train").is_dir() and (folder / "test").is_dir():
            return load_image_folder(folder, spec)
    if spec.archive_name:
        archive = root / spec.archive_name
        tried.append(str(archive))
        if archive.is_file():
            return load_image_folder(unpack_archive(archive), spec)
    return None


def _read_idx(path: Path, magic: int, ndim: int) -> np.ndarray:
    """Read one gzip'd IDX file (the MNIST family's format), checking its header."""
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as exc:
        raise DatasetError(f"{path} is corrupt or not gzip: {exc}") from exc
    header = 4 + 4 * ndim
    if len(raw) < header or int.from_bytes(raw[:4], "big") != magic:
        raise DatasetError(f"{path} is not an IDX file (bad magic number)")
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    if len(raw) - header != int(np.prod(dims)):
        raise DatasetError(f"{path} is truncated: header says {dims}, {len(raw) - header} bytes of data")
    return np.frombuffer(raw, np.uint8, offset=header).reshape(dims)


def load_idx_folder(folder: Path, spec: DatasetSpec) -> Dataset:
    """The four IDX files of an MNIST-family dataset, named as Fashion-MNIST's (and as Keras caches them)."""
    images = {k: _read_idx(folder / f, 2051, 3) for k, f in FASHION_MNIST_FILES.items() if k.startswith("x")}
    labels = {k: _read_idx(folder / f, 2049, 1) for k, f in FASHION_MNIST_FILES.items() if k.startswith("y")}
    return _checked_dataset(spec, {**images, **labels}, source=f"idx:{folder}")


def load_fashion_mnist_idx(folder: Path) -> Dataset:
    """The four official Fashion-MNIST files, as Keras caches them."""
    return load_idx_folder(folder, SPECS["fashion_mnist"])


def load_npz(path: Path, spec: DatasetSpec) -> Dataset:
    """Keras' ``mnist.npz``: the arrays x_train, y_train, x_test and y_test in one file."""
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: np.asarray(f[k]) for k in FASHION_MNIST_FILES}
    except (OSError, ValueError, KeyError, EOFError) as exc:  # not a zip, a pickled array, a missing key
        raise DatasetError(f"{path} is not a readable {spec.npz_name}: {type(exc).__name__}: {exc}") from exc
    return _checked_dataset(spec, arrays, source=f"npz:{path}")


def _checked_dataset(spec: DatasetSpec, arrays: dict[str, np.ndarray], source: str) -> Dataset:
    """A Dataset from the four arrays, refused when they are not uint8 images of the spec's shape and labels."""
    for split in ("train", "test"):
        images, labels = arrays[f"x_{split}"], arrays[f"y_{split}"].reshape(-1)
        if images.dtype != np.uint8 or images.shape[1:] != spec.image_shape:
            raise DatasetError(f"{source}: {split} images are {images.dtype} {images.shape[1:]}, "
                               f"expected uint8 {spec.image_shape}")
        if len(images) != len(labels):
            raise DatasetError(f"{source}: {split} images and labels differ in count")
        if len(labels) and not (labels.min() >= 0 and labels.max() < len(spec.classes)):
            raise DatasetError(f"{source}: {split} labels outside 0..{len(spec.classes) - 1}")
        arrays[f"y_{split}"] = labels.astype(np.uint8)
    return Dataset(spec, arrays["x_train"], arrays["y_train"], arrays["x_test"], arrays["y_test"], source=source)


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, "rb") as f:
            batch = pickle.load(f, encoding="bytes")
        data = np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        labels = np.asarray(batch[b"labels"], dtype=np.uint8)
    except Exception as exc:  # pickle, key and reshape errors all mean the same thing here
        raise DatasetError(f"{path} is not a CIFAR-10 python batch: {type(exc).__name__}: {exc}") from exc
    return np.ascontiguousarray(data), labels


def load_cifar10_batches(folder: Path) -> Dataset:
    """The standard ``cifar-10-batches-py`` folder (python pickles, as Keras downloads it)."""
    parts = [_read_cifar_batch(folder / f"data_batch_{i}") for i in range(1, 6)]
    x_test, y_test = _read_cifar_batch(folder / "test_batch")
    return Dataset(SPECS["cifar10"], np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]),
                   x_test, y_test, source=f"cifar-batches:{folder}")


def _class_index(spec: DatasetSpec, folder_name: str) -> int | None:
    aliases = {n: i for i, n in enumerate(spec.folder_names)}
    aliases.update({str(i): i for i in range(len(spec.classes))})
    aliases.update({_slug(c): i for i, c in enumerate(spec.classes)})
    return aliases.get(_slug(folder_name), aliases.get(folder_name))


def read_image_file(path: Path, spec: DatasetSpec) -> np.ndarray:
    """One image file as uint8 in the dataset's shape; other sizes are fitted and padded, not stretched."""
    try:
        with Image.open(path) as image:
            image = image.convert("L" if spec.color_mode == "grayscale" else "RGB")
            if image.size != spec.image_size:
                image = ImageOps.pad(image, spec.image_size, method=Image.Resampling.LANCZOS)
            return np.asarray(image, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise DatasetError(f"{path} is not a readable image: {exc}") from exc


def load_image_split(split_dir: Path, spec: DatasetSpec) -> tuple[np.ndarray, np.ndarray]:
    """All images under ``split_dir/<class>/``, in a stable order (class, then file name)."""
    files: list[tuple[int, Path]] = []
    for class_dir in sorted(p for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        index = _class_index(spec, class_dir.name)
        if index is None:
            raise DatasetError(
                f"{class_dir}: unknown class folder {class_dir.name!r}; expected one of "
                f"{', '.join(spec.folder_names)} (or 0..{len(spec.classes) - 1})"
            )
        files += [(index, f) for f in sorted(class_dir.iterdir()) if f.suffix.lower() in IMAGE_SUFFIXES]
    if not files:
        raise DatasetError(f"no images found under {split_dir}/<class>/ (suffixes: {', '.join(sorted(IMAGE_SUFFIXES))})")
    files.sort(key=lambda item: (item[0], item[1].name))
    images = np.stack([read_image_file(path, spec) for _, path in files])
    return images, np.array([label for label, _ in files], dtype=np.uint8)


def load_image_folder(root: Path, spec: DatasetSpec) -> Dataset:
    """A folder of labeled images: ``root/{train,test}/<class>/*.png|jpg``."""
    x_train, y_train = load_image_split(root / "train", spec)
    x_test, y_test = load_image_split(root / "test", spec)
    return Dataset(spec, x_train, y_train, x_test, y_test, source=f"image-folder:{root}")


def unpack_archive(archive: Path) -> Path:
    """Unpack an image-folder tarball once into the Keras cache; a half-unpacked copy is never used."""
    name = archive.name.removesuffix(".tar.gz").removesuffix(".tgz").removesuffix(".tar")
    target = keras_datasets_dir() / name
    if (target / "train").is_dir() and (target / "test").is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
    try:
        with tarfile.open(archive) as tar:
            tar.extractall(staging, filter="data")
        unpacked = staging / name if (staging / name).is_dir() else staging
        if not ((unpacked / "train").is_dir() and (unpacked / "test").is_dir()):
            raise DatasetError(f"{archive} does not hold train/ and test/ folders")
        os.replace(unpacked, target)
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise DatasetError(f"{archive} could not be unpacked: {exc}") from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _download_with_keras(spec: DatasetSpec) -> Dataset:
    import keras

    loader = {"mnist": keras.datasets.mnist, "fashion_mnist": keras.datasets.fashion_mnist,
              "cifar10": keras.datasets.cifar10}[spec.name]
    (x_train, y_train), (x_test, y_test) = loader.load_data()
    return Dataset(spec, np.asarray(x_train, np.uint8), np.asarray(y_train, np.uint8).reshape(-1),
                   np.asarray(x_test, np.uint8), np.asarray(y_test, np.uint8).reshape(-1), source="keras-download")
