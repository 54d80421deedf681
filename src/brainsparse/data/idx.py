"""Reader and writer for IDX files (the MNIST file format), gzipped or raw.

Layout of an IDX file: two zero bytes, one type-code byte, one byte with the number of
dimensions ``n``; then ``n`` big-endian unsigned 32-bit sizes; then the values, big-endian,
in C order. Gzip compression is detected from the magic bytes ``1f 8b``, not from the name.
"""

from __future__ import annotations

import gzip as _gzip
import os
import struct
import tempfile
import zlib
from pathlib import Path
from typing import BinaryIO

import numpy as np

from ..errors import BrainsparseError, DataNotFoundError

__all__ = ["IDX_TYPES", "read_idx", "write_idx", "is_gzip"]

#: IDX type code -> numpy dtype as stored (big-endian).
IDX_TYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

_TYPE_NAMES = {0x08: "uint8", 0x09: "int8", 0x0B: "int16", 0x0C: "int32", 0x0D: "float32", 0x0E: "float64"}
_CODE_FOR_KIND = {(dt.kind, dt.itemsize): code for code, dt in IDX_TYPES.items()}
_GZIP_MAGIC = b"\x1f\x8b"
# Deflate cannot compress better than about 1032:1; anything claiming more is truncated.
_MAX_GZIP_RATIO = 1100
_FIX = "the file is damaged or incomplete; delete it and re-download it"


def _fail(path: Path, what: str, fix: str = _FIX) -> DataNotFoundError:
    return DataNotFoundError(f"cannot read IDX file {path}: {what}; {fix}")


def is_gzip(path: str | os.PathLike) -> bool:
    """True if the file starts with the gzip magic bytes ``1f 8b``."""
    with open(path, "rb") as f:
        return f.read(2) == _GZIP_MAGIC


def _read_exact(f: BinaryIO, n: int) -> bytes:
    chunks = []
    remaining = n
    while remaining > 0:
        chunk = f.read(remaining)
        if not chunk:
            break
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def _readinto_exact(f: BinaryIO, buf: memoryview) -> int:
    total = 0
    n = len(buf)
    while total < n:
        got = f.readinto(buf[total:])
        if not got:
            break
        total += got
    return total


def read_idx(path: str | os.PathLike, expect: tuple[int | None, ...] | None = None,
             max_bytes: int | None = None) -> np.ndarray:
    """Read an IDX file (gzipped or raw) into a writable numpy array in native byte order.

    Raises :class:`DataNotFoundError` naming the file when it is missing, is not an IDX
    file, or is truncated / has trailing bytes / is a damaged gzip stream. ``expect`` (sizes,
    None for any size >= 1) and ``max_bytes`` are checked against the header before any data
    is read, so a file declaring another shape or too much data is refused up front.
    """
    path = Path(path)
    if not path.exists():
        raise DataNotFoundError(f"IDX file {path} does not exist; check the path or download the dataset again")
    if path.is_dir():
        raise DataNotFoundError(f"IDX file {path} is a folder, not a file; pass the path of the file itself")
    try:
        file_size = path.stat().st_size
        raw = open(path, "rb")
    except OSError as exc:
        raise DataNotFoundError(f"cannot open IDX file {path}: {exc.strerror or exc}; check its permissions") from None
    with raw:
        compressed = raw.read(2) == _GZIP_MAGIC
        raw.seek(0)
        stream: BinaryIO = _gzip.GzipFile(fileobj=raw, mode="rb") if compressed else raw
        try:
            return _parse(stream, path, compressed, file_size, expect, max_bytes)
        except (EOFError, zlib.error, _gzip.BadGzipFile) as exc:
            if isinstance(exc, EOFError):
                what = "the gzip stream is truncated (it ends before its end-of-stream marker)"
            else:
                what = f"the gzip stream is corrupt ({exc}), e.g. damaged data or trailing garbage"
            raise _fail(path, what) from None
        except DataNotFoundError:
            raise
        except OSError as exc:
            raise _fail(path, f"read error ({exc})") from None
        finally:
            if compressed:
                stream.close()


