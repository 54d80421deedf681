"""Models trained by brainsparse."""

from .llama import LLAMA_PRESETS, LlamaConfig, LlamaLM, llama_config, llama_sparse_layout
from .mlp import MLP, PAPER_SIZES

__all__ = ["LLAMA_PRESETS", "LlamaConfig", "LlamaLM", "MLP", "PAPER_SIZES", "llama_config", "llama_sparse_layout"]
