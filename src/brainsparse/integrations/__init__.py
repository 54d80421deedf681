"""Callbacks that run dynamic sparse training inside other training frameworks.

- :class:`brainsparse.integrations.hf.SparseTrainingCallback` for ``transformers.Trainer``;
- :class:`brainsparse.integrations.lightning.SparseTrainingCallback` for Lightning.

Both sparsify the model and hook its optimizer when training begins, step the engine once per
optimizer step (so gradient-based scores sum the dense gradient over every micro-batch of an
accumulation window), and carry the engine's state (random generator, counters) and the masks in the
framework's own checkpoints, so that a resumed run continues the topology exactly.

This package imports neither framework: import the submodule you need.
"""

__all__ = ["hf", "lightning"]
