"""Which frames to label next (issue 33): the class-balanced uncertainty score and the diversity pick."""

from __future__ import annotations

import pytest
import torch

from des4_hf.method.acquisition import (
    class_weights,
    image_statistics,
    select,
    uncertainty_scores,
    unsure_classes,
)


def _logits(probabilities: list[list[float]]) -> torch.Tensor:
    """(1, C, 1, W) logits of one image whose W pixels have these class probabilities."""
    return torch.tensor(probabilities).log().T[None, :, None, :]


def test_a_rare_class_uncertain_pixel_outranks_a_common_class_one():
    sure = [0.99, 0.01]
    rare = _logits([sure, sure, sure, [0.45, 0.55]])  # its unsure pixel is predicted as class 1, the rare one
    common = _logits([sure, sure, sure, [0.55, 0.45]])  # the same entropy, predicted as class 0
    logits = torch.cat([rare, common])
    statistics = image_statistics(logits, torch.randn(2, 8, 1, 2))
    assert statistics.pixels_by_class.tolist() == [[3.0, 1.0], [4.0, 0.0]]
    plain = uncertainty_scores(statistics, class_weights(statistics.pixels_by_class, balanced=False))
    torch.testing.assert_close(plain[0], plain[1])  # the same entropies: a tie without balancing
    weights = class_weights(statistics.pixels_by_class)  # class 1 predicted on 1 pixel of 8: R = [1/7, 1]
    torch.testing.assert_close(weights.float(), torch.tensor([1 / 7, 1.0]))
    scores = uncertainty_scores(statistics, weights)
    assert scores[0] > 2 * scores[1]
    assert unsure_classes(statistics, weights) == [[1, 0], [0]]


def test_the_diversity_pick_takes_every_distinct_image_before_a_duplicate():
    distinct = torch.nn.functional.normalize(torch.randn(4, 16, generator=torch.Generator().manual_seed(0)), dim=1)
    embeddings = torch.cat([distinct, distinct[:1].repeat(3, 1)])  # 3 near-duplicate frames of image 0
    scores = torch.tensor([1.0, 0.2, 0.3, 0.25, 0.99, 0.98, 0.97])  # the duplicates score almost as high
    assert select(scores, None, 3) == [0, 4, 5]  # by score alone: three copies of one frame
    for budget in (2, 3, 4):
        picked = select(scores, embeddings, budget)
        assert len(set(picked)) == budget and not {4, 5, 6} & set(picked) and picked[0] == 0
    assert len({int(i) for i in select(scores, embeddings, 5)} & {0, 1, 2, 3}) == 4  # duplicates only after all
    with pytest.raises(ValueError, match="budget 8: between 1 and the 7 images"):
        select(scores, embeddings, 8)
