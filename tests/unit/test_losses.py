"""The method's loss formulas against values worked out by hand on tiny tensors."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch
from PIL import Image

from textloc.training.losses import (
    attention_loss,
    concepts_attention_loss,
    default_resolutions,
    denoise_weights,
    hard_attention_loss,
    instance_denoise_loss,
    prepare_target_mask,
    prior_loss,
    soft_attention_loss,
    token_attention_map,
    valid_border,
)


@dataclass
class Rec:
    height: int
    maps: torch.Tensor


def t(rows: list) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)


def test_hard_loss_is_mean_squared_error() -> None:
    pred = t([[0.0, 1.0], [1.0, 0.0]])
    target = t([[0.0, 0.0], [1.0, 1.0]])
    assert hard_attention_loss(pred, target).item() == pytest.approx(0.5)


def test_soft_loss_divides_by_all_pixels() -> None:
    pred = t([[0.5, 1.0], [0.2, 0.0]])
    target = t([[0.0, 1.0], [0.0, 0.5]])
    # background pixels (0,0) and (1,0): (0.25 + 0.04) / 4 pixels
    assert soft_attention_loss(pred, target).item() == pytest.approx(0.0725)


def test_soft_loss_ignores_attention_inside_the_mask() -> None:
    target = t([[0.0, 1.0], [0.0, 0.5]])
    pred = t([[0.5, 1.0], [0.2, 0.0]]).requires_grad_(True)
    loss = soft_attention_loss(pred, target)
    loss.backward()
    assert pred.grad[target > 0].abs().max().item() == 0.0
    changed = t([[0.5, 0.0], [0.2, 1.0]])
    assert soft_attention_loss(changed, target).item() == pytest.approx(loss.item())


def test_attention_loss_modes() -> None:
    pred = t([[0.5, 1.0], [0.2, 0.0]])
    target = t([[0.0, 1.0], [0.0, 0.5]])
    assert attention_loss(pred, target, "hard").item() == pytest.approx(
        hard_attention_loss(pred, target).item()
    )
    assert attention_loss(pred, target, "soft").item() == pytest.approx(
        soft_attention_loss(pred, target).item()
    )
    assert attention_loss(pred, target, "none").item() == 0.0
    with pytest.raises(ValueError, match="guidance mode"):
        attention_loss(pred, target, "medium")  # type: ignore[arg-type]


def test_concepts_loss_is_mean_of_per_concept_losses() -> None:
    pred = torch.stack([t([[0.0, 1.0], [1.0, 0.0]]), t([[1.0, 1.0], [1.0, 1.0]])])[None]  # [1, 2, 2, 2]
    target = torch.stack([t([[0.0, 0.0], [1.0, 1.0]]), t([[1.0, 1.0], [1.0, 0.0]])])[None]
    # concept 1: 0.5, concept 2: 0.25
    assert concepts_attention_loss(pred, target, "hard").item() == pytest.approx(0.375)


def test_token_map_averages_layers_then_minmaxes_each_resolution() -> None:
    records = [
        Rec(2, t([[0.0, 1.0], [2.0, 3.0]])[None, None]),
        Rec(2, t([[2.0, 3.0], [4.0, 5.0]])[None, None]),
        Rec(1, t([[7.0]])[None, None]),
    ]
    got = token_attention_map(records, [2, 1], out_size=2)
    # res 2: layer mean [[1,2],[3,4]] -> min-max [[0,1/3],[2/3,1]]; res 1: constant -> 0; then mean
    assert got.shape == (1, 1, 2, 2)
    torch.testing.assert_close(got[0, 0], t([[0.0, 1 / 6], [1 / 3, 0.5]]))


def test_token_map_minmax_of_constant_maps_is_finite() -> None:
    records = [Rec(4, torch.full((2, 3, 4, 4), 0.25)), Rec(2, torch.zeros(2, 3, 2, 2))]
    got = token_attention_map(records, [4, 2], out_size=8)
    assert got.shape == (2, 3, 8, 8)
    assert torch.isfinite(got).all()
    assert got.abs().max().item() < 1e-6


def test_token_map_normalises_each_row_and_column_separately() -> None:
    maps = torch.rand(3, 2, 4, 4) * torch.arange(1, 7).view(3, 2, 1, 1)
    got = token_attention_map([Rec(4, maps)], [4], out_size=16)
    torch.testing.assert_close(got.amin(dim=(-2, -1)), torch.zeros(3, 2))
    torch.testing.assert_close(got.amax(dim=(-2, -1)), torch.ones(3, 2), atol=1e-6, rtol=0)


def test_token_map_names_a_missing_resolution() -> None:
    with pytest.raises(ValueError, match="resolution 8.*recorded: \\[16\\]"):
        token_attention_map([Rec(16, torch.zeros(1, 1, 16, 16))], [16, 8], out_size=16)


def test_default_resolutions_drop_the_finest_level() -> None:
    assert default_resolutions([64, 32, 16, 8]) == [32, 16, 8]
    assert default_resolutions([8, 64, 8, 32, 16, 16]) == [32, 16, 8]
    assert default_resolutions([8]) == [8]
    assert default_resolutions([]) == []


def test_target_mask_is_min_maxed_over_the_whole_batch() -> None:
    masks = torch.stack([torch.full((4, 4), 0.2), torch.full((4, 4), 0.6)])
    masks[1, 0, 0] = 1.0
    got = prepare_target_mask(masks, out_size=4)
    assert got.min().item() == pytest.approx(0.0)
    assert got.max().item() == pytest.approx(1.0)
    assert got[1, 1, 1].item() == pytest.approx(0.5)  # (0.6 - 0.2) / (1.0 - 0.2)


def test_target_mask_of_255_scale_binary_mask_is_divided_by_255() -> None:
    masks = torch.zeros(1, 8, 8)
    masks[:, 2:6, 2:6] = 255.0
    torch.testing.assert_close(prepare_target_mask(masks, out_size=8), masks / 255.0)


def test_target_mask_resize_matches_pil_bilinear_and_keeps_fractional_edges() -> None:
    mask = np.zeros((24, 24), dtype=np.uint8)
    mask[5:17, 7:20] = 255
    pil = np.asarray(Image.fromarray(mask).resize((8, 8), Image.BILINEAR), dtype=np.float32) / 255.0
    got = prepare_target_mask(torch.from_numpy(mask).float()[None] / 255.0, out_size=8)[0]
    assert got.max().item() == pytest.approx(1.0) and got.min().item() == pytest.approx(0.0)
    assert torch.allclose(got, torch.from_numpy(pil), atol=1.5 / 255)
    assert ((got > 0) & (got < 1)).any()  # not re-binarised


def test_constant_target_mask_stays_finite() -> None:
    got = prepare_target_mask(torch.ones(2, 4, 4), out_size=2)
    torch.testing.assert_close(got, torch.ones(2, 2, 2))


def test_instance_loss_is_channel_sum_over_interior_pixels() -> None:
    pred = torch.zeros(2, 4, 4, 4)
    target = torch.ones(2, 4, 4, 4)
    target[1] *= 2.0
    # sample 0: 4 channels x 4 interior px x 1 / 4 px = 4; sample 1: x 4 = 16; mean 10
    assert instance_denoise_loss(pred, target, border=1).item() == pytest.approx(10.0)
    # it equals 4 x the element MSE of the interior, for 4 channels
    interior = ((pred - target) ** 2)[..., 1:3, 1:3].mean()
    assert instance_denoise_loss(pred, target, border=1).item() == pytest.approx(4 * interior.item())


def _framed(size: int, frame: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(pred, target) that differ only on a `frame`-pixel frame of a size x size latent."""
    pred = torch.zeros(1, 4, size, size)
    target = torch.full((1, 4, size, size), 100.0)
    target[..., frame:size - frame, frame:size - frame] = 0.0
    return pred, target


