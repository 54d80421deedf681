"""The way out: finalize to plain nn.Linear, and compact safetensors files of the links."""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn

import brainsparse as bs
from brainsparse.errors import BrainsparseError
from brainsparse.kernels import SparseLinear
from brainsparse.models import MLP


def _trained(kernel: str, sizes=(20, 16, 16, 4), density=0.2, seed=0, steps=6):
    torch.manual_seed(seed)
    model = MLP(list(sizes))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    engine = bs.sparsify(model, opt, method="set", density=density, update_every=2, total_steps=100,
                         seed=seed, kernel=kernel)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randn(8, sizes[0], generator=gen)
        y = torch.randint(0, sizes[-1], (8,), generator=gen)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        engine.step()
    return model, engine


@pytest.mark.parametrize("kernel", ["dense", "sparse"])
def test_finalize_gives_plain_linear_layers_with_the_same_outputs(kernel):
    model, engine = _trained(kernel)
    x = torch.randn(5, 20)
    with torch.no_grad():
        expected = model(x)
    masks = {n: l.mask.clone() for n, l in engine.layers.items()}
    bs.finalize(model)
    linears = [m for m in model.modules() if isinstance(m, (nn.Linear, SparseLinear))]
    assert linears and all(type(m) is nn.Linear for m in linears)
    # no weight_mask buffers left: the state_dict loads strictly into a plain model
    assert not [k for k in model.state_dict() if "mask" in k]
    MLP([20, 16, 16, 4]).load_state_dict(model.state_dict())
    with torch.no_grad():  # the fused sparse path sums the dense head in link order, MKL in its own
        torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-6)
    for name, mask in masks.items():
        weight = model.get_submodule(name).weight
        assert torch.equal(weight != 0, mask & (weight != 0)) and not weight[~mask].any()
    # the engine's hooks are gone: a plain training step may now move any weight
    model.zero_grad()
    model(x).sum().backward()
    assert model.get_submodule(next(iter(masks))).weight.grad[~next(iter(masks.values()))].abs().sum() > 0


@pytest.mark.parametrize("kernel", ["dense", "sparse"])
def test_save_sparse_loads_into_plain_and_sparsified_models(tmp_path, kernel):
    model, _ = _trained(kernel)
    x = torch.randn(5, 20)
    with torch.no_grad():
        expected = model(x)
    path = bs.save_sparse(model, tmp_path / "model.safetensors")
    plain = MLP([20, 16, 16, 4])
    bs.load_sparse(plain, path)
    with torch.no_grad():
        torch.testing.assert_close(plain(x), expected, rtol=1e-5, atol=1e-6)
    for other_kernel in ("dense", "sparse"):
        torch.manual_seed(7)
        fresh = MLP([20, 16, 16, 4])
        engine = bs.sparsify(fresh, None, method="set", density=0.2, update_every=2, total_steps=100, seed=7,
                             kernel=other_kernel)
        bs.load_sparse(fresh, path)
        with torch.no_grad():
            assert torch.allclose(fresh(x), expected, atol=1e-6), other_kernel
        assert all(layer.links == layer.target for layer in engine.layers.values())


def test_save_sparse_at_one_percent_is_small(tmp_path):
    torch.manual_seed(0)
    model = MLP([784, 1568, 1568, 1568, 10])
    bs.sparsify(model, None, method="static", density=0.01, seed=0, kernel="sparse")
    path = bs.save_sparse(model, tmp_path / "m.safetensors")
    dense = io.BytesIO()
    torch.save(MLP([784, 1568, 1568, 1568, 10]).state_dict(), dense)
    ratio = path.stat().st_size / len(dense.getvalue())
    assert ratio < 0.03, ratio


def test_load_sparse_refuses_other_files_and_architectures(tmp_path):
    model, _ = _trained("sparse")
    path = bs.save_sparse(model, tmp_path / "m.safetensors")
    with pytest.raises(BrainsparseError, match="no counterpart"):
        bs.load_sparse(MLP([20, 8, 16, 4]), path)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 64)
    with pytest.raises(BrainsparseError, match="not a readable safetensors file"):
        bs.load_sparse(MLP([20, 16, 16, 4]), junk)
    with pytest.raises(BrainsparseError, match="does not exist"):
        bs.load_sparse(MLP([20, 16, 16, 4]), tmp_path / "missing.safetensors")


def test_finalized_hf_llama_saves_and_loads_without_brainsparse(tmp_path):
    transformers = pytest.importorskip("transformers")
    from brainsparse.train.language_model import sparsify_llama

    config = transformers.LlamaConfig(vocab_size=40, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=32)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config)
    sparsify_llama(model, None, method="static", density=0.3, seed=0, kernel="sparse")
    tokens = torch.randint(0, 40, (2, 7))
    with torch.no_grad():
        expected = model(tokens).logits
    bs.finalize(model)
    model.save_pretrained(tmp_path / "hf")
    loaded = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "hf")
    with torch.no_grad():
        assert torch.allclose(loaded(tokens).logits, expected, atol=1e-5)
