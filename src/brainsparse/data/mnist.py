"""The MNIST family: MNIST, Fashion-MNIST and the EMNIST splits, loaded from IDX files.

``load_mnist_family(name)`` returns ``(train_x, train_y, test_x, test_y)`` as torch tensors:
``x`` float32 of shape (N, 784), normalised with the dataset's mean and std; ``y`` int64 class
indices starting at 0. Where the files come from is decided by :func:`find_dataset`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..errors import BrainsparseError, DataNotFoundError
from .idx import read_idx
from .images import PixelImages
from .locate import dataset_files, find_dataset

__all__ = [
    "DatasetInfo",
    "DATASETS",
    "DATASET_NAMES",
    "dataset_info",
    "num_classes",
    "load_mnist_family",
    "load_idx_pair",
]

_ROLES = ("train_images", "train_labels", "test_images", "test_labels")

_WHERE = (
    "then pass --data-dir FOLDER (data_dir=FOLDER in Python) or set BRAINSPARSE_DATA=FOLDER, "
    "where FOLDER holds the files itself or in a subfolder named '{name}'"
)


@dataclass(frozen=True)
class DatasetInfo:
    """Metadata of one dataset of the MNIST family.

    Fields can be read as attributes or as items (``info.mean`` or ``info["mean"]``).
    """

    name: str
    num_classes: int
    mean: float
    std: float
    #: role ("train_images", "train_labels", "test_images", "test_labels") -> file name
    #: without ``.gz``; a file is accepted with or without ``.gz``.
    files: Mapping[str, str]
    #: official base address the ``<file>.gz`` downloads come from, or None if there is none.
    url: str | None
    #: how a user obtains the files by hand (one sentence or two).
    how_to_get: str
    image_shape: tuple[int, int] = (28, 28)
    #: download file name -> (sha256 or None, md5 or None, size in bytes or None).
    checksums: Mapping[str, tuple[str | None, str | None, int | None]] = field(default_factory=dict)
    #: folder names looked for under the system dataset roots (e.g. Debian's /usr/share/datasets).
    system_names: tuple[str, ...] = ()
    #: other folder names looked for under --data-dir, BRAINSPARSE_DATA and the cache.
    subdirs: tuple[str, ...] = ()
    #: EMNIST stores images transposed; they are turned upright when loading.
    transpose: bool = False
    #: added to the stored labels so that classes start at 0 (EMNIST letters are stored 1..26).
    label_offset: int = 0
    #: sha256 of the uncompressed test-labels file, used to tell datasets with equal file names apart.
    test_labels_sha256: str | None = None
    #: Debian/Ubuntu package that installs the files, if any.
    debian_package: str | None = None
    #: number of training / test samples of the official release (not enforced: custom files may differ).
    train_size: int | None = None
    test_size: int | None = None

    @property
    def input_size(self) -> int:
        """Number of input features after flattening (784)."""
        return self.image_shape[0] * self.image_shape[1]

    def __getitem__(self, key: str):
        try:
            return getattr(self, key)
        except AttributeError:
            raise KeyError(key) from None


_MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}

_MNIST_URL = "http://yann.lecun.com/exdb/mnist/"
_FASHION_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
_EMNIST_PAGE = "https://www.nist.gov/itl/products-and-services/emnist-dataset"

_FILE_LIST = "train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz"

_EMNIST_SPLITS = {  # split -> (classes, label offset, train size, test size)
    "balanced": (47, 0, 112800, 18800),
    "byclass": (62, 0, 697932, 116323),
    "bymerge": (47, 0, 697932, 116323),
    "digits": (10, 0, 240000, 40000),
    "letters": (26, -1, 124800, 20800),
    "mnist": (10, 0, 60000, 10000),
}


def _build() -> dict[str, DatasetInfo]:
    out: dict[str, DatasetInfo] = {}
    out["mnist"] = DatasetInfo(
        name="mnist",
        num_classes=10,
        mean=0.1307,
        std=0.3081,
        files=dict(_MNIST_FILES),
        url=_MNIST_URL,
        how_to_get=(
            f"download the four files {_FILE_LIST} from the official MNIST page {_MNIST_URL} into a folder, "
            + _WHERE.format(name="mnist")
        ),
        checksums={
            "train-images-idx3-ubyte.gz": (
                "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609", None, 9912422),
            "train-labels-idx1-ubyte.gz": (
                "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c", None, 28881),
            "t10k-images-idx3-ubyte.gz": (
                "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6", None, 1648877),
            "t10k-labels-idx1-ubyte.gz": (
                "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6", None, 4542),
        },
        system_names=("mnist",),
        subdirs=("MNIST/raw",),
        test_labels_sha256="ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
        train_size=60000,
        test_size=10000,
    )
    out["fashion-mnist"] = DatasetInfo(
        name="fashion-mnist",
        num_classes=10,
        mean=0.2860,
        std=0.3530,
        files=dict(_MNIST_FILES),
        url=_FASHION_URL,
        how_to_get=(
            "on Debian/Ubuntu run 'sudo apt-get install dataset-fashion-mnist' (installs "
            "/usr/share/datasets/fashion-mnist, found automatically); otherwise download the four files "
            f"{_FILE_LIST} from the official address {_FASHION_URL} into a folder, "
            + _WHERE.format(name="fashion-mnist")
        ),
        # md5s published by Zalando Research for the original .gz files (Debian's copies have
        # rewritten gzip headers, so they differ byte-wise but hold the same data).
        checksums={
            "train-images-idx3-ubyte.gz": (None, "8d4fb7e6c68d591d4c3dfef9ec88bf0d", None),
            "train-labels-idx1-ubyte.gz": (None, "25c81989df183df01b3e8a0aad5dffbe", None),
            "t10k-images-idx3-ubyte.gz": (None, "bef4ecab320f06d8554ea6380940ec79", None),
            "t10k-labels-idx1-ubyte.gz": (None, "bb300cfdad3c16e7a12a480ee83cd310", None),
        },
        system_names=("fashion-mnist",),
        subdirs=("fashion_mnist", "FashionMNIST/raw"),
        test_labels_sha256="0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
        debian_package="dataset-fashion-mnist",
        train_size=60000,
        test_size=10000,
    )
    for split, (classes, offset, n_train, n_test) in _EMNIST_SPLITS.items():
        name = f"emnist-{split}"
        files = {
            "train_images": f"emnist-{split}-train-images-idx3-ubyte",
            "train_labels": f"emnist-{split}-train-labels-idx1-ubyte",
            "test_images": f"emnist-{split}-test-images-idx3-ubyte",
            "test_labels": f"emnist-{split}-test-labels-idx1-ubyte",
        }
        listed = ", ".join(f + ".gz" for f in files.values())
        out[name] = DatasetInfo(
            name=name,
            num_classes=classes,
            mean=0.1736,
            std=0.3317,
            files=files,
            url=None,
            how_to_get=(
                "EMNIST has no stable direct link to its IDX files, so it is never downloaded automatically: "
                f"from the official EMNIST page {_EMNIST_PAGE} download the archive 'Binary format as the "
                f"original MNIST dataset' (gzip.zip), extract from its gzip/ folder the files {listed} "
                "into a folder (e.g. one named 'emnist'), " + _WHERE.format(name=name)
            ),
            system_names=(name, "emnist"),
            subdirs=("emnist", "emnist/gzip", "gzip", "EMNIST/raw"),
            transpose=True,
            label_offset=offset,
            train_size=n_train,
            test_size=n_test,
        )
    return out


#: name -> :class:`DatasetInfo` for every supported dataset.
DATASETS: dict[str, DatasetInfo] = _build()
DATASET_NAMES: tuple[str, ...] = tuple(DATASETS)


def _canonical(name: str) -> str:
    key = str(name).strip().lower().replace("_", "-")
    aliases = {"fashionmnist": "fashion-mnist", "fmnist": "fashion-mnist", "emnist": "emnist-balanced"}
    return aliases.get(key, key)


def dataset_info(name: str) -> DatasetInfo:
    """Metadata of dataset ``name``; raise :class:`BrainsparseError` listing the allowed names."""
    key = _canonical(name)
    if key not in DATASETS:
        raise BrainsparseError(f"unknown dataset {name!r}; allowed: {', '.join(DATASET_NAMES)}")
    return DATASETS[key]


def num_classes(name: str) -> int:
    """Number of classes of dataset ``name`` (e.g. 10 for mnist, 47 for emnist-balanced)."""
    return dataset_info(name).num_classes


#: the most data one IDX file of the MNIST family may declare (EMNIST ByClass, the largest, holds 547 MB)
MAX_IDX_BYTES = 1 << 30


def load_idx_pair(images_path: str | os.PathLike, labels_path: str | os.PathLike,
                  info: DatasetInfo | str) -> tuple[np.ndarray, np.ndarray]:
    """Read and validate one images/labels pair; returns (uint8 images N x 28 x 28 upright, int64 labels)."""
    if isinstance(info, str):
        info = dataset_info(info)
    images_path, labels_path = Path(images_path), Path(labels_path)
    h, w = info.image_shape
    images = read_idx(images_path, expect=(None, h, w), max_bytes=MAX_IDX_BYTES)
    labels = read_idx(labels_path, max_bytes=MAX_IDX_BYTES)
    if images.ndim != 3 or images.shape[1:] != (h, w):
        raise DataNotFoundError(
            f"{images_path}: expected {info.name} images of shape (N, {h}, {w}) but the file holds shape "
            f"{tuple(images.shape)}; check that this is the images file, else re-download it")
    if images.dtype != np.uint8:
        raise DataNotFoundError(
            f"{images_path}: expected uint8 pixels but the file holds {images.dtype}; "
            "check that this is the images file, else re-download it")
    if labels.ndim != 1:
        raise DataNotFoundError(
            f"{labels_path}: expected 1-D labels but the file holds shape {tuple(labels.shape)}; "
            "check that this is the labels file, else re-download it")
    if labels.dtype.kind not in "iu":
        raise DataNotFoundError(
            f"{labels_path}: expected integer labels but the file holds {labels.dtype}; "
            "check that this is the labels file, else re-download it")
    if labels.shape[0] != images.shape[0]:
        raise DataNotFoundError(
            f"{images_path} holds {images.shape[0]} images but {labels_path} holds {labels.shape[0]} labels; "
            "the two files must come from the same dataset and split, re-download them")
    y = labels.astype(np.int64) + info.label_offset
    if y.size and (y.min() < 0 or y.max() >= info.num_classes):
        lo, hi = int(labels.min()), int(labels.max())
        raise DataNotFoundError(
            f"{labels_path}: labels range over {lo}..{hi} but {info.name} has {info.num_classes} classes "
            f"(stored labels {-info.label_offset}..{info.num_classes - 1 - info.label_offset}); "
            "check that the file belongs to this dataset, else re-download it")
    if info.transpose:
        images = np.ascontiguousarray(images.transpose(0, 2, 1))
    return images, y


def _to_tensors(images: np.ndarray, labels: np.ndarray, info: DatasetInfo,
                normalize: bool, as_pixels: bool) -> tuple[torch.Tensor | PixelImages, torch.Tensor]:
    n = images.shape[0]
    # (p / 255 - mean) / std as p · scale − shift
    scale, shift = (1.0 / (255.0 * info.std), info.mean / info.std) if normalize else (1.0 / 255.0, 0.0)
    pixels = PixelImages(torch.from_numpy(images.reshape(n, -1)), scale, shift)
    return (pixels if as_pixels else pixels.float()), torch.from_numpy(labels)


def load_mnist_family(
    name: str,
    data_dir: str | os.PathLike | None = None,
    download: bool = True,
    *,
    normalize: bool = True,
    as_pixels: bool = False,
) -> tuple[torch.Tensor | PixelImages, torch.Tensor, torch.Tensor | PixelImages, torch.Tensor]:
    """Load ``name`` ("mnist", "fashion-mnist", "emnist-balanced", "emnist-<split>").

    Returns ``(train_x, train_y, test_x, test_y)``: ``x`` float32 (N, 784), scaled to [0, 1] and
    then normalised with the dataset's mean/std (``normalize=False`` keeps [0, 1]); ``y`` int64
    class indices in ``[0, num_classes)``. EMNIST images are turned upright. ``as_pixels=True``
    returns the images as :class:`~brainsparse.data.images.PixelImages` (uint8 in memory, the
    same float32 values per batch).

    The files are found by :func:`brainsparse.data.find_dataset` (``data_dir``, then
    ``$BRAINSPARSE_DATA``, system locations and the user cache); if absent and ``download`` is
    true, the official files are downloaded into the cache where an official address exists.
    """
    info = dataset_info(name)
    folder = find_dataset(info.name, data_dir, download=download)
    paths = dataset_files(info.name, folder)
    train_images, train_labels = load_idx_pair(paths["train_images"], paths["train_labels"], info)
    test_images, test_labels = load_idx_pair(paths["test_images"], paths["test_labels"], info)
    train_x, train_y = _to_tensors(train_images, train_labels, info, normalize, as_pixels)
    test_x, test_y = _to_tensors(test_images, test_labels, info, normalize, as_pixels)
    return train_x, train_y, test_x, test_y
