"""DeS4 training: config, teacher/student and the Eq. 4 step, and the Accelerate loop."""

from .config import METHOD_PRESETS, TrainConfig
from .teacher_student import StepOutput, TeacherStudent, ema_momentum, ema_update_
from .trainer import InitFromError, NonFiniteLossError, ResumeError, Trainer

__all__ = ["METHOD_PRESETS", "InitFromError", "NonFiniteLossError", "ResumeError", "StepOutput", "TeacherStudent",
           "TrainConfig", "Trainer", "ema_momentum", "ema_update_"]
