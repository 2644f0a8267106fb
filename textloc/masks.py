"""Mask clean-up and checks: threshold, grow/shrink, feather, coverage, preview overlay.

Masks are [N,H,W] (or [H,W]) float32 tensors in 0..1, white = object, as ComfyUI's MASK type.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from kornia.filters import gaussian_blur2d
from kornia.morphology import dilation, erosion, gradient

from .errors import TLInputError

# Large disks are applied as several small ones (the Minkowski sum of disks is close to a disk,
# within a few % of its area): the cost grows with radius x step instead of radius squared.
_MAX_DISK_RADIUS = 8


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
    color: tuple[float, float, float] = (1.0, 0.2, 0.2),
    alpha: float = 0.5,
) -> torch.Tensor:
    """Tint the masked area and draw its outline, so a wrong mask is obvious at a glance."""
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
    tint = torch.tensor(color, dtype=images.dtype, device=images.device)
    strength = (alpha * weights).permute(0, 2, 3, 1)  # [N,H,W,1]
    tinted = images * (1.0 - strength) + tint * strength
    edge = gradient(binarize(weights, 0.5), torch.ones(3, 3, device=images.device))
    edge = edge.permute(0, 2, 3, 1) > 0
    return torch.where(edge, tint.expand_as(tinted), tinted).clamp(0.0, 1.0)


def _as_batch(mask: torch.Tensor) -> torch.Tensor:
    """[H,W] or [N,H,W] -> [N,1,H,W] float, the layout kornia works on."""
    if mask.ndim == 2:
        return mask[None, None].to(torch.float32)
    if mask.ndim == 3:
        return mask[:, None].to(torch.float32)
    raise TLInputError(
        "mask", f"has shape {tuple(mask.shape)}, expected [N,H,W] or [H,W].", "pass a MASK batch."
    )
