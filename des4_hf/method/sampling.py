"""Multi-Entropy Sampling (DeS4 Sec. 3.3, Eq. 9–11) and the ablation samplers of Table 4: which labeled pixels feed
the prototype EMA (Eq. 12). Quotas per class (:func:`class_quotas`); ``"mes"`` shares them over ``k`` entropy zones
(Eq. 10–11), ``"quantity"`` draws uniformly, ``"confidence"`` takes the highest entropies. Rounding, zones, shortfall
and ties follow SPEC §3 **[choice]**s; per-pixel work is vectorised, only the ``C × k`` quota arithmetic loops."""

from __future__ import annotations

import math
import typing
from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor

SamplingMethod = Literal["mes", "quantity", "confidence"]
SAMPLERS: tuple[str, ...] = typing.get_args(SamplingMethod)  # the one list of sampler names


def class_ratio(pixel_counts: Tensor | Sequence[int]) -> Tensor:
    """Class ratio ``R`` of Sec. 3.3: ``r_c = n_min / n_c`` (float64, ``(C,)``) from the labeled set's pixel counts;
    the rarest class gets 1, a class without labeled pixels 0 (never sampled)."""
    counts = torch.as_tensor(pixel_counts).detach().to(torch.float64).flatten()
    if (counts < 0).any():
        raise ValueError(f"pixel_counts must be non-negative, got {counts.tolist()}")
    ratio = torch.zeros_like(counts)
    seen = counts > 0
    if seen.any():
        ratio[seen] = counts[seen].min() / counts[seen]
    return ratio


def class_quotas(batch_counts: Tensor, ratio: Tensor) -> Tensor:
    """Per-class quota in this batch: ``min(n_c^b, max(1, round(r_c · n_c^b)))`` (int64); 0 if ``n_c^b`` or ``r_c``
    is 0."""
    n = batch_counts.to(torch.float64)
    r = ratio.to(device=n.device, dtype=torch.float64)
    quota = torch.minimum(torch.round(r * n).clamp_min(1.0), n)
    return torch.where((n > 0) & (r > 0), quota, torch.zeros_like(quota)).to(torch.int64)


def allocate_zone_quotas(quota: int, zone_counts: Sequence[int], zone_means: Sequence[float],
                         alpha: float = 0.1) -> list[int]:
    """Split one class's quota ``n̂_c`` (at most ``sum(zone_counts)``) over its entropy zones, low to high (Eq. 11,
    SPEC §3.4–3.5): pixels to draw per zone, summing to ``quota``, never more than a zone holds."""
    k = len(zone_counts)
    if quota > sum(zone_counts):
        raise ValueError(f"quota {quota} exceeds the {sum(zone_counts)} pixels available")
    alloc = [0] * k
    nonempty = [i for i in range(k) if zone_counts[i] > 0]
    if quota <= 0 or not nonempty:
        return alloc
    weight = {i: 1.0 / (alpha + zone_means[i]) for i in nonempty}  # Eq. 11
    total = sum(weight[i] for i in nonempty)
    share = {i: weight[i] / total * quota for i in nonempty}
    base = {i: math.floor(share[i]) for i in nonempty}
    # Largest remainder so the zone quotas sum exactly to n̂_c (ties: lower-entropy zone).
    order = sorted(nonempty, key=lambda i: (-(share[i] - base[i]), i))
    for t in range(quota - sum(base.values())):
        base[order[t % len(order)]] += 1
    for i in nonempty:
        alloc[i] = min(base[i], zone_counts[i])
    # A zone short of pixels hands its missing units to the nearest zones with pixels left.
    for i in nonempty:
        short = base[i] - alloc[i]
        if short <= 0:
            continue
        for j in sorted((j for j in range(k) if j != i), key=lambda j: (abs(j - i), j)):
            take = min(short, zone_counts[j] - alloc[j])
            if take > 0:
                alloc[j] += take
                short -= take
            if short == 0:
                break
    return alloc


def _valid_pixels(labels: Tensor, num_classes: int, ratio: Tensor, ignore_index: int) -> Tensor:
    """Indices of pixels that can be sampled: not ignored and of a class with ``r_c > 0``."""
    ignored = labels == ignore_index
    bad = ~ignored & ((labels < 0) | (labels >= num_classes))
    if bad.any():
        raise ValueError(f"labels hold {labels[bad].unique().tolist()}, outside [0, {num_classes}) and not "
                         f"ignore_index={ignore_index}; class_ratio has {num_classes} entries")
    # One lookup in a (C + 1)-entry table; slot C stands for "ignored".
    sampled = torch.cat([ratio > 0, ratio.new_zeros(1, dtype=torch.bool)])
    return sampled[torch.where(ignored, num_classes, labels)].nonzero().squeeze(1)


