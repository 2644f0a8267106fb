"""How well a token's attention map sits on its object: the measures used by tests, benchmarks and nodes.

- mass inside: the share of the map's total attention that falls inside the mask (1 = all of it);
- IoU: overlap of the min-max normalised map, thresholded, with the binary mask.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .heatmap import normalize


def _match(maps: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Masks resized (area) to the maps' size; both [..., H, W]."""
    if masks.shape[-2:] == maps.shape[-2:]:
        return masks.float()
    lead = masks.shape[:-2]
    flat = masks.reshape(-1, 1, *masks.shape[-2:]).float()
    return F.interpolate(flat, size=maps.shape[-2:], mode="area").reshape(*lead, *maps.shape[-2:])


def attention_mass_inside(maps: torch.Tensor, masks: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Per map: sum(map * mask) / sum(map). maps are non-negative attention ([..., H, W])."""
    masks = _match(maps, masks)
    maps = maps.float().clamp_min(0)
    return (maps * masks).sum((-2, -1)) / (maps.sum((-2, -1)) + eps)


def attention_iou(maps: torch.Tensor, masks: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """Per map: IoU of normalize(map) > threshold with mask > 0.5."""
    masks = _match(maps, masks) > 0.5
    hot = normalize(maps.float()) > threshold
    inter = (hot & masks).sum((-2, -1)).float()
    union = (hot | masks).sum((-2, -1)).float()
    return inter / union.clamp_min(1)
