"""brainsparse: brain-inspired dynamic sparse training for PyTorch.

    import brainsparse as bs
    dst = bs.sparsify(model, optimizer, method="chts", density=0.01, update_every=len(loader),
                      total_steps=epochs * len(loader))
    ...  # after every optimizer.step(): dst.step()
"""

from . import methods, models, percolation, schedules, scoring, selection, topology
from .engine import DynamicSparseEngine, sparsify
from .errors import BrainsparseError, DataNotFoundError
from .export import finalize, load_sparse, save_sparse
from .methods import MethodConfig, method_names, resolve_method

__version__ = "0.1.0"

__all__ = [
    "BrainsparseError",
    "DataNotFoundError",
    "DynamicSparseEngine",
    "finalize",
    "load_sparse",
    "save_sparse",
    "MethodConfig",
    "method_names",
    "methods",
    "models",
    "percolation",
    "resolve_method",
    "schedules",
    "scoring",
    "selection",
    "sparsify",
    "topology",
]
