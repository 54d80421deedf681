"""Finding dataset files on disk, and downloading them into the user cache where allowed.

Search order of :func:`find_dataset` (the first folder holding all files of the dataset wins):

1. the explicit ``data_dir`` (the folder itself, ``data_dir/<name>``, or a known subfolder);
2. ``$BRAINSPARSE_DATA`` (same forms; several folders may be separated by ``os.pathsep``);
3. system locations: ``<root>/<system name>`` for each root in :data:`SYSTEM_ROOTS`
   (Debian installs e.g. ``/usr/share/datasets/fashion-mnist``);
4. the user cache ``$XDG_CACHE_HOME/brainsparse/<name>`` (default ``~/.cache/brainsparse/<name>``).

If nothing is found and ``download`` is true, the official files are downloaded into the cache
(only for datasets with an official address; never when ``$BRAINSPARSE_OFFLINE`` is set).
"""

from __future__ import annotations

import gzip
import hashlib
import os
import tempfile
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import DataNotFoundError

__all__ = [
    "ENV_DATA",
    "ENV_OFFLINE",
    "SYSTEM_ROOTS",
    "DOWNLOAD_TIMEOUT",
    "cache_root",
    "cache_dir",
    "file_candidates",
    "search_locations",
    "dataset_files",
    "find_dataset",
    "download_dataset",
    "register_dataset",
    "TextDatasetInfo",
]

#: environment variable naming folder(s) that hold datasets.
ENV_DATA = "BRAINSPARSE_DATA"
#: environment variable that, when set to a non-empty value other than "0", forbids downloads.
ENV_OFFLINE = "BRAINSPARSE_OFFLINE"
#: roots of system-wide dataset folders (patchable, e.g. by tests).
SYSTEM_ROOTS: list[Path] = [Path("/usr/share/datasets"), Path("/usr/local/share/datasets")]
#: seconds before a download attempt gives up waiting for the server.
DOWNLOAD_TIMEOUT = 30.0

# Indirection so tests can replace the network with a fake.
_urlopen = urllib.request.urlopen


#: datasets other than the MNIST family (text corpora), by name: objects with the attributes
#: ``name``, ``files`` (role → file name without ``.gz``), ``url`` (None: no download),
#: ``how_to_get``, ``system_names``, ``subdirs`` and ``checksums``.
_REGISTERED: dict[str, object] = {}


@dataclass(frozen=True)
class TextDatasetInfo:
    """Where a text corpus's files are and how to get them (for :func:`register_dataset`)."""

    name: str
    #: role (e.g. "train_src") → file name without ``.gz``; accepted with or without ``.gz``.
    files: Mapping[str, str]
    how_to_get: str
    url: str | None = None
    system_names: tuple[str, ...] = ()
    subdirs: tuple[str, ...] = ()
    checksums: Mapping[str, tuple[str | None, str | None, int | None]] = field(default_factory=dict)
    test_labels_sha256: str | None = None


def register_dataset(info) -> None:
    """Make :func:`find_dataset` know a dataset described by ``info`` (see :data:`_REGISTERED`)."""
    _REGISTERED[info.name] = info


def _info(name):
    if name in _REGISTERED:
        return _REGISTERED[name]
    from .mnist import dataset_info

    return dataset_info(name)


def _all_infos():
    from .mnist import DATASETS

    return DATASETS.values()


def cache_root() -> Path:
    """``$XDG_CACHE_HOME/brainsparse`` if that variable holds an absolute path, else ``~/.cache/brainsparse``."""
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".cache"
    return base / "brainsparse"


def cache_dir(name: str) -> Path:
    """Cache folder of one dataset: ``cache_root() / <name>``."""
    return cache_root() / _info(name).name


def file_candidates(base: str) -> list[str]:
    """Accepted spellings of one file: with or without ``.gz``, and ``.idx`` for ``-idx``."""
    names = [base, base + ".gz"]
    if "-idx" in base:
        alt = base.replace("-idx", ".idx", 1)
        names += [alt, alt + ".gz"]
    return names


