"""What a method computes (paper Table 3): the method name and the Table 3 / 4 switches resolved once into the flags
that apply, and the one list of each choice. A supervised run has no teacher, so none of the teacher's switches
applies to it, and its record says so."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .sampling import SAMPLERS

# Each method is DeS4 with some of its components switched off (Table 3): the one place they are set.
METHOD_PRESETS: dict[str, dict[str, Any]] = {
    "des4": {},
    "mean-teacher": {"decoupled": False, "shared_head": False, "reweight": False},  # Table 3, first row
    "supervised": {"decoupled": False, "shared_head": False, "reweight": False},  # labels only: no teacher at all
}
METHODS = tuple(METHOD_PRESETS)
__all__ = ["METHODS", "METHOD_PRESETS", "SAMPLERS", "Recipe", "resolve_recipe"]


@dataclass(frozen=True)
class Recipe:
    """The flags that apply to a run (SPEC §2, §4)."""

    method: str
    decoupled: bool  # D.T.: E^T is an EMA of E^S only; D^T trained by L_l^ub
    shared_head: bool  # S.H.: one prototype bank for teacher and student
    reweight: bool  # P.R.: Eq. 7 pixel weights in L_l^ub
    sampler: str  # the prototype sampler (Table 4)
    teacher_bank_follows_student: bool  # a mean teacher's own bank is an EMA of the student's (SPEC §4)

    @property
    def with_teacher(self) -> bool:
        return self.method != "supervised"

    def record(self) -> dict[str, Any]:
        """What a saved model's training record says about the method: only what ran."""
        return {"method": self.method, "teacher": self.with_teacher, "decoupled": self.decoupled,
                "shared_head": self.shared_head, "reweight": self.reweight, "sampler": self.sampler}


def resolve_recipe(method: str, decoupled: bool = True, shared_head: bool = True, reweight: bool = True,
                   sampler: str = "mes", ema_teacher_bank: bool = True) -> Recipe:
    """The flags of ``method`` given the switches: its preset wins over them (a mean teacher is never decoupled)."""
    if method not in METHOD_PRESETS:
        raise ValueError(f"method={method!r}: choose one of {', '.join(METHODS)}")
    switches = {"decoupled": decoupled, "shared_head": shared_head, "reweight": reweight, **METHOD_PRESETS[method]}
    with_teacher = method != "supervised"
    follows = with_teacher and not switches["decoupled"] and not switches["shared_head"] and ema_teacher_bank
    return Recipe(method, switches["decoupled"], switches["shared_head"], switches["reweight"], sampler, follows)
