"""Teacher and student (SPEC §2): the EMA teacher encoder, the decoupled teacher decoder, shared prototypes.

:class:`TeacherStudent` holds every network of a run in one ``nn.Module`` so that Accelerate/DDP wraps
a single forward (:func:`des4_hf.training.step.compute_step`) and ``save_state`` captures all of it.
The EMA parts and the prototype banks are excluded from DDP's buffer broadcast: they change only
through :meth:`TeacherStudent.update_teacher` and ``PrototypeHead.update``, identically on every rank.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from ..modeling_des4 import Des4Decoder, Des4Encoder, Des4ForSemanticSegmentation, PrototypeHead


def ema_momentum(step: int, momentum: float, warmup_steps: int = 0) -> float:
    """U2PL-style ``τ = min(1 − 1/(s+1), τ1)`` (SPEC §2 [choice]): early teachers follow fast.

    ``s`` counts 0-based optimizer steps, restarting at the end of a supervised-only warm-up of
    ``warmup_steps``: τ = 0 at that step, so the teacher that starts making pseudo labels is a copy of the
    warmed-up student, as in U2PL. During the warm-up the teacher follows the same schedule from step 0
    (DeS4's teacher decoder and prototypes are trained on the teacher encoder's features all along).
    """
    s = step - warmup_steps if step >= warmup_steps else step
    return min(1.0 - 1.0 / (s + 1), momentum)


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


@torch.no_grad()
def ema_update_(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """Eq. 5 in place: ``θ_t ← τ·θ_t + (1−τ)·θ_s`` for parameters and floating buffers (BN statistics).

    Student parameters are identical on every rank (DDP averages gradients) but BN running statistics
    are per-rank, so floating buffers are averaged over ranks first: the teachers then stay identical.
    Integer buffers (``num_batches_tracked``) are copied.
    """
    for teacher_param, student_param in zip(teacher.parameters(), student.parameters(), strict=True):
        teacher_param.mul_(momentum).add_(student_param.detach(), alpha=1.0 - momentum)
    for teacher_buffer, student_buffer in zip(teacher.buffers(), student.buffers(), strict=True):
        if teacher_buffer.is_floating_point():
            source = student_buffer.detach()
            if _distributed():
                source = source.clone()
                dist.all_reduce(source, op=dist.ReduceOp.SUM)
                source /= dist.get_world_size()
            teacher_buffer.mul_(momentum).add_(source, alpha=1.0 - momentum)
        else:
            teacher_buffer.copy_(student_buffer)


class TeacherStudent(nn.Module):
    """Student (E^S, D^S), teacher (E^T, D^T) and the prototype bank(s) of one run.

    Args:
        student: the model being trained; its ``prototype_head`` is the shared bank P.
        with_teacher: False for the supervised baseline (no teacher at all).
        decoupled: True → D^T is trained by ``L_l^ub`` (DeS4); False → D^T is an EMA of D^S (mean teacher).
        shared_head: True → one bank for both; False → the teacher keeps its own copy (ablation S.H.).
        ema_teacher_bank: with a separate bank and no decoupling (mean teacher, SPEC §4), the teacher's bank is
            an EMA of the student's like the rest of the teacher (True), or is updated by MES on the EMA
            decoder's own features (False, the behaviour before SPEC §4 changed). Unused otherwise.
    """

    def __init__(
        self, student: Des4ForSemanticSegmentation, with_teacher: bool = True, decoupled: bool = True,
        shared_head: bool = True, ema_teacher_bank: bool = True,
    ) -> None:
        super().__init__()
        self.student = student
        self.with_teacher = with_teacher
        self.decoupled = decoupled and with_teacher
        self.shared_head = shared_head or not with_teacher
        # The mean teacher's bank follows the student's bank by EMA instead of sampling its own features.
        self.teacher_bank_follows_student = with_teacher and not self.decoupled and not self.shared_head \
            and ema_teacher_bank
        self.teacher_encoder: Des4Encoder | None = None
        self.teacher_decoder: Des4Decoder | None = None
        self.teacher_prototype_head: PrototypeHead | None = None
        if with_teacher:
            self.teacher_encoder = copy.deepcopy(student.encoder).requires_grad_(False)
            self.teacher_decoder = copy.deepcopy(student.decoder).requires_grad_(self.decoupled)
            if not self.shared_head:
                self.teacher_prototype_head = copy.deepcopy(student.prototype_head)

    # -- views -------------------------------------------------------------------------------------
    @property
    def config(self) -> Any:
        return self.student.config

    @property
    def teacher_head(self) -> PrototypeHead:
        return self.teacher_prototype_head if self.teacher_prototype_head is not None else self.student.prototype_head

    def train(self, mode: bool = True) -> TeacherStudent:
        super().train(mode)
        # E^T always runs on its EMA statistics; an EMA decoder too. A decoupled D^T trains like any decoder.
        if self.teacher_encoder is not None:
            self.teacher_encoder.eval()
        if self.teacher_decoder is not None and not self.decoupled:
            self.teacher_decoder.eval()
        return self

    def trainable_parameter_groups(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """(backbone parameters, decoder parameters): the poly schedule gives the second group 10× lr."""
        backbone = [p for p in self.student.encoder.parameters() if p.requires_grad]
        decoders = [p for p in self.student.decoder.parameters() if p.requires_grad]
        if self.decoupled and self.teacher_decoder is not None:
            decoders += [p for p in self.teacher_decoder.parameters() if p.requires_grad]
        return backbone, decoders

    def state_outside_ddp(self) -> list[str]:
        """Names DDP must neither broadcast nor average: the EMA teacher parts and the prototype banks."""
        names = [f"student.prototype_head.{name}" for name, _ in self.student.prototype_head.named_buffers()]
        if self.teacher_prototype_head is not None:
            names += [f"teacher_prototype_head.{name}" for name, _ in self.teacher_prototype_head.named_buffers()]
        ema_parts = [("teacher_encoder", self.teacher_encoder)]
        if not self.decoupled:
            ema_parts.append(("teacher_decoder", self.teacher_decoder))
        for prefix, module in ema_parts:
            if module is not None:
                names += [f"{prefix}.{name}" for name, _ in module.named_parameters()]
                names += [f"{prefix}.{name}" for name, _ in module.named_buffers()]
        return names

    def forward(self, labeled: dict[str, torch.Tensor], unlabeled: dict[str, torch.Tensor] | None = None,
                **kwargs: Any) -> Any:
        from .step import compute_step

        return compute_step(self, labeled, unlabeled, **kwargs)

    # -- updates after each optimizer step -------------------------------------------------------------
    @torch.no_grad()
    def update_teacher(self, step: int, momentum: float, warmup_steps: int = 0) -> float:
        """EMA E^T ← E^S (and, for the mean teacher, D^T ← D^S and its bank ← the student's); returns τ."""
        if self.teacher_encoder is None:
            return 0.0
        tau = ema_momentum(step, momentum, warmup_steps)
        ema_update_(self.teacher_encoder, self.student.encoder, tau)
        if not self.decoupled and self.teacher_decoder is not None:
            ema_update_(self.teacher_decoder, self.student.decoder, tau)
        if self.teacher_bank_follows_student and self.teacher_prototype_head is not None:
            self.teacher_prototype_head.follow_(self.student.prototype_head, tau)
        return tau

    @torch.no_grad()
    def average_batchnorm_statistics(self) -> None:
        """Average BN running statistics of the trained networks over ranks after each step.

        DDP syncs parameters but each rank's BN statistics follow its own batches; the teacher decoder's
        statistics drive the pseudo labels and the exported teacher, so all ranks must agree on them.
        """
        if not _distributed():
            return
        modules = [self.student]
        if self.decoupled and self.teacher_decoder is not None:
            modules.append(self.teacher_decoder)
        for module in modules:
            for layer in module.modules():
                if isinstance(layer, nn.modules.batchnorm._BatchNorm) and layer.running_mean is not None:
                    for buffer in (layer.running_mean, layer.running_var):
                        dist.all_reduce(buffer, op=dist.ReduceOp.SUM)
                        buffer /= dist.get_world_size()

    @torch.no_grad()
    def broadcast_from_main(self) -> None:
        """Make every rank start from rank 0's teacher and prototypes (DDP only syncs what it wraps)."""
        if not _distributed():
            return
        for name in self.state_outside_ddp():
            dist.broadcast(self.get_parameter_or_buffer(name), src=0)

    def get_parameter_or_buffer(self, name: str) -> torch.Tensor:
        module_path, _, leaf = name.rpartition(".")
        module = self.get_submodule(module_path)
        return getattr(module, leaf)

    # -- export --------------------------------------------------------------------------------------
    @torch.no_grad()
    def export(self, which: str = "teacher") -> Des4ForSemanticSegmentation:
        """A standalone :class:`Des4ForSemanticSegmentation` holding the teacher (E^T, D^T, P) or the student."""
        model = copy.deepcopy(self.student)
        if which == "teacher" and self.teacher_encoder is not None and self.teacher_decoder is not None:
            model.encoder.load_state_dict(self.teacher_encoder.state_dict())
            model.decoder.load_state_dict(self.teacher_decoder.state_dict())
            model.prototype_head.load_state_dict(self.teacher_head.state_dict())
        elif which not in ("teacher", "student"):
            raise ValueError(f"which={which!r}: export 'teacher' or 'student'")
        model.float()
        model.to(memory_format=torch.contiguous_format)
        return model.eval()
