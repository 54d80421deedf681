"""Tests of brainsparse.data: IDX files, dataset search, MNIST-family loading.

Real data is used only through $BRAINSPARSE_TEST_DATA (a folder holding mnist/) and the Debian
Fashion-MNIST package folder; everything else runs on small generated files. The network is
never touched: every test runs with a fake urlopen that fails loudly if called.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import os
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from brainsparse.data import (
    DATASET_NAMES,
    DATASETS,
    dataset_info,
    find_dataset,
    is_gzip,
    load_mnist_family,
    num_classes,
    read_idx,
    search_locations,
    write_idx,
)
from brainsparse.data import locate
from brainsparse.errors import BrainsparseError, DataNotFoundError

MNIST_NAMES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")
DEFAULT_SYSTEM_ROOTS = list(locate.SYSTEM_ROOTS)


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("tests must never download")

    monkeypatch.setattr(locate, "_urlopen", forbidden)


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """System roots and cache redirected to empty tmp folders; no BRAINSPARSE_* variables."""
    system = tmp_path / "system"
    cache = tmp_path / "xdg-cache"
    system.mkdir()
    monkeypatch.setattr(locate, "SYSTEM_ROOTS", [system])
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    monkeypatch.delenv("BRAINSPARSE_DATA", raising=False)
    monkeypatch.delenv("BRAINSPARSE_OFFLINE", raising=False)
    return {"system": system, "cache": cache / "brainsparse", "tmp": tmp_path}


def make_fake(folder: Path, n_train: int = 12, n_test: int = 5, *, names=MNIST_NAMES, gz: bool = True,
              classes: int = 10, label_start: int = 0, seed: int = 0):
    """Write four small IDX files into ``folder``; return the arrays written."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    tr_x = rng.integers(0, 256, size=(n_train, 28, 28), dtype=np.uint8)
    te_x = rng.integers(0, 256, size=(n_test, 28, 28), dtype=np.uint8)
    tr_y = rng.integers(label_start, label_start + classes, size=n_train).astype(np.uint8)
    te_y = rng.integers(label_start, label_start + classes, size=n_test).astype(np.uint8)
    suffix = ".gz" if gz else ""
    for name, arr in zip(names, (tr_x, tr_y, te_x, te_y)):
        write_idx(folder / (name + suffix), arr, gzip=gz)
    return tr_x, tr_y, te_x, te_y


def emnist_names(split: str):
    return tuple(f"emnist-{split}-{part}" for part in
                 ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "test-images-idx3-ubyte",
                  "test-labels-idx1-ubyte"))


def raw_idx(code: int, shape, payload: bytes) -> bytes:
    return bytes([0, 0, code, len(shape)]) + struct.pack(f">{len(shape)}I", *shape) + payload


# ----------------------------------------------------------------------------- IDX


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
@pytest.mark.parametrize("gz", [True, False])
def test_idx_round_trip(tmp_path, dtype, gz):
    rng = np.random.default_rng(1)
    arr = (rng.standard_normal((3, 4, 5)) * 100).astype(dtype)
    path = write_idx(tmp_path / "a.idx", arr, gzip=gz)
    assert is_gzip(path) == gz
    back = read_idx(path)
    assert back.dtype == np.dtype(dtype) and back.dtype.isnative
    assert back.shape == arr.shape
    np.testing.assert_array_equal(back, arr)
    back[0, 0, 0] = 1  # writable
    assert not list(tmp_path.glob(".*tmp"))  # no temporary file left behind


