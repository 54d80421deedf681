"""brainsparse: brain-inspired dynamic sparse training for PyTorch.

    import brainsparse as bs
    dst = bs.sparsify(model, optimizer, method="chts", density=0.01, update_every=len(loader),
                      total_steps=epochs * len(loader))
    ...  # after every optimizer.step(): dst.step()
"""

from . import methods, models, percolation, registry, schedules, scoring, selection, topology
from .engine import DynamicSparseEngine, sparsify
from .errors import BrainsparseError, DataNotFoundError
from .export import finalize, load_sparse, save_sparse
from .methods import MethodConfig, method_names, register_method, resolve_method
from .registry import ScoreInput, register_density_schedule, register_regrowth_score, register_removal_score
from .schedules import DensitySchedule

__version__ = "0.1.0"

__all__ = [
    "BrainsparseError",
    "DataNotFoundError",
    "DensitySchedule",
    "DynamicSparseEngine",
    "finalize",
    "load_sparse",
    "save_sparse",
    "MethodConfig",
    "ScoreInput",
    "method_names",
    "methods",
    "models",
    "percolation",
    "register_density_schedule",
    "register_method",
    "register_regrowth_score",
    "register_removal_score",
    "registry",
    "resolve_method",
    "schedules",
    "scoring",
    "selection",
    "sparsify",
    "topology",
]
