"""Mask clean-up moves edges the right way and the checks name the bad mask."""

from __future__ import annotations

import math

import pytest
import torch
from kornia.color import rgb_to_hsv

from textloc.data.masks import binarize, check_mask_coverage, contrast_tint, disk, feather, grow, overlay
from textloc.errors import TLInputError


def _square(size: int = 64, start: int = 20, side: int = 24) -> torch.Tensor:
    mask = torch.zeros(1, size, size)
    mask[:, start : start + side, start : start + side] = 1.0
    return mask


def _dot(size: int = 81) -> torch.Tensor:
    mask = torch.zeros(1, size, size)
    mask[0, size // 2, size // 2] = 1.0
    return mask


def test_binarize() -> None:
    out = binarize(torch.tensor([0.0, 0.4, 0.5, 0.51, 1.0]), 0.5)
    assert out.tolist() == [0.0, 0.0, 0.0, 1.0, 1.0]
    assert out.dtype == torch.float32


def test_disk_shape() -> None:
    kernel = disk(3)
    assert kernel.shape == (7, 7)
    assert kernel[3].sum() == 7 and kernel[:, 3].sum() == 7  # full middle row and column
    assert kernel[0, 0] == 0 and kernel[0, 3] == 1  # corners cut


def test_grow_zero_is_a_no_op() -> None:
    mask = _square()
    assert grow(mask, 0) is mask
    assert feather(mask, 0) is mask


@pytest.mark.parametrize("radius", [5, 20])  # 20 runs as several small disks
def test_grow_makes_a_disk(radius: int) -> None:
    grown = grow(_dot(), radius)[0]
    centre = 40
    assert grown[centre, centre + radius] == 1 and grown[centre, centre + radius + 1] == 0
    assert grown[centre - radius, centre] == 1 and grown[centre - radius - 1, centre] == 0
    assert grown.sum().item() == pytest.approx(math.pi * radius**2, rel=0.1)
    diagonal = int(radius / math.sqrt(2)) + 2
    assert grown[centre + diagonal, centre + diagonal] == 0  # a square kernel would cover this


def test_grow_and_shrink_move_the_edge() -> None:
    mask = _square()
    area = mask.sum().item()
    assert grow(mask, 3).sum().item() > area
    shrunk = grow(mask, -5)
    assert shrunk.shape == mask.shape
    assert shrunk.sum().item() == 14 * 14  # eroding a square by a disk shrinks each side by 2 * 5
    assert shrunk[0, 25:39, 25:39].all()


def test_grow_keeps_2d_shape_and_soft_values() -> None:
    mask = torch.zeros(32, 32)
    mask[10:20, 10:20] = 0.6
    out = grow(mask, 2)
    assert out.shape == (32, 32)
    assert out.max().item() == pytest.approx(0.6)
    assert (out > 0).sum() > (mask > 0).sum()


def test_feather_softens_edges() -> None:
    mask = _square()
    soft = feather(mask, 4)
    assert soft.shape == mask.shape
    assert soft.min() >= 0 and soft.max() <= 1
    assert (soft > 0.01).sum() > (mask > 0).sum()  # spreads outwards
    assert (soft > 0.99).sum() < (mask > 0).sum()  # and fades the rim inwards
    assert soft.sum().item() == pytest.approx(mask.sum().item(), rel=0.02)  # mass is kept
    assert soft[0, 32, 32] == pytest.approx(1.0, abs=1e-3)


def test_feather_negative_is_refused() -> None:
    with pytest.raises(TLInputError, match="feather.*Fix:"):
        feather(_square(), -1)


def test_coverage_accepts_normal_masks() -> None:
    check_mask_coverage(_square().repeat(2, 1, 1), ["a.png", "b.png"], "mask_1")


def test_coverage_names_empty_and_full_masks() -> None:
    masks = torch.stack([_square()[0], torch.zeros(64, 64), torch.ones(64, 64)])
    with pytest.raises(TLInputError) as error:
        check_mask_coverage(masks[:2], ["a.png", "b.png"], "mask_2")
    message = str(error.value)
    assert "mask_2 b.png" in message and "all black" in message and "Fix:" in message
    with pytest.raises(TLInputError) as error:
        check_mask_coverage(masks[[0, 2]], ["a.png", "c.png"], "mask_2", fix="use a smaller shrink.")
    assert "c.png" in str(error.value) and "all white" in str(error.value)
    assert str(error.value).endswith("Fix: use a smaller shrink.")


def test_overlay_with_a_given_colour_tints_inside_and_draws_a_two_tone_outline() -> None:
    images = torch.full((2, 32, 32, 3), 0.5)
    mask = torch.zeros(2, 32, 32)
    mask[:, 8:24, 8:24] = 1.0
    out = overlay(images, mask, color=(1.0, 0.0, 0.0), alpha=0.5)
    assert out.shape == images.shape
    assert torch.equal(out[:, 0, 0], images[:, 0, 0])  # far outside untouched
    red, green, blue = out[0, 16, 16].tolist()
    assert red > 0.6 and green < 0.3 and blue < 0.3  # tinted red, shading kept
    inner, outer = out[0, 8, 16], out[0, 7, 16]  # just inside and just outside the edge
    assert sorted([inner.tolist(), outer.tolist()]) == [[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]]
    assert torch.equal(images, torch.full((2, 32, 32, 3), 0.5))  # input not modified


def _object_on_floor(colour: tuple[float, float, float]) -> tuple[torch.Tensor, torch.Tensor]:
    """A 32 px photo: a square object of `colour` on a dull floor, and its mask."""
    image = torch.full((1, 32, 32, 3), 0.4)
    mask = torch.zeros(1, 32, 32)
    mask[:, 8:24, 8:24] = 1.0
    image[0, 8:24, 8:24] = torch.tensor(colour)
    return image, mask


def _hue_degrees(rgb: torch.Tensor) -> float:
    return math.degrees(float(rgb_to_hsv(rgb.view(1, 3, 1, 1))[0, 0, 0, 0]))


OBJECTS = {"red": (0.85, 0.1, 0.1), "green": (0.1, 0.75, 0.2), "white": (0.97, 0.97, 0.97), "grey": (0.5, 0.5, 0.5)}


@pytest.mark.parametrize("name", OBJECTS)
def test_default_tint_contrasts_with_the_object_under_the_mask(name: str) -> None:
    colour = torch.tensor(OBJECTS[name])
    image, mask = _object_on_floor(OBJECTS[name])
    tint = contrast_tint(image, mask)[0]
    assert float((tint - colour).norm()) > 0.5, f"{name}: tint {tint.tolist()} too close to the object"
    if name in ("red", "green"):
        gap = abs(_hue_degrees(tint) - _hue_degrees(colour)) % 360
        assert min(gap, 360 - gap) > 90, f"{name}: hue only {gap:.0f} degrees away"
    out = overlay(image, mask)
    assert float((out[0, 16, 16] - colour).norm()) > 0.3  # the tinted object no longer looks like itself
    inner = out[0, 8, 16]
    assert float((inner - colour).norm()) > 0.5 and float((inner - out[0, 16, 16]).norm()) > 0.5  # outline reads
    assert torch.equal(out[0, 0, 0], image[0, 0, 0])


def test_a_given_colour_equal_to_the_object_still_gets_a_contrasting_outline() -> None:
    image, mask = _object_on_floor((1.0, 0.2, 0.2))
    out = overlay(image, mask, color=(1.0, 0.2, 0.2), alpha=0.45)
    inner, outer = out[0, 8, 16], out[0, 7, 16]
    assert float((inner - torch.tensor([1.0, 0.2, 0.2])).norm()) > 0.5
    assert float((inner - outer).norm()) > 1.7  # black next to white: one of them stands out on any floor


def test_contrast_tint_of_an_empty_mask_uses_the_whole_image() -> None:
    image = torch.zeros(1, 8, 8, 3)
    image[..., 0] = 1.0  # all red
    tint = contrast_tint(image, torch.zeros(1, 8, 8))[0]
    assert tint[0] < 0.2 and tint[1] > 0.9 and tint[2] > 0.9  # cyan


def test_overlay_shape_mismatch() -> None:
    with pytest.raises(TLInputError, match="Fix:"):
        overlay(torch.zeros(2, 32, 32, 3), torch.zeros(3, 32, 32))
