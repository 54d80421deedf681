"""The experiment runner's optional dependencies, and a clear error when one is missing.

The library core (``import brainsparse``: engine, methods, topologies, scoring, kernels, models)
needs only torch, numpy and safetensors; the command-line runner (training loops, data, reports,
compare, bench) needs the ``runner`` extra: ``pip install 'brainsparse[runner]'``.
"""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

from .errors import BrainsparseError

#: import name → distribution name of the runner's dependencies
RUNNER_PACKAGES: dict[str, str] = {
    "tqdm": "tqdm",
    "matplotlib": "matplotlib",
    "scipy": "scipy",
    "networkx": "networkx",
    "sentencepiece": "sentencepiece",
    "sacrebleu": "sacrebleu",
}

INSTALL_HINT = "pip install 'brainsparse[runner]'"


def missing_runner_packages() -> list[str]:
    """The runner's dependencies that are not installed (distribution names)."""
    return [dist for name, dist in RUNNER_PACKAGES.items() if importlib.util.find_spec(name) is None]


def require(name: str, purpose: str) -> ModuleType:
    """Import the optional module ``name`` or raise a :class:`BrainsparseError` naming ``purpose``."""
    try:
        return importlib.import_module(name)
    except ImportError:
        top = name.split(".")[0]
        dist = RUNNER_PACKAGES.get(top, top)
        raise BrainsparseError(f"{purpose} needs the package {dist!r}, which is not installed: {INSTALL_HINT}") from None
