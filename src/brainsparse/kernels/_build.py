"""Building the C++ kernels of ``csrc/sparse_kernels.cpp`` into a cached shared object.

* The source (shipped as package data) has no PyTorch or Python headers, so it compiles in
  seconds with any C++ compiler (``$CXX``, ``c++``, ``g++`` or ``clang++``) and needs neither
  ninja nor Python headers (``torch.utils.cpp_extension.load_inline`` took ~36 s here for a
  one-line extension).
* It is built once per machine into ``$BRAINSPARSE_KERNEL_CACHE`` or
  ``~/.cache/brainsparse/kernels`` (``$XDG_CACHE_HOME`` respected). The file name holds a hash of
  the source text, compiler, flags and CPU features (a ``-march=native`` build only runs where
  they match), so checkouts with different sources never overwrite each other's build. It is
  written to a temporary name and renamed, so concurrent processes are safe.
* OpenMP is used when the compiler supports ``-fopenmp``. The shared object then depends on
  ``libgomp.so.1``; PyTorch's Linux wheels already loaded their own copy under that name, so the
  kernel shares PyTorch's OpenMP runtime (no second thread pool) and follows
  ``torch.set_num_threads``. Small passes stay on one thread (see :data:`PARALLEL_MIN`).
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

#: Bumped when the C ABI of the shared object changes (``bs_version()`` returns it).
SOURCE_VERSION = 6
#: Passes with less work than this (multiply-adds: links x samples, twice that for a backward
#: pass, plus the transposed elements) run on one thread; override with
#: $BRAINSPARSE_KERNEL_PARALLEL_MIN. The papers' MLP at batch 32 and 1 % density stays below it
#: (1568x1568: 0.9 M forward, 1.7 M backward): a pass takes 0.07-0.15 ms there, and on a machine
#: shared with other jobs every OpenMP barrier can wait a scheduler tick (~4 ms) for a
#: descheduled thread, which was measured here; bigger batches and densities use all threads.
PARALLEL_MIN = 1 << 21

#: The C++ source, shipped in the package.
SOURCE_PATH = Path(__file__).with_name("csrc") / "sparse_kernels.cpp"


def source() -> str:
    """The C++ source text."""
    return SOURCE_PATH.read_text(encoding="utf-8")


def defines() -> list[str]:
    """The ``-D`` flags that pass the Python-side constants to the source."""
    return [f"-DBS_SOURCE_VERSION={SOURCE_VERSION}", f"-DBS_PARALLEL_MIN={PARALLEL_MIN}"]


def cache_dir() -> Path:
    """Where compiled kernels are kept."""
    env = os.environ.get("BRAINSPARSE_KERNEL_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "brainsparse" / "kernels"


def cpu_signature() -> str:
    """Machine + CPU feature flags: a kernel built with -march=native only runs where they match."""
    flags = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    flags = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{platform.system()}-{platform.machine()}-{flags or platform.processor()}"


def compiler() -> str | None:
    """The C++ compiler to use, ``None`` when there is none."""
    for name in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def flag_sets() -> list[list[str]]:
    """Compiler flags to try, fastest first."""
    base = ["-O3", "-std=c++14", "-shared", "-fPIC", "-fno-math-errno"]
    return [
        base + ["-march=native", "-fopenmp"],
        base + ["-fopenmp"],
        base + ["-march=native", "-fopenmp-simd"],
        base,
    ]


def key(text: str, cxx: str, flags: list[str]) -> str:
    """The cache key of a build: source text, compiler, flags, defines and CPU features."""
    blob = "\n".join([text, cxx, " ".join(flags + defines()), cpu_signature()])
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def build(text: str, cxx: str, flags: list[str], target: Path) -> str | None:
    """Compile ``text`` into ``target``; returns why it failed, or ``None`` on success."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="bs-build-", dir=target.parent) as tmp:
            src = Path(tmp) / "sparse_kernels.cpp"
            src.write_text(text, encoding="utf-8")
            tmp_so = Path(tmp) / target.name
            proc = subprocess.run(
                [cxx, *flags, *defines(), str(src), "-o", str(tmp_so)],
                capture_output=True, text=True, timeout=300, check=False,
            )
            if proc.returncode != 0 or not tmp_so.exists():
                return (proc.stderr or proc.stdout or f"exit status {proc.returncode}").strip()[-500:]
            os.replace(tmp_so, target)  # atomic: concurrent builders all end with a complete file
    except (OSError, subprocess.SubprocessError) as exc:
        return repr(exc)
    log.debug("brainsparse: built %s with %s", target, " ".join(flags))
    return None
