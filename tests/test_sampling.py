"""Multi-Entropy Sampling (Eq. 9–11, SPEC §3): hand-built cases and a plain-Python reference."""

from __future__ import annotations

import math
import random
from collections import Counter

import pytest
import torch

from des4_hf.method.sampling import (
    allocate_zone_quotas,
    class_quotas,
    class_ratio,
    entropy_zones,
    sample_class_features,
    select_pixels,
)

# --------------------------------------------------------------------------------------------
# Reference implementation: per class, per zone, plain Python (SPEC §3 read literally).
# Written independently of des4_hf.method.sampling; the vectorised code must choose the same number of
# pixels in every (class, zone) and, for "confidence", the same pixels.
# --------------------------------------------------------------------------------------------


def reference_zones(values: list[float], k: int) -> list[int]:
    """Eq. 10: zone i holds [E_min + i·L, E_min + (i+1)·L); the last zone also holds E_max."""
    e_min, e_max = min(values), max(values)
    width = (e_max - e_min) / k
    if width == 0:
        return [0] * len(values)
    zones = []
    for v in values:
        z = 0
        for i in range(1, k):
            if v >= e_min + i * width:
                z = i
        zones.append(z)
    return zones


def reference_zone_quotas(quota: int, sizes: list[int], means: list[float], alpha: float) -> list[int]:
    k = len(sizes)
    filled = [i for i in range(k) if sizes[i] > 0]
    z = {i: 1.0 / (alpha + means[i]) for i in filled}
    z_total = sum(z[i] for i in filled)
    exact = {i: z[i] / z_total * quota for i in filled}
    want = {i: math.floor(exact[i]) for i in filled}
    left = quota - sum(want.values())
    while left > 0:  # largest remainder, lower zone on ties
        best = max(filled, key=lambda i: (exact[i] - math.floor(exact[i]), -i))
        want[best] += 1
        exact[best] = math.floor(exact[best])  # used up its remainder
        left -= 1
    got = {i: min(want[i], sizes[i]) for i in filled}
    for i in filled:  # borrow one unit at a time from the nearest zone with pixels left
        for _ in range(want[i] - got[i]):
            donors = [j for j in filled if j != i and got[j] < sizes[j]]
            donor = min(donors, key=lambda j: (abs(j - i), j))
            got[donor] += 1
    return [got.get(i, 0) for i in range(k)]


def reference_select(labels, entropy, ratio, method, num_zones=5, alpha=0.1, ignore_index=255, seed=0):
    """Returns (chosen flat indices, Counter of (class, zone) -> number chosen)."""
    rng = random.Random(seed)
    labels = [int(v) for v in labels.flatten().tolist()]
    ent = [float(v) for v in entropy.flatten().double().tolist()]
    ratio = [float(v) for v in ratio.double().tolist()]
    pixels: dict[int, list[int]] = {}
    for i, c in enumerate(labels):
        if c != ignore_index and ratio[c] > 0:
            pixels.setdefault(c, []).append(i)
    chosen: list[int] = []
    per_zone: Counter = Counter()
    for c, pix in sorted(pixels.items()):
        n = len(pix)
        quota = min(n, max(1, round(ratio[c] * n)))
        if method == "quantity":
            chosen += rng.sample(pix, quota)
            per_zone[(c, 0)] += quota
        elif method == "confidence":
            chosen += sorted(pix, key=lambda i: (-ent[i], i))[:quota]
            per_zone[(c, 0)] += quota
        else:
            zones = reference_zones([ent[i] for i in pix], num_zones)
            members = [[p for p, z in zip(pix, zones) if z == i] for i in range(num_zones)]
            means = [sum(ent[p] for p in m) / len(m) if m else 0.0 for m in members]
            counts = reference_zone_quotas(quota, [len(m) for m in members], means, alpha)
            for i in range(num_zones):
                chosen += rng.sample(members[i], counts[i])
                if counts[i]:
                    per_zone[(c, i)] += counts[i]
    return sorted(chosen), per_zone