def _match(folder: Path, info) -> tuple[dict[str, Path], list[str]]:
    found: dict[str, Path] = {}
    missing: list[str] = []
    for role, base in info.files.items():
        for cand in file_candidates(base):
            p = folder / cand
            if p.is_file():
                found[role] = p
                break
        else:
            missing.append(base)
    return found, missing


def dataset_files(name: str, folder: str | os.PathLike) -> dict[str, Path]:
    """Paths of the dataset's files in ``folder``, by role (``train_images`` ...); raise if any is missing."""
    info = _info(name)
    folder = Path(folder)
    found, missing = _match(folder, info)
    if missing:
        raise DataNotFoundError(
            f"{folder} lacks {', '.join(m + '[.gz]' for m in missing)} of dataset {info.name}; "
            f"to get it: {info.how_to_get}")
    return found


def _expand(root: Path, info) -> list[Path]:
    return [root, root / info.name] + [root / sub for sub in info.subdirs]


def _locations(info, data_dir) -> list[tuple[str, Path, Path]]:
    """(source, root, folder) triples in search order, without duplicate folders."""
    out: list[tuple[str, Path, Path]] = []
    if data_dir is not None and str(data_dir) != "":
        root = Path(data_dir).expanduser()
        out += [("data_dir", root, p) for p in _expand(root, info)]
    for entry in os.environ.get(ENV_DATA, "").split(os.pathsep):
        if entry.strip():
            root = Path(entry.strip()).expanduser()
            out += [(f"${ENV_DATA}", root, p) for p in _expand(root, info)]
    for root in SYSTEM_ROOTS:
        for sys_name in dict.fromkeys((*info.system_names, info.name)):
            out.append(("system location", Path(root), Path(root) / sys_name))
    croot = cache_root()
    out += [("user cache", croot / n, croot / n) for n in dict.fromkeys((info.name, *info.system_names))]
    seen: set[Path] = set()
    unique = []
    for source, root, p in out:
        if p not in seen:
            seen.add(p)
            unique.append((source, root, p))
    return unique


def search_locations(name: str, data_dir: str | os.PathLike | None = None) -> list[tuple[str, Path]]:
    """Folders :func:`find_dataset` looks in, in order, each with its source
    ("data_dir", "$BRAINSPARSE_DATA", "system location" or "user cache")."""
    return [(source, p) for source, _, p in _locations(_info(name), data_dir)]


def _uncompressed_sha256(path: Path) -> str | None:
    try:
        with open(path, "rb") as f:
            gz = f.read(2) == b"\x1f\x8b"
        opener = gzip.open if gz else open
        h = hashlib.sha256()
        with opener(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 16), b""):
                h.update(chunk)
        return h.hexdigest()
    except (OSError, EOFError, ValueError):
        return None


def _other_dataset(found: dict[str, Path], info) -> str | None:
    """Name of another dataset with identical file names whose fingerprint these files carry."""
    rivals = [o for o in _all_infos()
              if o.name != info.name and o.test_labels_sha256 and o.files.get("test_labels") == info.files.get("test_labels")]
    if not rivals or "test_labels" not in found:
        return None
    digest = _uncompressed_sha256(found["test_labels"])
    if digest is None or digest == info.test_labels_sha256:
        return None
    for o in rivals:
        if digest == o.test_labels_sha256:
            return o.name
    return None


def _offline() -> bool:
    v = os.environ.get(ENV_OFFLINE, "").strip().lower()
    return v not in ("", "0", "false", "no")


