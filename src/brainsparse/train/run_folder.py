"""Run folders: checks before anything is written, the lock that keeps two processes out of one
folder, and :class:`RunFolder`, which stages an ``--overwrite`` run and swaps it in atomically."""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from ..errors import BrainsparseError

LOCK_NAME = ".lock"
STAGING = ".overwrite"  #: a replacement run being built (``--overwrite``), not yet committed
READY = ".overwrite.ready"  #: a committed replacement whose files are being moved into place
MANIFEST = ".files"  #: in READY: the names of the new run's files


def prepare_run_folder(out: Path, files: Sequence[str], resume: bool, overwrite: bool, check_lock: bool = True) -> None:
    """Check what ``out`` holds before anything is written; raise instead of clobbering a run.

    ``files`` are the names a run of this task writes (any of them marks the folder as a run).
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise BrainsparseError(f"--out '{out}' exists and is not a folder; allowed: a folder or a path that can be created")
    if not out.exists():
        check_creatable(out, "--out")
    if check_lock and out.is_dir():
        refuse_if_locked(out)
    has_run = out.exists() and any((out / f).exists() for f in files)
    if resume:
        if not (out / "checkpoint.pt").exists():
            raise BrainsparseError(f"cannot resume: no checkpoint.pt in run folder '{out}'")
    elif has_run and not overwrite:
        raise BrainsparseError(
            f"run folder '{out}' already holds a run; pass --resume to continue it or --overwrite to replace it"
        )


def clear_run_folder(out: Path, files: Sequence[str]) -> None:
    """Delete a previous run's files from ``out`` (for ``--overwrite``) and make sure it exists."""
    out = Path(out)
    if out.exists():
        for name in files:
            (out / name).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)


def check_creatable(path: Path, option: str) -> None:
    """Raise unless ``path`` (which does not exist) could be created as a folder: its nearest
    existing ancestor must be a writable folder."""
    parent = Path(path).absolute().parent
    while not parent.exists():
        if parent == parent.parent:
            break
        parent = parent.parent
    if not parent.is_dir():
        raise BrainsparseError(f"{option} '{path}' cannot be created: '{parent}' is not a folder; allowed: a creatable folder path")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise BrainsparseError(f"{option} '{path}' cannot be created: '{parent}' is not writable; allowed: a creatable folder path")


def _read_holder(path: Path) -> str:
    try:
        with open(path, "rb") as fh:
            text = fh.read(200).decode("utf-8", "replace").strip()
    except OSError:
        return "another process"
    pid = text.split()[0] if text else ""
    return f"process {pid}" if pid.isdigit() else "another process"


def lock_run_folder(folder: Path) -> int:
    """Take the exclusive OS lock (``flock``) of ``folder/.lock`` and write this process's pid
    into it; returns the open descriptor (see :func:`unlock_run_folder`). A folder locked by a
    live run raises :class:`BrainsparseError` naming the holder."""
    import fcntl

    path = Path(folder) / LOCK_NAME
    for _ in range(50):
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
        except OSError as exc:
            raise BrainsparseError(f"cannot lock run folder '{folder}': {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise BrainsparseError(
                    f"run folder '{folder}' is in use by {_read_holder(path)} (it holds {path}); "
                    "wait for that run to end or choose another --out"
                ) from None
            raise BrainsparseError(f"cannot lock run folder '{folder}': {exc.strerror}") from None
        try:  # the file may have been removed by the holder that just ended: lock the current one
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            return fd
        os.close(fd)
    raise BrainsparseError(f"cannot lock run folder '{folder}': its lock file keeps changing")


def refuse_if_locked(folder: Path) -> None:
    """Raise :class:`BrainsparseError` naming the holder when a live run holds ``folder``'s lock
    (a probe that creates and changes nothing)."""
    import fcntl

    path = Path(folder) / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return  # no lock file: nobody holds the folder
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise BrainsparseError(
                f"run folder '{folder}' is in use by {_read_holder(path)} (it holds {path}); "
                "wait for that run to end or choose another --out"
            ) from None
    finally:
        os.close(fd)  # closing releases a probe lock that was granted


def unlock_run_folder(folder: Path, fd: int) -> None:
    """Remove ``folder/.lock`` (while still holding it) and release the lock."""
    try:
        path = Path(folder) / LOCK_NAME
        if path.exists() and os.stat(path).st_ino == os.fstat(fd).st_ino:
            path.unlink()
    except OSError:
        pass
    finally:
        os.close(fd)