def zone_counts_of(indices, labels, entropy, ratio, num_zones, ignore_index=255):
    """Count chosen pixels per (class, reference zone)."""
    labels_l = labels.flatten().tolist()
    ent = entropy.flatten().double().tolist()
    zone_of = {}
    for c in set(labels_l) - {ignore_index}:
        pix = [i for i, v in enumerate(labels_l) if v == c]
        for p, z in zip(pix, reference_zones([ent[i] for i in pix], num_zones)):
            zone_of[p] = (c, z)
    return Counter(zone_of[i] for i in indices.tolist())


def random_case(seed: int, n: int = 3000, num_classes: int = 7):
    g = torch.Generator().manual_seed(seed)
    # Imbalanced classes, some ignored pixels, class ratios with an unseen (r = 0) class.
    probs = torch.tensor([40.0, 20, 10, 5, 2, 1, 0.2])[:num_classes]
    labels = torch.multinomial(probs / probs.sum(), n, replacement=True, generator=g)
    labels[torch.rand(n, generator=g) < 0.1] = 255
    counts = torch.tensor([4000, 2100, 900, 520, 190, 100, 0])[:num_classes]
    ratio = class_ratio(counts)
    # Clustered entropies: most low, a few high, so some zones are empty or too small.
    low = torch.rand(n, generator=g, dtype=torch.float64) * 0.3
    high = 1.0 + torch.rand(n, generator=g, dtype=torch.float64)
    entropy = torch.where(torch.rand(n, generator=g) < 0.85, low, high)
    if seed % 3 == 0:  # quantised values: exact ties and classes with a single entropy value
        entropy = (entropy * 4).round() / 4
    return labels, entropy, ratio


# ------------------------------------------------------------------ class ratio and quota ---


def test_class_ratio_inverse_to_frequency_and_zero_for_unseen():
    r = class_ratio(torch.tensor([1000, 10, 0, 250]))
    assert r.dtype == torch.float64
    assert r.tolist() == [0.01, 1.0, 0.0, 0.04]  # n_min = 10


def test_class_quota_arithmetic_frequent_and_rare_class():
    r = torch.tensor([0.01, 1.0, 0.01, 0.0], dtype=torch.float64)
    # frequent class 0: 460 px → round(4.6) = 5; rare class 1: 7 px → all 7;
    # frequent class 2 with only 30 px → round(0.3) = 0 → at least 1; unseen class 3 → 0.
    q = class_quotas(torch.tensor([460, 7, 30, 50]), r)
    assert q.tolist() == [5, 7, 1, 0]
    # round half to even (exact binary products): 10 · 0.25 = 2.5 → 2; 14 · 0.25 = 3.5 → 4.
    assert class_quotas(torch.tensor([10, 14]), torch.tensor([0.25, 0.25])).tolist() == [2, 4]


def test_quota_through_select_pixels():
    labels = torch.tensor([0] * 460 + [1] * 7 + [255] * 5)
    entropy = torch.rand(labels.numel(), generator=torch.Generator().manual_seed(0))
    ratio = class_ratio(torch.tensor([1000, 10]))  # [0.01, 1.0]
    for method in ("mes", "quantity", "confidence"):
        idx = select_pixels(labels, entropy, ratio, method=method, generator=torch.Generator().manual_seed(1))
        assert Counter(labels[idx].tolist()) == {0: 5, 1: 7}


# --------------------------------------------------------------------------------- zones ---


def test_zone_boundaries_with_maximum_in_last_zone():
    # E_min = 0, E_max = 1.25, k = 5 → L = 0.25, boundaries 0.25, 0.5, 0.75, 1.0 (all exact in binary).
    e = torch.tensor([0.0, 0.1, 0.25, 0.5, 0.74, 0.75, 1.0, 1.2, 1.25], dtype=torch.float64)
    zones = entropy_zones(torch.zeros(9, dtype=torch.long), e, num_classes=1, num_zones=5)
    assert zones.tolist() == [0, 0, 1, 2, 2, 3, 4, 4, 4]  # left-closed; 1.25 = E_max in zone 4
    assert zones.tolist() == reference_zones(e.tolist(), 5)


