"""The Reactive Transformer in plain PyTorch: config, layers, memory, generation, checkpoints."""

from reactor_rt.model.config import RxTConfig
from reactor_rt.model.generation import DecodeBatch, StepOutput
from reactor_rt.model.memory import MemoryKV
from reactor_rt.model.rxt import ReactiveTransformer
from reactor_rt.model.sampler import Sampler

__all__ = ["DecodeBatch", "MemoryKV", "ReactiveTransformer", "RxTConfig", "Sampler", "StepOutput"]