def find_dataset(name: str, data_dir: str | os.PathLike | None = None, *, download: bool = False) -> Path:
    """Folder holding all files of dataset ``name`` (see the module docstring for the search order).

    With ``download=True`` a dataset found nowhere is downloaded from its official address into
    the user cache (not for EMNIST, which has none). Raises :class:`DataNotFoundError` with the
    folders searched and instructions to get the data otherwise.
    """
    info = _info(name)
    notes: list[str] = []
    env_noted = False
    for source, root, folder in _locations(info, data_dir):
        if not env_noted and source not in ("data_dir", f"${ENV_DATA}"):
            env_noted = True
            if not os.environ.get(ENV_DATA, "").strip():
                notes.append(f"${ENV_DATA} (not set)")
        if folder.exists() and not folder.is_dir():
            notes.append(f"{folder} ({source}: not a folder)")
            continue
        if not folder.is_dir():
            # report the top-most missing folder (up to the search root) once, not every path below it
            top = folder
            while top != root and top.parent != top and not top.parent.exists():
                top = top.parent
            note = f"{top} ({source}: no such folder)"
            if note not in notes:
                notes.append(note)
            continue
        found, missing = _match(folder, info)
        if missing:
            what = "no dataset files" if not found else "missing " + ", ".join(m + "[.gz]" for m in missing)
            notes.append(f"{folder} ({source}: {what})")
            continue
        other = _other_dataset(found, info)
        if other is not None:
            notes.append(f"{folder} ({source}: holds {other}, not {info.name})")
            continue
        return folder

    download_note = ""
    if info.url is not None:
        if not download:
            download_note = " Automatic download is off (download=False)."
        elif _offline():
            download_note = f" Automatic download is off (${ENV_OFFLINE} is set)."
        else:
            try:
                return download_dataset(info.name)
            except DataNotFoundError as exc:
                download_note = f" Automatic download failed: {exc}."
    files = ", ".join(b + "[.gz]" for b in info.files.values())
    raise DataNotFoundError(
        f"dataset {info.name} not found: looked for {files} in: {'; '.join(notes)}.{download_note} "
        f"To get it: {info.how_to_get}.")


def _verify(path: Path, expected) -> str | None:
    """None if ``path`` matches ``expected`` = (sha256, md5, size) (Nones skip a check), else what differs."""
    if not expected:
        return None
    sha, md5, size = expected
    actual_size = path.stat().st_size
    if size is not None and actual_size != size:
        return f"size {actual_size} bytes, expected {size}"
    if sha is None and md5 is None:
        return None
    hs, hm = hashlib.sha256(), hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            hs.update(chunk)
            hm.update(chunk)
    if sha is not None and hs.hexdigest() != sha:
        return f"sha256 {hs.hexdigest()}, expected {sha}"
    if md5 is not None and hm.hexdigest() != md5:
        return f"md5 {hm.hexdigest()}, expected {md5}"
    return None


def _download_file(url: str, target: Path, expected, timeout: float) -> None:
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        try:
            with os.fdopen(fd, "wb") as out, _urlopen(url, timeout=timeout) as resp:
                for chunk in iter(lambda: resp.read(1 << 20), b""):
                    out.write(chunk)
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", None) or exc
            raise DataNotFoundError(f"could not download {url}: {reason}") from None
        problem = _verify(tmp, expected)
        if problem is not None:
            raise DataNotFoundError(
                f"downloaded {url} but it has {problem}; the server sent a different or damaged file")
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


def download_dataset(name: str, dest: str | os.PathLike | None = None, *,
                     timeout: float | None = None) -> Path:
    """Download the official ``.gz`` files of ``name`` into ``dest`` (default: its cache folder).

    Each file goes to a temporary name, is checked against the known sha256/md5/size and is then
    renamed into place, so an interrupted download never leaves a half file under the real name.
    Files already present and intact are kept. Returns the folder.
    """
    info = _info(name)
    if info.url is None:
        raise DataNotFoundError(f"dataset {info.name} has no official download address; to get it: {info.how_to_get}")
    folder = Path(dest).expanduser() if dest is not None else cache_dir(info.name)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataNotFoundError(f"cannot create {folder} for the download: {exc.strerror or exc}") from None
    timeout = DOWNLOAD_TIMEOUT if timeout is None else timeout
    for base in info.files.values():
        fname = base + ".gz"
        target = folder / fname
        expected = info.checksums.get(fname)
        if target.is_file() and _verify(target, expected) is None:
            continue
        _download_file(info.url + fname, target, expected, timeout)
    return folder