def entropy_zones(labels: Tensor, entropy: Tensor, num_classes: int, num_zones: int = 5) -> Tensor:
    """Zone index (Eq. 10, int64 in ``[0, num_zones)``) of every pixel over its class's ``[E_min, E_max]``;
    ``labels`` hold only classes in ``[0, num_classes)``."""
    e = entropy.to(torch.float64)
    emin = torch.full((num_classes,), math.inf, dtype=torch.float64, device=e.device)
    emax = torch.full((num_classes,), -math.inf, dtype=torch.float64, device=e.device)
    emin = emin.scatter_reduce(0, labels, e, "amin")
    emax = emax.scatter_reduce(0, labels, e, "amax")
    width = (emax - emin) / num_zones
    # E_max = E_min: the whole class is one zone (a width of inf puts every boundary out of reach).
    width = torch.where(width > 0, width, torch.full_like(width, math.inf))
    pixel_min, pixel_width = emin[labels], width[labels]
    zone = torch.zeros(e.shape, dtype=torch.int64, device=e.device)
    for i in range(1, num_zones):  # count the boundaries b_i = E_min + i·L that e reaches
        zone += e >= pixel_min + i * pixel_width
    return zone


_KEY_BITS = 40  # random sort keys; the group id goes in the bits above them
# Candidate threshold of _draw_in_groups: alloc + _MARGIN_SD·√alloc + _MARGIN_MIN expected keys per group.
_MARGIN_SD, _MARGIN_MIN = 4.0, 16.0


def _draw_in_groups(group: Tensor, num_groups: int, alloc: Tensor, generator: torch.Generator | None) -> Tensor:
    """Positions (into ``group``) of a uniform random subset of ``alloc[g]`` elements of every group g: the
    ``alloc[g]`` smallest random keys. Only keys under a per-group threshold are sorted (a group with too few
    is retried whole); the draw depends on the keys only, so a seed always gives the same draw."""
    n = group.numel()
    gen_device = generator.device if generator is not None else group.device
    keys = torch.randint(0, 1 << _KEY_BITS, (n,), generator=generator, device=gen_device).to(group.device)
    sizes = torch.bincount(group, minlength=num_groups).to(torch.float64)
    wanted = alloc.to(torch.float64)
    share = ((wanted + _MARGIN_SD * wanted.sqrt() + _MARGIN_MIN) / sizes.clamp_min(1)).clamp(max=1.0)
    limit = torch.ceil(share * float(1 << _KEY_BITS)).to(torch.int64)
    limit = torch.where(alloc > 0, limit, torch.zeros_like(limit))
    for _ in range(2):
        cand = (keys < limit[group]).nonzero().squeeze(1)
        cand_group = group[cand]
        found = torch.bincount(cand_group, minlength=num_groups)
        short = found < alloc
        if not short.any():
            break
        limit = torch.where(short, torch.full_like(limit, 1 << _KEY_BITS), limit)
    # Integer keys (group, random key) use torch's radix sort; stable keeps rare key ties by position.
    order = torch.sort((cand_group << _KEY_BITS) | keys[cand], stable=True).indices
    cand, cand_group = cand[order], cand_group[order]
    rank = torch.arange(cand.numel(), device=cand.device) - (torch.cumsum(found, 0) - found)[cand_group]
    return cand[rank < alloc[cand_group]]


def _highest_entropy_in_classes(lab: Tensor, ent: Tensor, num_classes: int, quota: Tensor) -> Tensor:
    """Positions of the ``quota[c]`` highest-entropy pixels of every class (ties: lower position)."""
    # Order-preserving int64 image of the float64 entropies (+0.0 folds −0.0 into 0.0), so the
    # sorts below are integer radix sorts instead of float comparison sorts.
    bits = (ent.to(torch.float64) + 0.0).view(torch.int64)
    key = bits ^ ((bits >> 63) & 0x7FFFFFFFFFFFFFFF)
    by_entropy = torch.sort(~key, stable=True).indices  # descending entropy, position on ties
    by_class = torch.sort(lab[by_entropy], stable=True).indices
    order = by_entropy[by_class]
    sizes = torch.bincount(lab, minlength=num_classes)
    sorted_lab = lab[order]
    rank = torch.arange(lab.numel(), device=lab.device) - (torch.cumsum(sizes, 0) - sizes)[sorted_lab]
    return order[rank < quota[sorted_lab]]


