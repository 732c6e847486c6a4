"""Feature perturbation (SPEC §2.9 option, as UniMatch): an extra student pass on the weak unlabeled view whose
encoder features go through channel dropout before the decoder, trained on the same pseudo labels."""

from __future__ import annotations

import torch
from torch import Tensor


def channel_dropout(features: Tensor, p: float, generator: torch.Generator | None = None) -> Tensor:
    """``Dropout2d``: whole channels of each sample zeroed with probability ``p``, the rest scaled by ``1/(1−p)``;
    drawn from ``generator`` (on the CPU), so a resumed run drops the same channels."""
    if not 0.0 <= p < 1.0:
        raise ValueError(f"feature dropout p={p}: in [0, 1)")
    if p == 0.0:
        return features
    keep = torch.rand(features.shape[0], features.shape[1], 1, 1, generator=generator) >= p
    return features * (keep.to(device=features.device, dtype=features.dtype) / (1.0 - p))
