"""Turn attention maps into pictures: colour ramp and overlays on photos."""

from __future__ import annotations

import torch
import torch.nn.functional as F

# A perceptually ordered dark-to-bright ramp (close to matplotlib's "inferno").
RAMP = torch.tensor([
    [0.001, 0.000, 0.014],
    [0.258, 0.039, 0.406],
    [0.578, 0.148, 0.404],
    [0.865, 0.317, 0.226],
    [0.988, 0.645, 0.040],
    [0.988, 1.000, 0.644],
])


def normalize(maps: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Min-max each map ([..., H, W]) to 0..1; a constant map becomes 0."""
    flat = maps.flatten(-2)
    low = flat.min(-1, keepdim=True).values
    high = flat.max(-1, keepdim=True).values
    return ((flat - low) / (high - low + eps)).view_as(maps)


def colorize(maps: torch.Tensor) -> torch.Tensor:
    """[..., H, W] values in 0..1 -> [..., H, W, 3] RGB through the colour ramp."""
    values = maps.clamp(0, 1) * (len(RAMP) - 1)
    low = values.floor().long().clamp(max=len(RAMP) - 2)
    frac = (values - low).unsqueeze(-1)
    ramp = RAMP.to(maps.device)
    return ramp[low] * (1 - frac) + ramp[low + 1] * frac


def resize_maps(maps: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Bilinear resize of [N, H, W] maps."""
    return F.interpolate(maps.unsqueeze(1).float(), size=(height, width), mode="bilinear",
                         align_corners=False).squeeze(1)


def overlay(images: torch.Tensor, maps: torch.Tensor, alpha: float = 0.55) -> torch.Tensor:
    """Heatmaps ([N, h, w], 0..1) blended over images ([N, H, W, 3]) as a ComfyUI IMAGE."""
    _, height, width, _ = images.shape
    heat = colorize(resize_maps(maps, height, width)).to(images)
    return (images * (1 - alpha) + heat * alpha).clamp(0, 1)