class RunFolder:
    """The folder a run writes into, locked for the run's lifetime (a context manager).

    ``path`` is where the run writes. A fresh or resumed run writes straight into ``out``. With
    ``overwrite`` over an existing run, the new run is built in ``out/.overwrite`` and the old
    run stays untouched until :meth:`started` (called after each checkpoint) swaps the new files
    in: the staging folder is renamed ``.overwrite.ready`` (the commit point), then the old run's
    files are replaced. A process killed before the commit leaves the old run (the staging
    folder is removed on the next open); one killed after it has the swap finished on the next
    open. Stale temporary files of a killed write are removed on open.
    """

    def __init__(self, out: Path, files: Sequence[str], resume: bool = False, overwrite: bool = False, lock: bool = True):
        self.final = Path(out)
        self.files = list(files)
        self.resume, self.overwrite, self.lock = resume, overwrite, lock
        self.path = self.final
        self._fd: int | None = None
        self._created = False

    def __enter__(self) -> "RunFolder":
        from .checkpoint import remove_stale_temporaries

        out = self.final
        if not self.lock:  # not the writing process (e.g. rank > 0 under torchrun)
            return self
        prepare_run_folder(out, self.files, resume=self.resume, overwrite=self.overwrite)
        self._created = not out.exists()
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise BrainsparseError(f"--out '{out}' cannot be created: {exc.strerror}; allowed: a creatable folder path") from None
        try:
            self._fd = lock_run_folder(out)
        except BaseException:
            self._remove_if_created()
            raise
        try:
            finish_interrupted_swap(out, self.files)
            remove_stale_temporaries(out)
            prepare_run_folder(out, self.files, resume=self.resume, overwrite=self.overwrite, check_lock=False)  # again, locked
            if not self.resume:
                if any((out / f).exists() for f in self.files):
                    self.path = out / STAGING
                    self.path.mkdir()
                else:
                    clear_run_folder(out, self.files)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def started(self) -> Path:
        """Called once a checkpoint is written: commit a staged ``--overwrite`` run (swap it in).
        Returns the folder to write into from now on."""
        if self.path != self.final:
            staging, ready = self.path, self.final / READY
            names = sorted(e.name for e in staging.iterdir())
            with open(staging / MANIFEST, "w", encoding="utf-8") as fh:  # what the new run holds
                fh.write("\n".join(names) + "\n")
                fh.flush()
                os.fsync(fh.fileno())
            os.rename(staging, ready)  # the commit point
            _move_into_place(self.final, self.files)
            self.path = self.final
        return self.path

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._fd is None:
            return
        try:
            if self.path != self.final:  # never started: drop the new run, keep the old one
                shutil.rmtree(self.path, ignore_errors=True)
                self.path = self.final
        finally:
            unlock_run_folder(self.final, self._fd)
            self._fd = None
            self._remove_if_created()

    def _remove_if_created(self) -> None:
        """A folder this run created and left empty (it failed before writing) is removed."""
        if self._created:
            try:
                self.final.rmdir()
            except OSError:
                pass


def _move_into_place(out: Path, files: Sequence[str]) -> None:
    """Replace the run files of ``out`` with those of ``out/.overwrite.ready`` (idempotent)."""
    ready = out / READY
    try:
        with open(ready / MANIFEST, "rb") as fh:
            new = set(fh.read(1 << 16).decode("utf-8", "replace").split("\n"))
    except OSError:  # no manifest (not written by this code): delete nothing of the old run
        new = set(files)
    for name in files:
        if name not in new:  # a file of the old run that the new one has not written (yet)
            (out / name).unlink(missing_ok=True)
    for entry in sorted(ready.iterdir()):
        if entry.name != MANIFEST:
            os.replace(entry, out / entry.name)
    (ready / MANIFEST).unlink(missing_ok=True)
    ready.rmdir()


def finish_interrupted_swap(out: Path, files: Sequence[str]) -> None:
    """Roll an ``--overwrite`` swap of a killed process back (uncommitted) or forward (committed)."""
    staging, ready = out / STAGING, out / READY
    if ready.is_dir() and not ready.is_symlink():
        _move_into_place(out, files)
    if staging.is_dir() and not staging.is_symlink():
        shutil.rmtree(staging, ignore_errors=True)