def _parse(f: BinaryIO, path: Path, compressed: bool, file_size: int,
           expect: tuple[int | None, ...] | None = None, max_bytes: int | None = None) -> np.ndarray:
    head = _read_exact(f, 4)
    if len(head) < 4:
        raise _fail(path, f"truncated header: {len(head)} of the 4 magic bytes present")
    if head[0] != 0 or head[1] != 0:
        kind = "a gzip file inside gzip" if head[:2] == _GZIP_MAGIC else "not an IDX file"
        raise _fail(
            path,
            f"bad magic {head.hex(' ')} ({kind}; an IDX file starts with 00 00 <type> <ndim>)",
            "check that this is the right file, else delete it and re-download it",
        )
    code, ndim = head[2], head[3]
    if code not in IDX_TYPES:
        known = ", ".join(f"0x{c:02X} {n}" for c, n in _TYPE_NAMES.items())
        raise _fail(path, f"bad magic: unknown type code 0x{code:02X} (known: {known})",
                    "check that this is the right file, else delete it and re-download it")
    if ndim == 0:
        raise _fail(path, "bad magic: the header declares 0 dimensions")
    dims_raw = _read_exact(f, 4 * ndim)
    if len(dims_raw) < 4 * ndim:
        raise _fail(path, f"truncated header: {ndim} dimensions declared but only {len(dims_raw)} of "
                          f"{4 * ndim} size bytes present")
    shape = struct.unpack(f">{ndim}I", dims_raw)
    dtype = IDX_TYPES[code]
    count = 1
    for d in shape:
        count *= d
    need = count * dtype.itemsize
    header_len = 4 + 4 * ndim
    shape_txt = "x".join(str(d) for d in shape)
    if expect is not None:
        fits = len(shape) == len(expect) and all(d >= 1 if e is None else d == e for d, e in zip(shape, expect))
        if not fits:
            want = ", ".join("N" if e is None else str(e) for e in expect) + ("," if len(expect) == 1 else "")
            raise _fail(path, f"expected shape ({want}) with N >= 1 but the header declares shape {tuple(shape)}",
                        "check that this is the right file, else delete it and re-download it")
    if max_bytes is not None and need > max_bytes:
        raise _fail(path, f"the header declares shape {shape_txt} of {_TYPE_NAMES[code]}, {need} bytes, over the "
                          f"{max_bytes}-byte limit of this dataset", "check that this is the right file")
    if not compressed:
        have = file_size - header_len
        if have < need:
            raise _fail(path, f"truncated data: shape {shape_txt} of {_TYPE_NAMES[code]} needs {need} bytes "
                              f"after the header but the file has {have}")
        if have > need:
            raise _fail(path, f"trailing garbage: {have - need} extra bytes after the {need} data bytes "
                              f"of shape {shape_txt}")
    elif need > file_size * _MAX_GZIP_RATIO + (1 << 20):
        raise _fail(path, f"truncated data: shape {shape_txt} of {_TYPE_NAMES[code]} needs {need} bytes, "
                          f"more than a {file_size}-byte gzip file can hold")
    try:
        out = np.empty(shape, dtype=dtype)
    except (MemoryError, ValueError):
        raise _fail(path, f"the header declares shape {shape_txt}, too large to hold in memory") from None
    got = _readinto_exact(f, memoryview(out.reshape(-1).view(np.uint8)))
    if got < need:
        raise _fail(path, f"truncated data: shape {shape_txt} of {_TYPE_NAMES[code]} needs {need} bytes "
                          f"after the header but only {got} are present")
    extra = f.read(1)
    if extra:
        rest = 1 + len(f.read())
        raise _fail(path, f"trailing garbage: {rest} extra bytes after the {need} data bytes of shape {shape_txt}")
    if dtype.itemsize > 1:
        out = out.astype(dtype.newbyteorder("="))
    else:
        out = out.view(dtype.newbyteorder("="))
    return out


def write_idx(path: str | os.PathLike, array, gzip: bool = True) -> Path:
    """Write ``array`` (numpy array or CPU tensor) as an IDX file; gzipped if ``gzip``.

    Supported dtypes: uint8, int8, int16, int32, float32, float64 (at least 1 dimension).
    The file is written to a temporary name and renamed, so readers never see half a file.
    Returns the path written.
    """
    path = Path(path)
    if hasattr(array, "detach") and hasattr(array, "cpu"):  # torch tensor
        array = array.detach().cpu().numpy()
    arr = np.asarray(array)
    if arr.ndim == 0 or arr.ndim > 255:
        raise BrainsparseError(f"write_idx({path}): array has {arr.ndim} dimensions; allowed: 1 to 255")
    code = _CODE_FOR_KIND.get((arr.dtype.kind, arr.dtype.itemsize)) if arr.dtype.kind in "uif" else None
    if code is None:
        allowed = ", ".join(_TYPE_NAMES.values())
        raise BrainsparseError(f"write_idx({path}): dtype {arr.dtype} is not storable in IDX; allowed: {allowed} "
                               f"(convert with array.astype(...))")
    if any(d > 0xFFFFFFFF for d in arr.shape):
        raise BrainsparseError(f"write_idx({path}): a dimension of shape {arr.shape} exceeds 2**32 - 1")
    header = bytes([0, 0, code, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    data = np.ascontiguousarray(arr, dtype=IDX_TYPES[code]).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            if gzip:
                with _gzip.GzipFile(filename="", fileobj=f, mode="wb", mtime=0) as gz:
                    gz.write(header)
                    gz.write(data)
            else:
                f.write(header)
                f.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return path