def select_pixels(labels: Tensor, entropy: Tensor, class_ratio: Tensor, method: SamplingMethod = "mes",
                  num_zones: int = 5, alpha: float = 0.1, ignore_index: int = 255,
                  generator: torch.Generator | None = None) -> Tensor:
    """Sorted flat indices of the pixels chosen to update the prototypes.

    ``labels`` (any shape; ``ignore_index`` never sampled) and ``entropy`` (Eq. 9, same shape), ``class_ratio``
    (C,) of the labeled set; ``method``: ``"mes"`` (Eq. 10–11, ``num_zones`` = k, ``alpha`` = α),
    ``"quantity"`` (uniform in the class) or ``"confidence"`` (highest entropy first), all with the quota of
    :func:`class_quotas`. The same inputs and ``generator`` seed (on the labels' device) give the same pixels.
    """
    if method not in SAMPLERS:
        raise ValueError(f"method={method!r} is not one of {SAMPLERS}")
    if num_zones < 1:
        raise ValueError(f"num_zones must be >= 1, got {num_zones}")
    if not alpha > 0:
        raise ValueError(f"alpha must be > 0 (it keeps 1/(alpha + mean entropy) finite), got {alpha}")
    if labels.shape != entropy.shape:
        raise ValueError(f"labels {tuple(labels.shape)} and entropy {tuple(entropy.shape)} must have the same shape "
                         "(resize the labels to the embedding resolution with nearest interpolation first)")
    flat_labels, flat_entropy = labels.reshape(-1).long(), entropy.reshape(-1)
    num_classes = class_ratio.numel()
    ratio = class_ratio.to(device=flat_labels.device, dtype=torch.float64).flatten()
    valid = _valid_pixels(flat_labels, num_classes, ratio, ignore_index)
    if valid.numel() == 0:
        return valid
    lab = flat_labels[valid]
    ent = flat_entropy[valid].to(torch.float64)
    if not bool(torch.isfinite(ent).all()):  # one sync; the zone quotas below would fail on int(NaN) otherwise
        raise FloatingPointError("the pixel entropies hold NaN/inf: the network's outputs are no longer finite")
    quota = class_quotas(torch.bincount(lab, minlength=num_classes), ratio)

    if method == "confidence":
        chosen = _highest_entropy_in_classes(lab, ent, num_classes, quota)
    elif method == "quantity":
        chosen = _draw_in_groups(lab, num_classes, quota, generator)
    else:
        group = lab * num_zones + entropy_zones(lab, ent, num_classes, num_zones)
        num_groups = num_classes * num_zones
        sizes = torch.bincount(group, minlength=num_groups)
        esum = torch.zeros(num_groups, dtype=torch.float64, device=group.device).index_add_(0, group, ent)
        means = (esum / sizes.clamp_min(1)).view(num_classes, num_zones).tolist()
        counts_cz = sizes.view(num_classes, num_zones).tolist()
        alloc = [n for c, q in enumerate(quota.tolist())  # a loop over C × k numbers only
                 for n in (allocate_zone_quotas(q, counts_cz[c], means[c], alpha) if q > 0 else [0] * num_zones)]
        alloc_t = torch.tensor(alloc, dtype=torch.int64, device=group.device)
        chosen = _draw_in_groups(group, num_groups, alloc_t, generator)
    return valid[torch.sort(chosen).values]


def sample_class_features(embeddings: Tensor, labels: Tensor, entropy: Tensor, class_ratio: Tensor,
                          method: SamplingMethod = "mes", num_zones: int = 5, alpha: float = 0.1,
                          ignore_index: int = 255, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Per-class ``sums`` (C, d) and int64 ``counts`` (C,) of the sampled embeddings (Eq. 12's GAP before division).

    ``embeddings``: (N, d) L2-normalised, or (B, d, h, w) straight from the decoder (gathered image by image, no
    transpose); ``labels``/``entropy``: (N,) or (B, h, w); the rest as in :func:`select_pixels`.
    """
    if embeddings.dim() == 2:
        n, d = embeddings.shape
    elif embeddings.dim() == 4:
        b, d, h, w = embeddings.shape
        n = b * h * w
    else:
        raise ValueError(f"embeddings must be (N, d) or (B, d, h, w), got shape {tuple(embeddings.shape)}")
    if labels.numel() != n:
        raise ValueError(f"labels have {labels.numel()} pixels but embeddings {tuple(embeddings.shape)} have {n}")
    with torch.no_grad():
        idx = select_pixels(labels, entropy, class_ratio, method, num_zones, alpha, ignore_index, generator)
        num_classes = class_ratio.numel()
        dtype = torch.promote_types(embeddings.dtype, torch.float32)
        lab = labels.reshape(-1)[idx].long().to(embeddings.device)
        idx = idx.to(embeddings.device)
        sums = torch.zeros(num_classes, d, dtype=dtype, device=embeddings.device)
        if embeddings.dim() == 2:
            sums.index_add_(0, lab, embeddings.index_select(0, idx).to(dtype))
        else:
            # Channel-first: gather image by image along the contiguous h·w rows (a pixel's own
            # channels are h·w apart, so a per-pixel gather would touch a new page per value).
            per_image = embeddings.reshape(b, d, h * w)
            bounds = torch.searchsorted(idx, torch.arange(b + 1, device=idx.device) * (h * w)).tolist()
            for i in range(b):
                lo, hi = bounds[i], bounds[i + 1]
                if hi > lo:
                    pixels = (idx[lo:hi] - i * h * w)[None, :].expand(d, hi - lo)
                    feats = torch.gather(per_image[i], 1, pixels)  # (d, picks)
                    sums.index_add_(0, lab[lo:hi], feats.t().to(dtype).contiguous())
        counts = torch.bincount(lab, minlength=num_classes)
    return sums, counts
