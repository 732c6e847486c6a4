"""DeS4 training: the typed config and the Accelerate loop (the method's step is :mod:`des4_hf.method`)."""

from .checkpointing import ResumeError
from .config import METHOD_PRESETS, TrainConfig
from .trainer import InitFromError, NonFiniteLossError, Trainer

__all__ = ["METHOD_PRESETS", "InitFromError", "NonFiniteLossError", "ResumeError", "TrainConfig", "Trainer"]
