"""Shared fixtures: an MNIST-layout dataset folder, real when available, generated otherwise.

Set ``BRAINSPARSE_TEST_DATA`` to a folder holding ``mnist/`` (the four IDX files) to test on
real data; ``scripts/test.sh`` does this when ``../shared/data`` is beside the checkout.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from brainsparse.data import write_idx

FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}


def make_fake_mnist(folder: Path, n_train: int = 2000, n_test: int = 500, seed: int = 0) -> Path:
    """A learnable 10-class MNIST look-alike: one random blob pattern per class plus noise."""
    rng = np.random.default_rng(seed)
    prototypes = (rng.random((10, 28, 28)) < 0.2).astype(np.float64) * 200
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("test", n_test)):
        labels = rng.integers(0, 10, n).astype(np.uint8)
        images = prototypes[labels] + rng.normal(0, 60, (n, 28, 28))
        images = np.clip(images, 0, 255).astype(np.uint8)
        write_idx(folder / FILES[f"{split}_images"], images)
        write_idx(folder / FILES[f"{split}_labels"], labels)
    return folder


@pytest.fixture(scope="session")
def real_mnist_dir() -> Path | None:
    root = os.environ.get("BRAINSPARSE_TEST_DATA")
    if root and (Path(root) / "mnist").is_dir():
        return Path(root) / "mnist"
    return None


@pytest.fixture(scope="session")
def mnist_dir(tmp_path_factory, real_mnist_dir) -> Path:
    """Real MNIST when BRAINSPARSE_TEST_DATA provides it, a generated look-alike otherwise."""
    if real_mnist_dir is not None:
        return real_mnist_dir
    return make_fake_mnist(tmp_path_factory.mktemp("fake-mnist"))


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    """Tests never download: point the cache and system search at nothing, forbid network."""
    monkeypatch.setenv("BRAINSPARSE_OFFLINE", "1")