@settings(max_examples=30, deadline=None)
@given(
    shape=st.lists(st.integers(0, 4), min_size=1, max_size=4),
    dtype=st.sampled_from(["u1", "i1", "i2", "i4", "f4", "f8"]),
    gz=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_idx_round_trip_property(tmp_path_factory, shape, dtype, gz, seed):
    rng = np.random.default_rng(seed)
    arr = rng.integers(-100, 100, size=shape).astype(dtype)
    path = write_idx(tmp_path_factory.mktemp("p") / "x", arr, gzip=gz)
    back = read_idx(path)
    assert back.shape == tuple(shape) and back.dtype == arr.dtype
    np.testing.assert_array_equal(back, arr)


def test_idx_big_endian_on_disk(tmp_path):
    path = write_idx(tmp_path / "x", np.array([1, 258], dtype=np.int16), gzip=False)
    assert path.read_bytes() == bytes([0, 0, 0x0B, 1, 0, 0, 0, 2, 0, 1, 1, 2])


def test_idx_gzip_detected_by_magic_not_name(tmp_path):
    arr = np.arange(6, dtype=np.uint8).reshape(2, 3)
    gz_without_suffix = write_idx(tmp_path / "plain-name", arr, gzip=True)
    raw_with_suffix = write_idx(tmp_path / "looks-compressed.gz", arr, gzip=False)
    np.testing.assert_array_equal(read_idx(gz_without_suffix), arr)
    np.testing.assert_array_equal(read_idx(raw_with_suffix), arr)


def test_write_idx_accepts_tensor_and_rejects_bad_dtype(tmp_path):
    t = torch.arange(4, dtype=torch.int32)
    np.testing.assert_array_equal(read_idx(write_idx(tmp_path / "t", t)), t.numpy())
    with pytest.raises(BrainsparseError, match="int64.*allowed"):
        write_idx(tmp_path / "bad", np.arange(3, dtype=np.int64))
    with pytest.raises(BrainsparseError, match="dimensions"):
        write_idx(tmp_path / "bad", np.float32(1.0))


def _expect_clear(path: Path, match: str):
    with pytest.raises(DataNotFoundError) as info:
        read_idx(path)
    msg = str(info.value)
    assert str(path) in msg
    assert "re-download" in msg
    assert match in msg, msg
    return msg


def test_idx_bad_magic(tmp_path):
    p = tmp_path / "bad-magic"
    p.write_bytes(b"\x01\x02\x08\x01\x00\x00\x00\x01\x07")
    _expect_clear(p, "bad magic")
    p.write_bytes(raw_idx(0x0A, (1,), b"\x00"))
    _expect_clear(p, "unknown type code 0x0A")


@pytest.mark.parametrize("gz", [False, True])
def test_idx_truncated_header(tmp_path, gz):
    full = raw_idx(0x08, (2, 3, 4), bytes(24))
    for cut, what in [(2, "of the 4 magic bytes"), (9, "size bytes")]:
        p = tmp_path / f"hdr{cut}"
        data = full[:cut]
        p.write_bytes(gzip.compress(data) if gz else data)
        _expect_clear(p, "truncated header")
        _expect_clear(p, what)


@pytest.mark.parametrize("gz", [False, True])
def test_idx_truncated_data(tmp_path, gz):
    data = raw_idx(0x08, (2, 3, 4), bytes(20))  # 24 bytes needed
    p = tmp_path / "short"
    p.write_bytes(gzip.compress(data) if gz else data)
    msg = _expect_clear(p, "truncated data")
    assert "24" in msg and "20" in msg


def test_idx_gzip_header_claiming_huge_data_fails_fast(tmp_path):
    p = tmp_path / "huge"
    p.write_bytes(gzip.compress(raw_idx(0x0E, (60000, 60000, 1000), b"")))
    _expect_clear(p, "truncated data")


def test_idx_truncated_gzip_stream(tmp_path):
    arr = np.random.default_rng(0).integers(0, 256, size=(50, 28, 28), dtype=np.uint8)
    good = write_idx(tmp_path / "good.gz", arr)
    blob = good.read_bytes()
    p = tmp_path / "cut.gz"
    p.write_bytes(blob[: len(blob) // 2])
    _expect_clear(p, "gzip stream is truncated")
    p.write_bytes(blob[:-4])  # only the trailer's size field missing
    _expect_clear(p, "gzip")


def test_idx_corrupt_gzip_stream(tmp_path):
    arr = np.random.default_rng(0).integers(0, 256, size=(50, 28, 28), dtype=np.uint8)
    blob = bytearray(write_idx(tmp_path / "good.gz", arr).read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    p = tmp_path / "corrupt.gz"
    p.write_bytes(bytes(blob))
    _expect_clear(p, "gzip")


@pytest.mark.parametrize("gz", [False, True])
def test_idx_trailing_garbage(tmp_path, gz):
    data = raw_idx(0x08, (2, 2), bytes(4)) + b"junk"
    p = tmp_path / "trailing"
    p.write_bytes(gzip.compress(data) if gz else data)
    _expect_clear(p, "trailing garbage")


def test_idx_garbage_after_gzip_stream(tmp_path):
    p = tmp_path / "after.gz"
    p.write_bytes(gzip.compress(raw_idx(0x08, (2, 2), bytes(4))) + b"not gzip at all")
    _expect_clear(p, "gzip")


def test_idx_missing_file(tmp_path):
    with pytest.raises(DataNotFoundError, match="does not exist"):
        read_idx(tmp_path / "nope")


# ----------------------------------------------------------------------------- metadata


def test_dataset_metadata():
    assert set(DATASET_NAMES) >= {"mnist", "fashion-mnist", "emnist-balanced", "emnist-byclass", "emnist-bymerge",
                                  "emnist-digits", "emnist-letters", "emnist-mnist"}
    assert num_classes("mnist") == 10 and num_classes("fashion-mnist") == 10
    assert num_classes("emnist-balanced") == 47 and num_classes("emnist-byclass") == 62
    assert num_classes("emnist-letters") == 26 and num_classes("EMNIST_Digits") == 10
    for info in DATASETS.values():
        assert info.input_size == 784 and info["input_size"] == 784
        assert set(info.files) == {"train_images", "train_labels", "test_images", "test_labels"}
        assert info.how_to_get
    assert DATASETS["mnist"].url == "http://yann.lecun.com/exdb/mnist/"
    assert DATASETS["fashion-mnist"].url == "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
    assert all(DATASETS[n].url is None for n in DATASET_NAMES if n.startswith("emnist"))
    assert (DATASETS["fashion-mnist"].mean, DATASETS["fashion-mnist"].std) == (0.2860, 0.3530)
    assert (DATASETS["emnist-balanced"].mean, DATASETS["emnist-balanced"].std) == (0.1736, 0.3317)


def test_unknown_dataset_lists_allowed_names():
    with pytest.raises(BrainsparseError) as info:
        load_mnist_family("cifar10", download=False)
    msg = str(info.value)
    assert "cifar10" in msg
    for name in ("mnist", "fashion-mnist", "emnist-balanced", "emnist-letters"):
        assert name in msg
    with pytest.raises(BrainsparseError):
        num_classes("emnist-nope")


# ----------------------------------------------------------------------------- search


def test_search_order_data_dir_env_system_cache(isolated, monkeypatch):
    roots = {k: isolated["tmp"] / k for k in ("given", "env")}
    make_fake(roots["given"] / "mnist", n_train=3)
    make_fake(roots["env"], n_train=4)  # the folder itself
    make_fake(isolated["system"] / "mnist", n_train=5, gz=False)
    make_fake(isolated["cache"] / "mnist", n_train=6)
    monkeypatch.setenv("BRAINSPARSE_DATA", str(roots["env"]))

    def n_train(data_dir=None):
        return load_mnist_family("mnist", data_dir, download=False)[0].shape[0]

    assert find_dataset("mnist", roots["given"]) == roots["given"] / "mnist"
    assert n_train(roots["given"]) == 3  # data_dir beats the environment
    assert n_train() == 4  # environment beats system location
    monkeypatch.delenv("BRAINSPARSE_DATA")
    assert n_train() == 5  # system location beats cache
    assert n_train(isolated["tmp"] / "no-such-folder") == 5  # a useless data_dir falls through
    for f in (isolated["system"] / "mnist").iterdir():
        f.unlink()
    assert n_train() == 6
    assert find_dataset("mnist") == isolated["cache"] / "mnist"


def test_env_var_subfolder_and_several_entries(isolated, monkeypatch):
    a, b = isolated["tmp"] / "a", isolated["tmp"] / "b"
    a.mkdir()
    make_fake(b / "fashion-mnist", n_train=7)
    monkeypatch.setenv("BRAINSPARSE_DATA", os.pathsep.join([str(a), str(b)]))
    assert find_dataset("fashion-mnist") == b / "fashion-mnist"
    assert load_mnist_family("fashion_mnist", download=False)[0].shape == (7, 784)


def test_xdg_cache_home_respected(isolated):
    assert locate.cache_root() == isolated["cache"]
    assert ("user cache", isolated["cache"] / "mnist") in search_locations("mnist")


def test_file_name_variants(isolated):
    folder = isolated["tmp"] / "variants"
    dotted = tuple(n.replace("-idx", ".idx") for n in MNIST_NAMES)
    make_fake(folder, n_train=2, names=dotted, gz=False)
    assert find_dataset("mnist", folder) == folder
    assert load_mnist_family("mnist", folder, download=False)[1].shape == (2,)


def test_incomplete_folder_is_skipped_and_reported(isolated):
    folder = isolated["tmp"] / "partial"
    make_fake(folder)
    (folder / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataNotFoundError) as info:
        find_dataset("mnist", folder)
    assert f"{folder} (data_dir: missing t10k-labels-idx1-ubyte[.gz])" in str(info.value)


def test_folder_of_other_dataset_with_same_file_names_is_skipped(isolated, monkeypatch):
    folder = isolated["tmp"] / "mnist-files"
    make_fake(folder)
    digest = hashlib.sha256(gzip.decompress((folder / "t10k-labels-idx1-ubyte.gz").read_bytes())).hexdigest()
    monkeypatch.setitem(DATASETS, "mnist", dataclasses.replace(DATASETS["mnist"], test_labels_sha256=digest))
    assert find_dataset("mnist", folder) == folder
    with pytest.raises(DataNotFoundError, match="holds mnist, not fashion-mnist"):
        find_dataset("fashion-mnist", folder)


def test_missing_fashion_mnist_message(isolated):
    with pytest.raises(DataNotFoundError) as info:
        load_mnist_family("fashion-mnist", isolated["tmp"] / "empty", download=False)
    msg = str(info.value)
    assert "\n" not in msg
    assert "apt-get install dataset-fashion-mnist" in msg
    assert "--data-dir" in msg and "BRAINSPARSE_DATA" in msg
    assert "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/" in msg
    assert "train-images-idx3-ubyte" in msg and "t10k-labels-idx1-ubyte" in msg
    # every place searched is named
    assert str(isolated["tmp"] / "empty") in msg
    assert str(isolated["system"] / "fashion-mnist") in msg
    assert str(isolated["cache"] / "fashion-mnist") in msg
    assert "download=False" in msg


def test_missing_mnist_and_emnist_messages(isolated):
    with pytest.raises(DataNotFoundError) as info:
        find_dataset("mnist")
    assert "http://yann.lecun.com/exdb/mnist/" in str(info.value) and "--data-dir" in str(info.value)
    with pytest.raises(DataNotFoundError) as info:
        load_mnist_family("emnist-balanced", download=True)  # no download exists for EMNIST
    msg = str(info.value)
    assert "https://www.nist.gov/itl/products-and-services/emnist-dataset" in msg
    assert "emnist-balanced-train-images-idx3-ubyte.gz" in msg and "--data-dir" in msg


# ----------------------------------------------------------------------------- download (fake network)


class FakeResponse(io.BytesIO):
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _fake_server(files: dict[str, bytes], calls: list):
    def urlopen(url, timeout=None):
        calls.append((url, timeout))
        name = url.rsplit("/", 1)[-1]
        if name not in files:
            raise locate.urllib.error.URLError("no route to host")
        return FakeResponse(files[name])

    return urlopen


def _fake_mnist_blobs(tmp: Path) -> dict[str, bytes]:
    src = tmp / "src"
    make_fake(src, n_train=8, n_test=3)
    return {p.name: p.read_bytes() for p in src.iterdir()}


def test_download_into_cache(isolated, monkeypatch):
    blobs = _fake_mnist_blobs(isolated["tmp"])
    sums = {n: (hashlib.sha256(b).hexdigest(), None, len(b)) for n, b in blobs.items()}
    monkeypatch.setitem(DATASETS, "mnist", dataclasses.replace(DATASETS["mnist"], checksums=sums))
    calls = []
    monkeypatch.setattr(locate, "_urlopen", _fake_server(blobs, calls))
    train_x, train_y, test_x, test_y = load_mnist_family("mnist", download=True)
    assert train_x.shape == (8, 784) and test_y.shape == (3,)
    folder = isolated["cache"] / "mnist"
    assert sorted(p.name for p in folder.iterdir()) == sorted(blobs)  # no temporary files left
    assert all(url.startswith("http://yann.lecun.com/exdb/mnist/") for url, _ in calls)
    assert all(t is not None and t <= 60 for _, t in calls)
    calls.clear()
    load_mnist_family("mnist", download=True)
    assert calls == []  # found in the cache now


def test_download_checksum_mismatch_leaves_nothing(isolated, monkeypatch):
    blobs = _fake_mnist_blobs(isolated["tmp"])
    calls = []
    monkeypatch.setattr(locate, "_urlopen", _fake_server(blobs, calls))  # real sha256s will not match
    with pytest.raises(DataNotFoundError) as info:
        find_dataset("mnist", download=True)
    msg = str(info.value)
    assert "sha256" in msg or "size" in msg
    assert "--data-dir" in msg
    folder = isolated["cache"] / "mnist"
    assert not folder.exists() or list(folder.iterdir()) == []


def test_download_failure_and_offline(isolated, monkeypatch):
    calls = []
    monkeypatch.setattr(locate, "_urlopen", _fake_server({}, calls))
    with pytest.raises(DataNotFoundError, match="download failed.*no route to host.*apt-get install"):
        find_dataset("fashion-mnist", download=True)
    assert len(calls) == 1
    monkeypatch.setenv("BRAINSPARSE_OFFLINE", "1")
    with pytest.raises(DataNotFoundError, match="BRAINSPARSE_OFFLINE"):
        find_dataset("fashion-mnist", download=True)
    assert len(calls) == 1


# ----------------------------------------------------------------------------- loading


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_load_fake_shapes_dtypes_normalisation(isolated, name):
    folder = isolated["tmp"] / "d"
    tr_x, tr_y, te_x, te_y = make_fake(folder / name, n_train=12, n_test=5)
    train_x, train_y, test_x, test_y = load_mnist_family(name, folder, download=False)
    assert train_x.shape == (12, 784) and test_x.shape == (5, 784)
    assert train_x.dtype == torch.float32 and test_x.dtype == torch.float32
    assert train_y.dtype == torch.int64 and test_y.dtype == torch.int64
    info = dataset_info(name)
    expected = (tr_x.reshape(12, -1).astype(np.float64) / 255.0 - info.mean) / info.std
    np.testing.assert_allclose(train_x.numpy(), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(train_y.numpy(), tr_y)
    np.testing.assert_array_equal(test_y.numpy(), te_y)
    raw = load_mnist_family(name, folder, download=False, normalize=False)[2]
    np.testing.assert_allclose(raw.numpy(), te_x.reshape(5, -1) / 255.0, atol=1e-6)


def test_emnist_transpose_and_letters_offset(isolated):
    folder = isolated["tmp"] / "emnist"  # found as data_dir/emnist
    tr_x, tr_y, te_x, te_y = make_fake(folder, names=emnist_names("balanced"), classes=47)
    train_x, train_y, _, _ = load_mnist_family("emnist-balanced", isolated["tmp"], download=False, normalize=False)
    img = train_x[0].reshape(28, 28).numpy()
    np.testing.assert_allclose(img, tr_x[0].T / 255.0, atol=1e-6)
    assert not np.allclose(img, tr_x[0] / 255.0)
    np.testing.assert_array_equal(train_y.numpy(), tr_y)

    make_fake(folder / "gzip", names=emnist_names("letters"), classes=26, label_start=1)
    _, train_y, _, test_y = load_mnist_family("emnist-letters", isolated["tmp"], download=False)
    assert int(train_y.min()) >= 0 and int(train_y.max()) <= 25 and int(test_y.max()) <= 25


def test_emnist_upright_orientation(isolated):
    """A vertical bar stored the EMNIST way (transposed, i.e. horizontal) loads as vertical."""
    folder = isolated["tmp"] / "e"
    stored = np.zeros((2, 28, 28), dtype=np.uint8)
    stored[:, 14, 5:20] = 255  # horizontal in the file
    labels = np.array([1, 2], dtype=np.uint8)
    for name, arr in zip(emnist_names("digits"), (stored, labels, stored, labels)):
        write_idx(folder / (name + ".gz"), arr)
    x = load_mnist_family("emnist-digits", folder, download=False, normalize=False)[0]
    img = x[0].reshape(28, 28)
    assert torch.all(img[5:20, 14] == 1.0) and float(img.sum()) == 15.0


def test_validation_errors(isolated):
    folder = isolated["tmp"] / "v"
    make_fake(folder)
    write_idx(folder / "train-labels-idx1-ubyte.gz", np.zeros(11, dtype=np.uint8))
    with pytest.raises(DataNotFoundError, match="12 images but .* 11 labels"):
        load_mnist_family("mnist", folder, download=False)

    make_fake(folder)
    write_idx(folder / "t10k-images-idx3-ubyte.gz", np.zeros((5, 27, 28), dtype=np.uint8))
    with pytest.raises(DataNotFoundError, match=r"shape \(N, 28, 28\).*\(5, 27, 28\)"):
        load_mnist_family("mnist", folder, download=False)

    make_fake(folder)
    write_idx(folder / "t10k-labels-idx1-ubyte.gz", np.zeros((5, 1), dtype=np.uint8))
    with pytest.raises(DataNotFoundError, match="1-D labels"):
        load_mnist_family("mnist", folder, download=False)

    make_fake(folder)
    write_idx(folder / "t10k-labels-idx1-ubyte.gz", np.full(5, 12, dtype=np.uint8))
    with pytest.raises(DataNotFoundError, match="10 classes"):
        load_mnist_family("mnist", folder, download=False)


def test_corrupt_dataset_file_names_the_file(isolated):
    folder = isolated["tmp"] / "c"
    make_fake(folder)
    p = folder / "train-images-idx3-ubyte.gz"
    p.write_bytes(p.read_bytes()[:200])
    with pytest.raises(DataNotFoundError) as info:
        load_mnist_family("mnist", folder, download=False)
    assert str(p) in str(info.value) and "re-download" in str(info.value)


# ----------------------------------------------------------------------------- real data


def _check_real(splits, classes=10):
    train_x, train_y, test_x, test_y = splits
    assert train_x.shape == (60000, 784) and test_x.shape == (10000, 784)
    assert train_y.shape == (60000,) and test_y.shape == (10000,)
    assert torch.equal(torch.unique(train_y), torch.arange(classes))
    assert torch.equal(torch.unique(test_y), torch.arange(classes))
    assert abs(float(train_x.mean())) < 0.01
    assert abs(float(train_x.std()) - 1.0) < 0.01


@pytest.mark.skipif(not os.environ.get("BRAINSPARSE_TEST_DATA"), reason="set BRAINSPARSE_TEST_DATA to a folder holding mnist/")
def test_real_mnist(isolated):
    root = Path(os.environ["BRAINSPARSE_TEST_DATA"])
    assert find_dataset("mnist", root) == root / "mnist"
    _check_real(load_mnist_family("mnist", root, download=False))
    assert num_classes("mnist") == 10


@pytest.mark.skipif(not DEBIAN_FASHION.is_dir(), reason="Debian package dataset-fashion-mnist not installed")
def test_real_fashion_mnist_from_system_location(isolated, monkeypatch):
    monkeypatch.setattr(locate, "SYSTEM_ROOTS", DEFAULT_SYSTEM_ROOTS)  # the real system locations
    assert find_dataset("fashion-mnist", download=False) == DEBIAN_FASHION
    _check_real(load_mnist_family("fashion-mnist", download=False))


@pytest.mark.parametrize("normalize", [True, False])
def test_pixel_images_stay_uint8_and_equal_the_float_tensor(isolated, normalize):
    folder = isolated["tmp"] / "d"
    make_fake(folder / "mnist", n_train=40, n_test=6)
    floats = load_mnist_family("mnist", folder, download=False, normalize=normalize)
    pixels = load_mnist_family("mnist", folder, download=False, normalize=normalize, as_pixels=True)
    for f, p in ((floats[0], pixels[0]), (floats[2], pixels[2])):
        assert p.pixels.dtype == torch.uint8 and p.shape == f.shape and len(p) == f.shape[0]
        assert torch.equal(p.float(), f)  # bit for bit, whole set
        index = torch.tensor([5, 0, 3, 3])
        assert torch.equal(p[index], f[index]) and torch.equal(p[1:4], f[1:4]) and torch.equal(p[2], f[2])
    assert torch.equal(pixels[0].rows(slice(None, 7)).float(), floats[0][:7])
    assert pixels[1].dtype == torch.int64 and torch.equal(pixels[1], floats[1])
