"""Mask clean-up and checks: threshold, grow/shrink, feather, coverage, preview overlay.

Masks are [N,H,W] (or [H,W]) float32 tensors in 0..1, white = object, as ComfyUI's MASK type.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from kornia.color import hsv_to_rgb, rgb_to_hsv
from kornia.filters import gaussian_blur2d
from kornia.morphology import dilation, erosion

from ..errors import TLInputError

# Large disks are applied as several small ones (the Minkowski sum of disks is close to a disk,
# within a few % of its area): the cost grows with radius x step instead of radius squared.
_MAX_DISK_RADIUS = 8
# Overlay tints: the complement of the object's colour at this saturation and brightness.
LUMA = torch.tensor([0.2126, 0.7152, 0.0722])  # Rec. 709 luminance weights
TINT_SATURATION = 0.9
TINT_VALUE = 1.0
SHADE_FLOOR = 0.55  # the darkest pixel keeps this share of the tint's brightness


def binarize(mask: torch.Tensor, threshold: float) -> torch.Tensor:
    """1 where the mask is above the threshold, else 0 (float32): removes resize fringes."""
    return (mask > threshold).to(torch.float32)


def disk(radius: int) -> torch.Tensor:
    """Disk-shaped flat structuring element of the given radius, [2r+1, 2r+1] of 0/1."""
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float32)
    yy, xx = torch.meshgrid(offsets, offsets, indexing="ij")
    return ((yy * yy + xx * xx) <= radius * radius).to(torch.float32)


def grow(mask: torch.Tensor, pixels: int) -> torch.Tensor:
    """Dilate (pixels > 0) or erode (pixels < 0) with a disk, so loose or tight masks can be fixed."""
    if pixels == 0:
        return mask
    batch = _as_batch(mask)
    operation = dilation if pixels > 0 else erosion
    remaining = abs(int(pixels))
    while remaining > 0:
        step = min(remaining, _MAX_DISK_RADIUS)
        batch = operation(batch, disk(step).to(batch.device), engine="shift")  # "unfold" needs k*k copies
        remaining -= step
    return batch.reshape(mask.shape)


def feather(mask: torch.Tensor, pixels: int) -> torch.Tensor:
    """Soften the edge over about `pixels` on each side (Gaussian, sigma = pixels / 2)."""
    if pixels < 0:
        raise TLInputError(
            "feather", f"is {pixels}, below 0.", "use 0 (sharp edge) or a positive width in pixels."
        )
    if pixels == 0:
        return mask
    sigma = pixels / 2.0
    size = 2 * math.ceil(3.0 * sigma) + 1
    blurred = gaussian_blur2d(_as_batch(mask), (size, size), (sigma, sigma), border_type="replicate")
    return blurred.clamp(0.0, 1.0).reshape(mask.shape)


def check_mask_coverage(mask: torch.Tensor, names: Sequence[str], what: str, fix: str | None = None) -> None:
    """Refuse masks with no object or no background pixel: the attention loss needs both.

    `names` labels each mask of the [N,H,W] batch (file names) and `what` says which masks these
    are; the error names the mask as "{what} {name}". A pixel counts as object when above 0.5.
    """
    batch = _as_batch(mask)[:, 0]
    if len(names) != batch.shape[0]:
        raise ValueError(f"{len(names)} names for {batch.shape[0]} masks")
    inside = batch > 0.5
    for index, name in enumerate(names):
        if not bool(inside[index].any()):
            raise TLInputError(
                f"{what} {name}",
                "is empty (all black): it marks no object pixel.",
                fix or "redraw it with the object in white, or choose another mask index.",
            )
        if bool(inside[index].all()):
            raise TLInputError(
                f"{what} {name}",
                "is full (all white): it marks no background pixel.",
                fix or "redraw it with only the object in white, or choose another mask index.",
            )


def overlay(
    images: torch.Tensor,
    mask: torch.Tensor,
    color: tuple[float, float, float] | None = None,
    alpha: float = 0.75,
) -> torch.Tensor:
    """Tint the masked area and outline it, so a wrong mask is obvious at a glance on any object.

    With no `color`, each image's tint is the complement of the mean colour under its mask (see
    contrast_tint): a red ball turns cyan, a grey one a bright colour. The tint keeps the pixels'
    shading (a complement blended half-and-half would give grey). The outline is two rings, the
    inner one black or white against the tinted object, the outer one the other, so it reads on any
    object and any background, even when a given `color` matches the object.
    """
    if images.ndim != 4 or images.shape[-1] != 3:
        raise TLInputError(
            "images", f"have shape {tuple(images.shape)}, expected [N,H,W,3].", "pass an IMAGE batch."
        )
    weights = _as_batch(mask).to(images.device, torch.float32)
    if weights.shape[0] != images.shape[0] or weights.shape[-2:] != images.shape[1:3]:
        raise TLInputError(
            "mask",
            f"has shape {tuple(mask.shape)}, which does not match images {tuple(images.shape[:3])}.",
            "give one mask per image, at the image size.",
        )
    strength = (alpha * weights).permute(0, 2, 3, 1)  # [N,H,W,1]
    if color is None:
        tint = contrast_tint(images, weights)[:, None, None, :]  # [N,1,1,3]
    else:
        tint = torch.tensor(color, dtype=images.dtype, device=images.device).expand(images.shape[0], 1, 1, 3)
    shade = SHADE_FLOOR + (1.0 - SHADE_FLOOR) * images.amax(-1, keepdim=True)  # the pixel's HSV value, lifted
    tinted = images * (1.0 - strength) + tint * shade * strength
    inside = binarize(weights[:, 0], 0.5)
    width = max(1, round(min(images.shape[1:3]) / 256))  # 1 px per side at 256 px, 2 at 512
    inner, outer = _rings(inside, width)
    light = _mean_under(tinted, weights).matmul(LUMA.to(images)) < 0.5  # [N]: white rings on dark objects
    inner_color = light.to(images.dtype)[:, None, None, None].expand(-1, 1, 1, 3)
    out = torch.where(inner, inner_color, tinted)
    return torch.where(outer, 1.0 - inner_color, out).clamp(0.0, 1.0)


def contrast_tint(images: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """[N,3] per image: the complementary hue of the mean colour under the mask, saturated and bright.

    Grey, white and black objects have no hue to complement; they get a saturated bright colour,
    which stands out against them too.
    """
    mean = _mean_under(images, _as_batch(weights) if weights.ndim < 4 else weights)
    hsv = rgb_to_hsv(mean[:, :, None, None].float())
    hue = torch.remainder(hsv[:, 0] + math.pi, 2 * math.pi)
    complement = torch.stack([hue, torch.full_like(hue, TINT_SATURATION), torch.full_like(hue, TINT_VALUE)], 1)
    return hsv_to_rgb(complement)[:, :, 0, 0].to(images.dtype)


def _rings(inside: torch.Tensor, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[N,H,W] 0/1 -> ([N,H,W,1] bool just inside the edge, [N,H,W,1] bool just outside it), `width` px each.

    A square max-pool: a few ms at 512 px, where kornia's disk morphology takes hundreds.
    """
    batch = inside[:, None]
    size = 2 * width + 1
    grown = F.max_pool2d(batch, size, stride=1, padding=width)
    shrunk = -F.max_pool2d(-batch, size, stride=1, padding=width)
    return (batch > shrunk).permute(0, 2, 3, 1), (grown > batch).permute(0, 2, 3, 1)


def _mean_under(images: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """[N,3] mean colour of each image weighted by its mask [N,1,H,W]; the whole image where the mask is empty."""
    w = weights.permute(0, 2, 3, 1).to(images.dtype)  # [N,H,W,1]
    total = w.sum((1, 2))
    weighted = (images * w).sum((1, 2)) / total.clamp_min(1e-6)
    return torch.where(total > 0, weighted, images.mean((1, 2)))


def _as_batch(mask: torch.Tensor) -> torch.Tensor:
    """[H,W] or [N,H,W] -> [N,1,H,W] float, the layout kornia works on."""
    if mask.ndim == 2:
        return mask[None, None].to(torch.float32)
    if mask.ndim == 3:
        return mask[:, None].to(torch.float32)
    raise TLInputError(
        "mask", f"has shape {tuple(mask.shape)}, expected [N,H,W] or [H,W].", "pass a MASK batch."
    )
