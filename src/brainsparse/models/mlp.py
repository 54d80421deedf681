"""Multi-layer perceptron used by the papers' MNIST-family experiments."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from ..errors import BrainsparseError
from ..kernels.chain import sequential_forward

PAPER_SIZES = (784, 1568, 1568, 1568, 10)


class MLP(nn.Module):
    """Fully connected network ``sizes[0] → … → sizes[-1]`` with ReLU between layers.

    The default is the papers' 784-1568-1568-1568-10. Layers live in ``self.layers`` (an
    ``nn.Sequential``), so the engine reads the chain of hidden layers from it.
    """

    def __init__(self, sizes: Sequence[int] = PAPER_SIZES, dropout: float = 0.0) -> None:
        super().__init__()
        sizes = [int(s) for s in sizes]
        if len(sizes) < 2 or any(s < 1 for s in sizes):
            raise BrainsparseError(f"MLP sizes {sizes} are invalid; allowed: at least two positive widths")
        modules: list[nn.Module] = []
        for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
            modules.append(nn.Linear(n_in, n_out))
            if i < len(sizes) - 2:
                modules.append(nn.ReLU())
                if dropout > 0:
                    modules.append(nn.Dropout(dropout))
        self.sizes = sizes
        self.layers = nn.Sequential(*modules)

    def forward(self, x: Tensor) -> Tensor:
        # runs of sparse layers + ReLU run as one fused autograd node on CPU (same results)
        return sequential_forward(self.layers, x.flatten(1))
