"""Key-side patch selection on crafted saliency maps."""

from __future__ import annotations

import pytest
import torch

from ssit.backbones.tokens import keep_patch_tokens
from ssit.methods.selection import num_kept_patches, pool_saliency, select_patches

# Pooled (3x3 grid, row-major) values of the crafted map below, patch index -> value:
#   0: 0.2  1: 0.9  2: 0.5
#   3: 0.5  4: 0.0  5: 0.9
#   6: 0.1  7: 0.5  8: 0.0
GRID_MAX = torch.tensor([[0.2, 0.9, 0.5], [0.5, 0.0, 0.9], [0.1, 0.5, 0.0]])


def crafted_map() -> torch.Tensor:
    """A 6x6 map (patch 2) whose max per patch is GRID_MAX, one bright pixel per patch."""
    saliency = torch.zeros(1, 1, 6, 6)
    for row in range(3):
        for col in range(3):
            saliency[0, 0, 2 * row + 1, 2 * col] = GRID_MAX[row, col]
    return saliency


def test_num_kept_follows_the_original_count_rule() -> None:
    assert num_kept_patches(196, 0.25) == 147  # ViT-S/16 at 224
    assert num_kept_patches(49, 0.25) == 36  # ViT-S/32 at 224: int(36.75)
    assert num_kept_patches(9, 0.25) == 6  # int(6.75)
    assert num_kept_patches(196, 0.0) == 196


@pytest.mark.parametrize("ratio", [1.0, -0.1, 0.99])
def test_num_kept_rejects_ratios_that_keep_nothing_or_are_invalid(ratio: float) -> None:
    with pytest.raises(ValueError, match="mask"):
        num_kept_patches(9, ratio)


def test_max_and_avg_pooling_to_the_patch_grid() -> None:
    saliency = crafted_map()
    assert torch.equal(pool_saliency(saliency, 2, "max"), GRID_MAX.flatten()[None])
    # One bright pixel among four: the average is a quarter of the max.
    assert torch.allclose(pool_saliency(saliency, 2, "avg"), GRID_MAX.flatten()[None] / 4)


def test_selection_order_with_ties() -> None:
    scores = pool_saliency(crafted_map(), 2, "max")
    kept = select_patches(scores, num_kept_patches(9, 0.25))
    # Descending value; ties (0.9: patches 1, 5; 0.5: patches 2, 3, 7) by lower index first.
    assert kept.tolist() == [[1, 5, 2, 3, 7, 0]]


def test_selection_of_an_all_zero_map_keeps_the_first_patches() -> None:
    scores = pool_saliency(torch.zeros(2, 1, 6, 6), 2, "max")
    assert select_patches(scores, 6).tolist() == [[0, 1, 2, 3, 4, 5]] * 2


def test_selection_is_per_sample() -> None:
    scores = torch.tensor([[0.0, 1.0, 0.5, 0.2], [0.3, 0.3, 0.9, 0.3]])
    assert select_patches(scores, 2).tolist() == [[1, 2], [2, 0]]


def test_max_and_avg_pooling_can_choose_differently() -> None:
    # Patch 0: one pixel at 1.0 (max 1.0, mean 0.25); patch 1: uniform 0.5 (max 0.5, mean 0.5).
    saliency = torch.zeros(1, 1, 2, 4)
    saliency[0, 0, 0, 0] = 1.0
    saliency[0, 0, :, 2:] = 0.5
    assert select_patches(pool_saliency(saliency, 2, "max"), 1).tolist() == [[0]]
    assert select_patches(pool_saliency(saliency, 2, "avg"), 1).tolist() == [[1]]


def test_gather_keeps_class_token_first_then_selected_patches() -> None:
    # Token t carries the value t in every channel; token 0 is the class token.
    tokens = torch.arange(10, dtype=torch.float32).view(1, 10, 1).expand(2, 10, 3)
    kept = torch.tensor([[1, 5, 2], [8, 0, 3]])
    gathered = keep_patch_tokens(tokens, kept, num_prefix_tokens=1)
    assert gathered.shape == (2, 4, 3)
    assert gathered[..., 0].tolist() == [[0, 2, 6, 3], [0, 9, 1, 4]]


def test_bad_inputs_raise() -> None:
    with pytest.raises(ValueError, match="shape"):
        pool_saliency(torch.zeros(1, 3, 6, 6), 2, "max")
    with pytest.raises(ValueError, match="divisible"):
        pool_saliency(torch.zeros(1, 1, 7, 6), 2, "max")
    with pytest.raises(ValueError, match="pooling"):
        pool_saliency(torch.zeros(1, 1, 6, 6), 2, "median")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="keep"):
        select_patches(torch.zeros(1, 4), 5)
    with pytest.raises(ValueError, match="keep"):
        select_patches(torch.zeros(1, 4), 0)
    with pytest.raises(ValueError, match="batch"):
        keep_patch_tokens(torch.zeros(2, 5, 3), torch.zeros(3, 2, dtype=torch.long), 1)
