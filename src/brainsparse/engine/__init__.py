"""The engine: owns the evolution of a model's sparse layers (design.md).

- :mod:`.api`: :func:`sparsify`;
- :mod:`.core`: :class:`DynamicSparseEngine` (hooks, masking, schedule, checkpoints), :func:`engine_of`;
- :mod:`.update`: one topology update, composed from the method's resolved components;
- :mod:`.components`: the method's components, looked up in :mod:`brainsparse.registry` once;
- :mod:`.storage`: the two ways a layer stores its links (masked-dense with a ``weight_mask``
  buffer, or a :class:`~brainsparse.kernels.SparseLinear`), behind one interface;
- :mod:`.layer`: :class:`SparseLayer`, a layer's storage plus the engine's bookkeeping;
- :mod:`.state`: the report and the engine's checkpoint state.
"""

from .api import sparsify
from .core import MAX_EXACT_PATHS, SWITCH_BACK_FACTOR, DynamicSparseEngine, engine_of
from .layer import SparseLayer
from .storage import MASK_BUFFER, LinkStorage, MaskedStorage

__all__ = [
    "MASK_BUFFER", "MAX_EXACT_PATHS", "SWITCH_BACK_FACTOR", "DynamicSparseEngine", "LinkStorage", "MaskedStorage",
    "SparseLayer", "engine_of", "sparsify",
]