def test_the_left_out_border_scales_with_the_latent() -> None:
    # the authors' 1 px at SD1.5's 64x64 latents (512 px); SDXL's 128 latents leave 2 px; the
    # world's 8x8 latents leave none (a 1 px frame would be 44 % of the picture, never trained)
    assert [valid_border(s, s) for s in (8, 32, 63, 64, 96, 128)] == [0, 0, 0, 1, 1, 2]
    assert instance_denoise_loss(*_framed(64, 1)).item() == 0.0
    assert instance_denoise_loss(*_framed(128, 2)).item() == 0.0
    assert instance_denoise_loss(*_framed(128, 3)).item() > 0.0
    pred, target = _framed(8, 1)
    # 28 of 64 pixels differ by 100 in 4 channels
    assert instance_denoise_loss(pred, target).item() == pytest.approx(4 * 100.0**2 * 28 / 64)


def test_instance_loss_ignores_the_border_it_is_given() -> None:
    pred, target = _framed(5, 1)
    assert instance_denoise_loss(pred, target, border=1).item() == 0.0
    assert instance_denoise_loss(pred, target, border=0).item() > 0.0
    with pytest.raises(ValueError, match="border"):
        instance_denoise_loss(pred, target, border=3)


def test_weighted_instance_loss_keeps_the_authors_normalisation() -> None:
    pred = torch.zeros(2, 4, 4, 4)
    target = torch.ones(2, 4, 4, 4)
    target[:, :, :, 2:] = 3.0  # right half: error 9 per element, left half 1
    weights = torch.zeros(2, 1, 4, 4)
    weights[0, :, :, :2] = 1.0  # sample 0 looks at the left half only
    weights[1] = 0.5  # a uniform weight changes nothing
    loss = instance_denoise_loss(pred, target, border=0, weights=weights)
    # sample 0: 4 channels x 1; sample 1: 4 channels x mean(1, 9) = 20; mean 12
    assert loss.item() == pytest.approx((4 * 1 + 4 * 5) / 2)


