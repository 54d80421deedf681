"""Datasets: IDX files and the MNIST family (MNIST, Fashion-MNIST, EMNIST splits)."""

from .idx import IDX_TYPES, is_gzip, read_idx, write_idx
from .locate import (
    ENV_DATA,
    ENV_OFFLINE,
    SYSTEM_ROOTS,
    cache_dir,
    cache_root,
    dataset_files,
    download_dataset,
    find_dataset,
    search_locations,
)
from .mnist import (
    DATASET_NAMES,
    DATASETS,
    DatasetInfo,
    dataset_info,
    load_idx_pair,
    load_mnist_family,
    num_classes,
)

__all__ = [
    "IDX_TYPES",
    "is_gzip",
    "read_idx",
    "write_idx",
    "ENV_DATA",
    "ENV_OFFLINE",
    "SYSTEM_ROOTS",
    "cache_dir",
    "cache_root",
    "dataset_files",
    "download_dataset",
    "find_dataset",
    "search_locations",
    "DATASET_NAMES",
    "DATASETS",
    "DatasetInfo",
    "dataset_info",
    "load_idx_pair",
    "load_mnist_family",
    "num_classes",
]
