"""DeS4 training: config, teacher/student, the step, and the Accelerate loop."""

from .config import TrainConfig, parse_config
from .step import StepOutput, StepSettings, compute_step
from .teacher import TeacherStudent, ema_momentum, ema_update_
from .trainer import NonFiniteLossError, Trainer

__all__ = [
    "NonFiniteLossError",
    "StepOutput",
    "StepSettings",
    "TeacherStudent",
    "TrainConfig",
    "Trainer",
    "compute_step",
    "ema_momentum",
    "ema_update_",
    "parse_config",
]
