"""The prototype bank's updates (SPEC §3, Eq. 12): sampled class statistics, their sum over processes, the EMA of
Eq. 12, a mean teacher's bank following the student's (SPEC §4), and the orthonormal start (SPEC §3.8 [choice]).
The bank itself and its logits (Eq. 6) are the model's (:class:`des4_hf.modeling_des4.PrototypeHead`)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..modeling_des4 import PrototypeHead

logger = logging.getLogger(__name__)


@dataclass
class PrototypeStatistics:
    """Per-class sums (C, d) and counts (C,) of sampled features, accumulated until the optimizer steps."""

    sums: Tensor
    counts: Tensor

    @classmethod
    def empty(cls, head: PrototypeHead) -> PrototypeStatistics:
        return cls(torch.zeros_like(head.prototypes, dtype=torch.float32),
                   torch.zeros(head.num_classes, device=head.prototypes.device))

    def add_(self, other: PrototypeStatistics) -> None:
        self.sums += other.sums
        self.counts += other.counts

    def reduce_(self, reduce_sum: Callable[[Tensor], Tensor]) -> None:
        """Sum over processes (SPEC §3.7) with ``reduce_sum`` (e.g. ``lambda t: accelerator.reduce(t, "sum")``), in
        one float64 call: the same total whatever the order of the processes."""
        packed = reduce_sum(torch.cat([self.sums, self.counts[:, None]], 1).double())
        self.sums, self.counts = packed[:, :-1], packed[:, -1]


@torch.no_grad()
def update_prototypes_(head: PrototypeHead, sums: Tensor, counts: Tensor, momentum: float) -> Tensor:
    """Eq. 12: ``p_c ← normalise(τ2·p_c + (1−τ2)·mean_c)`` for every class with a sample, from per-class feature
    ``sums`` (C, d) and ``counts`` (C,) (summed over processes first); a class not yet ``initialized`` is set to its
    first mean. Returns the counts."""
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"momentum={momentum} must be in [0, 1] (τ2 of Eq. 12; the paper uses 0.99)")
    if sums.shape != head.prototypes.shape or counts.shape != (head.num_classes,):
        raise ValueError(f"update expects sums {tuple(head.prototypes.shape)} and counts ({head.num_classes},), "
                         f"got {tuple(sums.shape)} and {tuple(counts.shape)}")
    sums = sums.detach().to(device=head.prototypes.device, dtype=torch.float64)
    counts = counts.detach().to(device=head.prototypes.device, dtype=torch.float64)
    # A non-finite sum would poison a prototype for good: skip such classes (and say so).
    finite = torch.isfinite(sums).all(dim=1)
    if not bool(finite.all()):
        logger.warning("prototype update: non-finite feature sums for classes %s skipped",
                       torch.nonzero(~finite).flatten().tolist())
    seen = (counts > 0) & finite
    if not bool(seen.any()):
        return counts
    means = sums[seen] / counts[seen, None]
    blended = momentum * head.prototypes[seen].to(torch.float64) + (1.0 - momentum) * means
    blended = torch.where(head.initialized[seen][:, None], blended, means)
    head.prototypes[seen] = F.normalize(blended, dim=1).to(head.prototypes.dtype)
    head.initialized[seen] = True
    return counts


@torch.no_grad()
def follow_prototypes_(head: PrototypeHead, source: PrototypeHead, momentum: float) -> None:
    """EMA of another bank (a mean teacher's bank following the student's, SPEC §4):
    ``p ← normalise(τ·p + (1−τ)·p_source)``; a class the source has and this bank lacks is copied."""
    mine, theirs = head.prototypes.double(), source.prototypes.double()
    blended = F.normalize(momentum * mine + (1.0 - momentum) * theirs, dim=1)
    blended = torch.where(head.initialized[:, None], blended, theirs)  # first sight: copy
    updated = torch.where(source.initialized[:, None], blended, mine)  # the source lacks it: unchanged
    head.prototypes.copy_(updated.to(head.prototypes.dtype))
    head.initialized |= source.initialized


@torch.no_grad()
def orthonormal_prototypes_(head: PrototypeHead, generator: torch.Generator | None = None) -> PrototypeHead:
    """Random orthonormal prototypes, every class flagged ``initialized`` (SPEC §3.8 [choice]): each class starts at
    cosine 0 to the others and the Eq. 12 EMA blends it from its first sample on, instead of starting at its first
    mean, which for a random decoder is nearly collinear with the others'. Needs C <= d."""
    num_classes, dim = head.prototypes.shape
    if num_classes > dim:
        raise ValueError(f"{num_classes} orthonormal prototypes do not fit in d={dim} dimensions: raise "
                         "decoder_channels to at least the number of classes, or use prototype_init='first-mean'")
    gaussian = torch.randn(dim, num_classes, generator=generator, dtype=torch.float64)
    basis, _ = torch.linalg.qr(gaussian)  # (d, C), orthonormal columns
    head.prototypes.copy_(basis.T.to(device=head.prototypes.device, dtype=head.prototypes.dtype))
    head.initialized.fill_(True)
    return head