def test_zones_are_per_class():
    labels = torch.tensor([0, 0, 1, 1, 1])
    e = torch.tensor([0.0, 1.0, 5.0, 6.0, 10.0], dtype=torch.float64)
    assert entropy_zones(labels, e, num_classes=2, num_zones=2).tolist() == [0, 1, 0, 0, 1]


def test_all_equal_entropies_form_one_zone():
    labels = torch.zeros(12, dtype=torch.long)
    e = torch.full((12,), 0.7, dtype=torch.float64)
    assert entropy_zones(labels, e, 1, 5).tolist() == [0] * 12
    idx = select_pixels(labels, e, torch.tensor([0.5]), generator=torch.Generator().manual_seed(0))
    assert idx.numel() == 6 and idx.unique().numel() == 6


# ------------------------------------------------------------------- zone quotas (Eq. 11) ---


def test_zone_quota_hand_computed():
    # α = 0.1, means 0.1 / 0.4 / 0.9 → z = 5, 2, 1 (Σ = 8); quota 10 → 6.25, 2.5, 1.25
    # → floors 6, 2, 1 (= 9); the one unit left goes to the largest remainder (0.5, zone 1).
    assert allocate_zone_quotas(10, [20, 20, 20], [0.1, 0.4, 0.9], alpha=0.1) == [6, 3, 1]
    # Empty zones take no quota: zone 1 empty → z = 5, 1 (Σ 6) → 8.33, 0, 1.67 → 8, 0, 2.
    assert allocate_zone_quotas(10, [20, 0, 20], [0.1, 0.0, 0.9], alpha=0.1) == [8, 0, 2]
    # Remainder tie (two zones with equal means, 0.5 each): the lower-entropy zone first.
    assert allocate_zone_quotas(3, [5, 5], [0.3, 0.3], alpha=0.1) == [2, 1]


def test_zone_too_small_borrows_from_nearest_zone():
    # Same weights, zone 0 has 2 pixels: wants 6 → short 4. Zone 1 (distance 1) has 6 − 3 = 3 spare
    # → takes 3; the last unit comes from zone 2 (distance 2). Result 2, 6, 2.
    assert allocate_zone_quotas(10, [2, 6, 12], [0.1, 0.4, 0.9], alpha=0.1) == [2, 6, 2]
    # Middle zone short by 2: both neighbours at distance 1 → the lower-entropy zone 0 first.
    assert allocate_zone_quotas(10, [10, 1, 10], [0.1, 0.4, 0.9], alpha=0.1) == [8, 1, 1]


def test_zone_too_small_end_to_end():
    # One class, 20 pixels, r = 0.5 → quota 10; k = 3 over [0, 1.2] → L = 0.4.
    # zone 0: {0.0, 0.2} mean 0.1; zone 1: six × 0.4 mean 0.4; zone 2: 3 × 1.2 + 9 × 0.8, mean 0.9.
    e = torch.tensor([0.0, 0.2] + [0.4] * 6 + [1.2] * 3 + [0.8] * 9, dtype=torch.float64)
    labels = torch.zeros(20, dtype=torch.long)
    ratio = torch.tensor([0.5], dtype=torch.float64)
    assert entropy_zones(labels, e, 1, 3).tolist() == [0] * 2 + [1] * 6 + [2] * 12
    for seed in range(5):
        idx = select_pixels(
            labels, e, ratio, num_zones=3, alpha=0.1, generator=torch.Generator().manual_seed(seed)
        )
        zones = Counter(entropy_zones(labels, e, 1, 3)[idx].tolist())
        assert zones == {0: 2, 1: 6, 2: 2}