def _scene_masks() -> tuple[torch.Tensor, torch.Tensor]:
    """One 16 px photo: a concept in the top-left 8x8 quarter, another masked object bottom-right."""
    concept = torch.zeros(1, 1, 16, 16)
    concept[..., :8, :8] = 1.0
    other = torch.zeros(1, 1, 16, 16)
    other[..., 10:16, 12:16] = 1.0
    return concept, torch.cat([concept, other], dim=1)  # the folders hold both objects' masks


def test_denoise_weights_per_region() -> None:
    concept, objects = _scene_masks()
    whole = denoise_weights(concept, objects, "whole photo", (4, 4))
    torch.testing.assert_close(whole, torch.ones(1, 1, 4, 4))
    only = denoise_weights(concept, objects, "concepts only", (4, 4))
    expected = torch.zeros(1, 1, 4, 4)
    expected[..., :2, :2] = 1.0
    torch.testing.assert_close(only, expected)
    # concepts and background: every latent cell the other object touches is left out, nothing else
    background = denoise_weights(concept, objects, "concepts and background", (4, 4))
    expected = torch.ones(1, 1, 4, 4)
    expected[..., 2:, 3:] = 0.0
    torch.testing.assert_close(background, expected)
    # partial cover: "concepts only" weighs a cell by the share the concept covers
    half = torch.zeros(1, 1, 16, 16)
    half[..., :2, :4] = 1.0
    assert denoise_weights(half, half, "concepts only", (4, 4))[0, 0, 0, 0].item() == pytest.approx(0.5)


def test_denoise_weights_without_other_objects_or_with_an_unknown_region() -> None:
    concept, _ = _scene_masks()
    no_folders = torch.zeros(1, 0, 16, 16)
    torch.testing.assert_close(denoise_weights(concept, no_folders, "concepts and background", (4, 4)),
                               torch.ones(1, 1, 4, 4))
    with pytest.raises(ValueError, match="concepts only"):
        denoise_weights(concept, no_folders, "objects", (4, 4))


def test_prior_loss_is_plain_mse() -> None:
    pred = t([[[[1.0, 2.0], [3.0, 4.0]]]])
    target = torch.zeros_like(pred)
    assert prior_loss(pred, target).item() == pytest.approx(7.5)
