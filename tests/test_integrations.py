"""The framework callbacks, with the real frameworks: a LLaMA under ``transformers.Trainer`` and an
MLP under Lightning, each with gradient accumulation 2 and a resume from the framework's own
checkpoint that must end where the uninterrupted run ends."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
import torch
from torch import nn

from brainsparse.errors import BrainsparseError


def test_core_import_pulls_in_no_framework():
    code = ("import sys, brainsparse, brainsparse.integrations; "
            "bad = [m for m in ('transformers', 'lightning', 'pytorch_lightning') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


# ---------------------------------------------------------------------------- Hugging Face
transformers = pytest.importorskip("transformers")


def _llama(seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=16)
    return LlamaForCausalLM(config)


class _Tokens(torch.utils.data.Dataset):
    def __init__(self, n: int = 8, seq: int = 8):
        g = torch.Generator().manual_seed(1)
        self.ids = torch.randint(0, 32, (n, seq), generator=g)

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


class _GradProbe(transformers.TrainerCallback):
    """At every optimizer step before a topology update: the engine's dense gradient, masked,
    must be the accumulated gradient the optimizer applies (both micro-batches, not the last)."""

    def __init__(self, sparse):
        self.sparse = sparse
        self.checked = 0

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        engine = self.sparse.engine
        if not engine.is_update_step(engine.step_count + 1):
            return
        for layer in engine.layers.values():
            assert layer.dense_grad is not None
            torch.testing.assert_close(layer.dense_grad * layer.mask, layer.weight.grad, rtol=1e-5, atol=1e-7)
            assert layer.dense_grad[~layer.mask].abs().sum() > 0  # the dense gradient, off-mask too
        self.checked += 1


class _MicroBatches(transformers.TrainerCallback):
    def __init__(self):
        self.substeps = 0

    def on_substep_end(self, args, state, control, **kwargs):
        self.substeps += 1


def _hf_train(out, resume=None, probe=False):
    from transformers import Trainer, TrainingArguments

    from brainsparse.integrations.hf import SparseTrainingCallback

    sparse = SparseTrainingCallback(method="rigl", density=0.5, update_every=2, seed=3)
    callbacks = [sparse]
    if probe:
        callbacks += [_GradProbe(sparse), _MicroBatches()]
    args = TrainingArguments(
        output_dir=str(out), max_steps=8, per_device_train_batch_size=2, gradient_accumulation_steps=2,
        learning_rate=1e-2, max_grad_norm=0.0, save_strategy="steps", save_steps=4, report_to=[],
        logging_strategy="no", use_cpu=True, seed=0, disable_tqdm=True, dataloader_num_workers=0,
        train_sampling_strategy="sequential",
    )
    model = _llama(seed=0 if resume is None else 7)  # a resumed run's initial weights must not matter
    trainer = Trainer(model=model, args=args, train_dataset=_Tokens(), callbacks=callbacks)
    trainer.train(resume_from_checkpoint=resume)
    return model, sparse, callbacks


def test_hf_trainer_accumulation_and_resume(tmp_path):
    from brainsparse.integrations.hf import ENGINE_FILE

    model, sparse, (_, probe, micro) = _hf_train(tmp_path / "straight", probe=True)
    engine = sparse.engine
    assert engine.total_steps == 8 and engine.step_count == 8
    assert micro.substeps == 8  # one of two micro-batches of every step ends in on_substep_end
    assert probe.checked == 2  # updates after steps 2 and 4 (t_end = 0.75 · 8)
    assert len(engine.history) == 2 and all(r["layers"] for r in engine.history)
    names = sorted(engine.layers)
    assert names and all(n.split(".")[-1] in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
                         for n in names)
    assert engine.chains != [[n] for n in names]  # the LLaMA chains, for percolation
    for layer in engine.layers.values():
        assert layer.weight[~layer.mask].abs().sum() == 0
    assert (tmp_path / "straight" / "checkpoint-4" / ENGINE_FILE).is_file()

    # resume from step 4 in a new folder: a fresh model, Trainer and callback
    shutil.copytree(tmp_path / "straight" / "checkpoint-4", tmp_path / "resumed" / "checkpoint-4")
    model2, sparse2, _ = _hf_train(tmp_path / "resumed", resume=True)
    engine2 = sparse2.engine
    assert engine2.step_count == 8 and len(engine2.history) == 2
    for name, layer in engine.layers.items():
        assert torch.equal(layer.mask, engine2.layers[name].mask), name
    state, state2 = model.state_dict(), model2.state_dict()
    for key in state:
        torch.testing.assert_close(state2[key], state[key], rtol=1e-5, atol=1e-6, msg=key)
    assert engine.generator.get_state().equal(engine2.generator.get_state())


def test_hf_resume_without_engine_state_is_an_error(tmp_path):
    _hf_train(tmp_path / "run")
    (tmp_path / "run" / "checkpoint-4" / "brainsparse_engine.pt").unlink()
    shutil.rmtree(tmp_path / "run" / "checkpoint-8")
    with pytest.raises(BrainsparseError, match="brainsparse_engine.pt"):
        _hf_train(tmp_path / "run", resume=True)


def test_callbacks_refuse_the_sparse_kernel():
    from brainsparse.integrations.hf import SparseTrainingCallback

    with pytest.raises(BrainsparseError, match="kernel"):
        SparseTrainingCallback(method="set", density=0.1, update_every=1, kernel="sparse")
    with pytest.raises(BrainsparseError, match="total_steps"):
        SparseTrainingCallback(method="set", density=0.1, update_every=1, total_steps=10)


def test_a_model_sparsified_already_is_refused():
    from brainsparse import sparsify
    from brainsparse.integrations._common import build_engine

    model = _mlp()
    sparsify(model, method="static", density=0.5)
    with pytest.raises(BrainsparseError, match="already sparsified"):
        build_engine(model, None, {"method": "static", "density": 0.5}, total_steps=4)


# ---------------------------------------------------------------------------- Lightning
def _lightning():
    return pytest.importorskip("lightning.pytorch")


def _mlp(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 24), nn.ReLU(), nn.Linear(24, 24), nn.ReLU(), nn.Linear(24, 3))


def _data():
    g = torch.Generator().manual_seed(2)
    return torch.randn(16, 6, generator=g), torch.randint(0, 3, (16,), generator=g)


LR, BATCH, ACCUM, EPOCHS = 0.05, 4, 2, 4  # 4 batches an epoch, 2 optimizer steps an epoch, 8 steps


def _module(seed: int = 0):
    L = _lightning()

    class Classifier(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = _mlp(seed)

        def forward(self, x):
            return self.net(x)

        def training_step(self, batch, batch_idx):
            x, y = batch
            return nn.functional.cross_entropy(self(x), y)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=LR, momentum=0.9)

    return Classifier()


def _loader():
    x, y = _data()
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=BATCH, shuffle=False)


def _fit(root, ckpt_path=None, seed=0):
    L = _lightning()
    from lightning.pytorch.callbacks import ModelCheckpoint

    from brainsparse.integrations.lightning import SparseTrainingCallback

    sparse = SparseTrainingCallback(method="rigl", density=0.3, update_every=1, seed=5)
    saver = ModelCheckpoint(dirpath=str(root), save_top_k=-1, every_n_epochs=1, save_on_train_epoch_end=True)
    trainer = L.Trainer(max_epochs=EPOCHS, accumulate_grad_batches=ACCUM, callbacks=[sparse, saver],
                        accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0)
    module = _module(seed)
    trainer.fit(module, _loader(), ckpt_path=None if ckpt_path is None else str(ckpt_path))
    return module, sparse


def _by_hand():
    """The same run as a hand-written loop: loss / 2 per micro-batch, one optimizer and engine step per 2."""
    from brainsparse import sparsify

    model = _mlp(0)
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9)
    engine = sparsify(model, opt, method="rigl", density=0.3, update_every=1, total_steps=EPOCHS * 2, seed=5)
    x, y = _data()
    for _ in range(EPOCHS):
        for start in range(0, 16, BATCH * ACCUM):
            for micro in range(ACCUM):
                s = slice(start + micro * BATCH, start + (micro + 1) * BATCH)
                (nn.functional.cross_entropy(model(x[s]), y[s]) / ACCUM).backward()
            opt.step()
            engine.step()
            opt.zero_grad()
    return model, engine


def test_lightning_accumulation_matches_a_hand_written_loop(tmp_path):
    module, sparse = _fit(tmp_path / "ckpt")
    model, engine = _by_hand()
    assert sparse.engine.total_steps == 8 and sparse.engine.step_count == 8
    assert len(sparse.engine.history) == len(engine.history) == 5  # updates after steps 1..5 (t_end = 6)
    for name, layer in engine.layers.items():
        assert torch.equal(sparse.engine.layers[f"net.{name}"].mask, layer.mask), name
    for key, value in model.state_dict().items():
        torch.testing.assert_close(module.net.state_dict()[key], value, rtol=1e-5, atol=1e-6, msg=key)


def test_lightning_resume_from_its_checkpoint(tmp_path):
    module, sparse = _fit(tmp_path / "ckpt")
    halfway = sorted((tmp_path / "ckpt").glob("epoch=1-step=4*.ckpt"))
    assert len(halfway) == 1
    checkpoint = torch.load(halfway[0], map_location="cpu", weights_only=True)
    assert any("engine" in v for v in checkpoint["callbacks"].values())
    resumed, sparse2 = _fit(tmp_path / "ckpt2", ckpt_path=halfway[0], seed=9)
    assert sparse2.engine.step_count == 8 and len(sparse2.engine.history) == 5
    for name, layer in sparse.engine.layers.items():
        assert torch.equal(sparse2.engine.layers[name].mask, layer.mask), name
    for key, value in module.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[key], value, rtol=1e-5, atol=1e-6, msg=key)


def test_lightning_resume_without_engine_state_is_an_error(tmp_path):
    L = _lightning()
    from lightning.pytorch.callbacks import ModelCheckpoint

    from brainsparse.integrations.lightning import SparseTrainingCallback

    saver = ModelCheckpoint(dirpath=str(tmp_path), save_top_k=-1, every_n_epochs=1)
    options = dict(max_epochs=1, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                   enable_model_summary=False, num_sanity_val_steps=0)
    L.Trainer(callbacks=[saver], **options).fit(_module(), _loader())  # dense, no callback
    (ckpt,) = tmp_path.glob("*.ckpt")
    trainer = L.Trainer(callbacks=[SparseTrainingCallback(method="set", density=0.3, update_every=1)],
                        **dict(options, max_epochs=2))
    with pytest.raises(BrainsparseError, match="no SparseTrainingCallback state"):
        trainer.fit(_module(), _loader(), ckpt_path=str(ckpt))