def test_class_with_one_pixel_and_unseen_class_and_ignored():
    labels = torch.tensor([0, 0, 0, 0, 1, 2, 2, 255])
    e = torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8])
    ratio = torch.tensor([0.25, 0.01, 0.0])  # class 2 never seen in the labeled set → r = 0
    emb = torch.arange(16, dtype=torch.float32).view(8, 2)
    sums, counts = sample_class_features(emb, labels, e, ratio, generator=torch.Generator().manual_seed(0))
    assert counts.tolist() == [1, 1, 0]  # class 1: max(1, round(0.01)) = 1 → its one pixel
    assert sums[1].tolist() == [8.0, 9.0]
    assert sums[2].tolist() == [0.0, 0.0]


# ------------------------------------------------------------------------ other samplers ---


def test_confidence_takes_highest_entropy_ties_by_index():
    labels = torch.zeros(5, dtype=torch.long)
    e = torch.tensor([0.3, 0.9, 0.1, 0.9, 0.5])
    idx = select_pixels(labels, e, torch.tensor([0.4]), method="confidence")  # quota round(2.0) = 2
    assert idx.tolist() == [1, 3]
    idx = select_pixels(labels, e, torch.tensor([0.2]), method="confidence")  # quota 1: tie → index 1
    assert idx.tolist() == [1]
    idx = select_pixels(labels, e, torch.tensor([0.6]), method="confidence")  # quota 3
    assert idx.tolist() == [1, 3, 4]


def test_uniform_within_zone():
    labels = torch.zeros(10, dtype=torch.long)
    e = torch.zeros(10)
    hits = torch.zeros(10)
    g = torch.Generator().manual_seed(0)
    draws = 1500
    for _ in range(draws):
        hits[select_pixels(labels, e, torch.tensor([0.3]), generator=g)] += 1
    assert torch.allclose(hits / draws, torch.full((10,), 0.3), atol=0.05)


# ------------------------------------------------------------ vectorised vs the reference ---


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("num_zones", [1, 3, 5])
def test_mes_matches_reference_per_zone(seed, num_zones):
    labels, entropy, ratio = random_case(seed)
    idx = select_pixels(
        labels, entropy, ratio, "mes", num_zones, 0.1, generator=torch.Generator().manual_seed(seed)
    )
    assert idx.unique().numel() == idx.numel()
    ref_idx, ref_zones = reference_select(labels, entropy, ratio, "mes", num_zones, 0.1, seed=seed)
    assert zone_counts_of(idx, labels, entropy, ratio, num_zones) == ref_zones
    assert idx.numel() == len(ref_idx)


@pytest.mark.parametrize("seed", range(4))
def test_quantity_and_confidence_match_reference(seed):
    labels, entropy, ratio = random_case(seed)
    idx = select_pixels(labels, entropy, ratio, "quantity", generator=torch.Generator().manual_seed(seed))
    ref_idx, _ = reference_select(labels, entropy, ratio, "quantity", seed=seed)
    assert Counter(labels[idx].tolist()) == Counter(labels[ref_idx].tolist())
    assert idx.unique().numel() == idx.numel()
    idx = select_pixels(labels, entropy, ratio, "confidence")
    ref_idx, _ = reference_select(labels, entropy, ratio, "confidence", seed=seed)
    assert idx.tolist() == ref_idx


def test_seeded_and_reproducible():
    labels, entropy, ratio = random_case(1)
    emb = torch.randn(labels.numel(), 8, generator=torch.Generator().manual_seed(0))
    for method in ("mes", "quantity"):
        a = sample_class_features(
            emb, labels, entropy, ratio, method, generator=torch.Generator().manual_seed(7)
        )
        b = sample_class_features(
            emb, labels, entropy, ratio, method, generator=torch.Generator().manual_seed(7)
        )
        c = sample_class_features(
            emb, labels, entropy, ratio, method, generator=torch.Generator().manual_seed(8)
        )
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
        assert not torch.equal(a[0], c[0])
        assert torch.equal(a[1], c[1])  # counts do not depend on the draw


# ------------------------------------------------------------------- sums and input shapes ---


