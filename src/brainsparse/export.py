"""The way out of brainsparse: plain PyTorch modules, and a compact file of the links.

- :func:`finalize` turns a sparsified model back into plain ``nn.Linear`` layers that hold the
  sparse weights (zeros off the links) and no ``weight_mask`` buffers; the engine's hooks are
  removed, so the model trains,
  saves (``save_pretrained`` for Hugging Face models) and loads without brainsparse.
- :func:`save_sparse` writes a safetensors file whose size grows with the number of links:
  every sparse layer as CSR (row pointers, column indices, values), every other parameter and
  buffer as it is. :func:`load_sparse` loads it into a model of the same architecture — plain,
  or sparsified on either path — which then computes exactly what the saved one did.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import Tensor, nn

from .errors import BrainsparseError
from .kernels import SparseLinear
from .engine.storage import MASK_BUFFER
from .kernels.structure import LinkStructure

FORMAT = "brainsparse-sparse/1"
_CROW, _COL, _VALUES = ".sparse_crow", ".sparse_col", ".sparse_values"


def _engine_of(model: nn.Module):
    from .engine import engine_of

    return engine_of(model)


def _mask_buffer(module: nn.Module) -> Tensor | None:
    """The ``weight_mask`` buffer of a masked-path linear layer, if ``module`` is one."""
    mask = module._buffers.get(MASK_BUFFER) if isinstance(module, nn.Linear) else None
    return mask if torch.is_tensor(mask) else None


def _sparse_layers(model: nn.Module) -> dict[str, tuple[nn.Module, Tensor]]:
    """name → (module, bool mask) of every sparse linear layer, on either path: the masks are
    in the modules (a ``SparseLinear``'s links, an ``nn.Linear``'s ``weight_mask`` buffer)."""
    layers: dict[str, tuple[nn.Module, Tensor]] = {}
    for name, module in model.named_modules():
        if isinstance(module, SparseLinear):
            layers[name] = (module, module.mask)
        elif (mask := _mask_buffer(module)) is not None:
            layers[name] = (module, mask)
    return layers


def _belongs_to_sparse_layer(key: str, layers) -> bool:
    """A state-dict key of a sparse layer other than its bias."""
    owner, _, leaf = key.rpartition(".")
    return owner in layers and leaf != "bias"


def _structure(crow: Tensor, cols: Tensor, shape: tuple[int, int], where: str) -> LinkStructure:
    crow, cols = crow.long(), cols.long()
    if crow.dim() != 1 or crow.numel() != shape[0] + 1 or cols.dim() != 1:
        raise BrainsparseError(f"{where}: the link index does not fit a {shape[0]}x{shape[1]} layer")
    counts = crow.diff()
    if int(crow[0]) != 0 or int(crow[-1]) != cols.numel() or bool((counts < 0).any()):
        raise BrainsparseError(f"{where}: the row pointers are not a valid CSR index")
    rows = torch.repeat_interleave(torch.arange(shape[0]), counts)
    return LinkStructure.from_indices(rows, cols, shape)  # checks the column bounds


@torch.no_grad()
def finalize(model: nn.Module) -> nn.Module:
    """``model`` with every sparse layer as a plain ``nn.Linear`` holding its sparse weights,
    and the brainsparse engine (if any) detached. Works in place and returns ``model``."""
    engine = _engine_of(model)
    if engine is not None:
        engine.detach()
    for name, module in list(model.named_modules()):
        mask = _mask_buffer(module)
        if mask is not None:  # masked path: the weight already holds the links; drop the mask
            module.weight.mul_(mask)
            del module._buffers[MASK_BUFFER]
            continue
        if not isinstance(module, SparseLinear):
            continue
        linear = nn.Linear(module.in_features, module.out_features, bias=module.bias is not None,
                           device=module.values.device, dtype=module.values.dtype)
        linear.weight.copy_(module.dense_weight())
        if module.bias is not None:
            linear.bias.copy_(module.bias)
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, linear)
    return model


@torch.no_grad()
def save_sparse(model: nn.Module, path: str | Path) -> Path:
    """Write ``model`` to a safetensors file: sparse layers as CSR links, the rest dense."""
    from safetensors.torch import save_file

    path = Path(path)
    layers = _sparse_layers(model)
    tensors: dict[str, Tensor] = {}
    shapes: dict[str, list[int]] = {}
    for name, (module, mask) in layers.items():
        structure = module.structure if isinstance(module, SparseLinear) else LinkStructure.from_mask(mask.cpu())
        weight = module.dense_weight() if isinstance(module, SparseLinear) else module.weight.detach()
        structure = structure.to("cpu")
        tensors[name + _CROW] = structure.crow.to(torch.int32).contiguous()  # CSR: 4 bytes a link + 4 a row
        tensors[name + _COL] = structure.cols.to(torch.int32).contiguous()
        tensors[name + _VALUES] = structure.gather(weight.cpu()).contiguous()
        shapes[name] = [module.out_features, module.in_features]
    for key, value in model.state_dict().items():
        if _belongs_to_sparse_layer(key, layers) or not torch.is_tensor(value):
            continue  # a sparse layer's weight / values / link-structure buffers are in the CSR above
        tensors[key] = value.detach().cpu().contiguous()
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata={"format": FORMAT, "sparse_layers": json.dumps(shapes)})
    return path


@torch.no_grad()
def load_sparse(model: nn.Module, path: str | Path, strict: bool = True) -> nn.Module:
    """Load a :func:`save_sparse` file into ``model`` (same architecture; plain or sparsified).

    Plain ``nn.Linear`` layers get the dense weight with zeros off the links; ``SparseLinear``
    layers and layers masked by a brainsparse engine take the saved links as their structure.
    """
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise BrainsparseError(f"sparse model file '{path}' does not exist")
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    except Exception as exc:  # safetensors raises its own error types for damaged files
        raise BrainsparseError(f"'{path}' is not a readable safetensors file: {exc}") from None
    if meta.get("format") != FORMAT:
        raise BrainsparseError(f"'{path}' is not a brainsparse sparse model file (format {meta.get('format')!r}; expected {FORMAT})")
    shapes = {k: tuple(v) for k, v in json.loads(meta.get("sparse_layers", "{}")).items()}
    engine = _engine_of(model)
    modules = dict(model.named_modules())
    dense_state: dict[str, Tensor] = {k: v for k, v in tensors.items() if not k.endswith((_CROW, _COL, _VALUES))}
    for name, shape in shapes.items():
        module = modules.get(name)
        if module is None or (module.out_features, module.in_features) != shape:
            raise BrainsparseError(f"layer {name!r} of '{path}' ({shape[0]}x{shape[1]}) has no counterpart in this model")
        try:
            crow, cols, values = (tensors[name + suffix] for suffix in (_CROW, _COL, _VALUES))
        except KeyError as exc:
            raise BrainsparseError(f"'{path}' lacks {exc.args[0]!r}") from None
        structure = _structure(crow, cols, shape, f"layer {name!r} of '{path}'")
        if values.shape != (structure.nnz,):
            raise BrainsparseError(f"layer {name!r} of '{path}': {values.numel()} values for {structure.nnz} links")
        device = next(module.parameters()).device
        if isinstance(module, SparseLinear):
            module.set_structure(structure, values=values)
        else:
            module.weight.copy_(structure.to_dense(values).to(device, module.weight.dtype))
            if _mask_buffer(module) is not None:  # a masked-path layer: its mask is the saved links
                module._buffers[MASK_BUFFER].copy_(structure.to_mask().to(device))
        if engine is not None and name in engine.layers:
            layer = engine.layers[name]
            layer.target = layer.links
            layer.ever_active |= layer.mask
    missing, unexpected = [], []
    own = model.state_dict()
    for key, value in dense_state.items():
        if key not in own:
            unexpected.append(key)
            continue
        own[key].copy_(value.to(own[key].device, own[key].dtype))
    if strict:
        missing = [k for k in own if k not in dense_state and not _belongs_to_sparse_layer(k, shapes)]
        if missing or unexpected:
            what = missing[:1] or unexpected[:1]
            raise BrainsparseError(
                f"'{path}' does not match this model: {len(missing)} missing and {len(unexpected)} unexpected "
                f"entries (first: {what[0]!r})"
            )
    if engine is not None:
        engine.apply_masks()
    return model


__all__ = ["finalize", "load_sparse", "save_sparse"]
