"""The mean teacher's schedules: Eq. 5 (the EMA of the student), its τ warm-up and the λ2 ramp-up."""

from __future__ import annotations

import math

import torch
from torch import nn


def ema_momentum(step: int, momentum: float, warmup_steps: int = 0) -> float:
    """U2PL-style ``τ = min(1 − 1/(s+1), τ1)`` (SPEC §2 [choice]): early teachers follow fast. ``s`` restarts at
    the end of a supervised-only warm-up, so the first teacher to make pseudo labels is a copy of the student."""
    s = step - warmup_steps if step >= warmup_steps else step
    return min(1.0 - 1.0 / (s + 1), momentum)


@torch.no_grad()
def ema_update_(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """Eq. 5 in place: ``θ_t ← τ·θ_t + (1−τ)·θ_s`` for parameters and float buffers (BN statistics, averaged
    over processes first); integer buffers are copied."""
    for teacher_param, student_param in zip(teacher.parameters(), student.parameters(), strict=True):
        teacher_param.mul_(momentum).add_(student_param.detach(), alpha=1.0 - momentum)
    for teacher_buffer, student_buffer in zip(teacher.buffers(), student.buffers(), strict=True):
        if teacher_buffer.is_floating_point():
            teacher_buffer.mul_(momentum).add_(student_buffer.detach(), alpha=1.0 - momentum)
        else:
            teacher_buffer.copy_(student_buffer)


def rampup_weight(step: int, max_steps: int, rampup: float) -> float:
    """Mean Teacher's ramp-up factor for λ2: ``exp(−5(1−t)²)`` with t = step / (rampup·max_steps), then 1."""
    length = rampup * max_steps
    return 1.0 if length <= 0 or step >= length else math.exp(-5.0 * (1.0 - max(0.0, step / length)) ** 2)