def test_sums_are_sums_of_selected_embeddings_and_4d_input_matches():
    g = torch.Generator().manual_seed(3)
    b, d, h, w, c = 2, 6, 5, 7, 4
    emb4 = torch.randn(b, d, h, w, generator=g)
    labels = torch.randint(0, c, (b, h, w), generator=g)
    labels[0, 0, :3] = 255
    entropy = torch.rand(b, h, w, generator=g)
    ratio = torch.tensor([1.0, 0.5, 0.3, 0.0])
    emb2 = emb4.permute(0, 2, 3, 1).reshape(-1, d)
    idx = select_pixels(labels, entropy, ratio, generator=torch.Generator().manual_seed(0))
    sums, counts = sample_class_features(
        emb2, labels.flatten(), entropy.flatten(), ratio, generator=torch.Generator().manual_seed(0)
    )
    expected = torch.zeros(c, d).index_add_(0, labels.flatten()[idx], emb2[idx])
    assert torch.allclose(sums, expected)
    assert counts.tolist() == torch.bincount(labels.flatten()[idx], minlength=c).tolist()
    assert counts[3] == 0
    sums4, counts4 = sample_class_features(
        emb4, labels, entropy, ratio, generator=torch.Generator().manual_seed(0)
    )
    assert torch.allclose(sums4, sums) and torch.equal(counts4, counts)


def test_empty_and_invalid_inputs():
    ratio = torch.tensor([1.0, 1.0])
    sums, counts = sample_class_features(torch.randn(4, 3), torch.full((4,), 255), torch.rand(4), ratio)
    assert counts.tolist() == [0, 0] and not sums.any()
    with pytest.raises(ValueError, match="outside"):
        select_pixels(torch.tensor([0, 5]), torch.rand(2), ratio)
    with pytest.raises(ValueError, match="method"):
        select_pixels(torch.tensor([0, 1]), torch.rand(2), ratio, method="random")
    with pytest.raises(ValueError, match="same shape"):
        select_pixels(torch.tensor([0, 1]), torch.rand(3), ratio)
    with pytest.raises(ValueError, match="pixels"):
        sample_class_features(torch.randn(3, 2), torch.tensor([0, 1]), torch.rand(2), ratio)


@pytest.mark.parametrize("margins", [(4.0, 16.0), (0.0, 0.0)])
def test_candidate_prefilter_never_changes_the_draw(monkeypatch, margins):
    # The draw is "the alloc smallest random keys of each group"; the candidate threshold only
    # saves work. With zero margin most groups come up short and take the retry path.
    import des4_hf.method.sampling as sampling

    monkeypatch.setattr(sampling, "_MARGIN_SD", margins[0])
    monkeypatch.setattr(sampling, "_MARGIN_MIN", margins[1])
    g = torch.Generator().manual_seed(5)
    group = torch.randint(0, 6, (5000,), generator=g)
    alloc = torch.tensor([0, 1, 37, 400, 900, 0])
    sizes = torch.bincount(group, minlength=6)
    alloc = torch.minimum(alloc, sizes)
    for seed in range(3):
        got = sampling._draw_in_groups(group, 6, alloc, torch.Generator().manual_seed(seed))
        keys = torch.randint(
            0, 1 << sampling._KEY_BITS, (5000,), generator=torch.Generator().manual_seed(seed)
        )
        expected = []
        for c in range(6):
            members = (group == c).nonzero().squeeze(1)
            expected += members[torch.argsort(keys[members], stable=True)[: alloc[c]]].tolist()
        assert sorted(got.tolist()) == sorted(expected)


@pytest.mark.parametrize("method", ["mes", "quantity", "confidence"])
def test_non_finite_entropy_is_refused_with_a_reason_not_an_int_conversion_error(method):
    labels = torch.tensor([0, 0, 1, 1, 1, 2])
    entropy = torch.tensor([0.1, float("nan"), 0.3, 0.2, float("inf"), 0.5])
    with pytest.raises(FloatingPointError, match="NaN/inf"):
        select_pixels(labels, entropy, class_ratio(torch.tensor([10, 20, 30])), method)
