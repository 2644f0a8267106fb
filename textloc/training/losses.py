"""The method's losses, as in the authors' released code (method notes §2).

Two deliberate deviations: min-max normalisation of predicted maps has an epsilon (a constant map
would give NaN), and the identifier token positions are computed by the caller, not hard-coded.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Literal, Protocol

import torch
import torch.nn.functional as F

from ..config import DENOISE_REGIONS

AttentionMode = Literal["hard", "soft", "none"]
MINMAX_EPS = 1e-8


class MapRecord(Protocol):
    """What the losses need from a captured map (textloc.attention.capture.AttentionRecord fits)."""

    height: int
    maps: torch.Tensor


def default_resolutions(available: Iterable[int]) -> list[int]:
    """Every captured map size but the finest, largest first (SD1.5 at 512 px: 64,32,16,8 -> 32,16,8).

    The authors drop the 64x64 maps; a model with a single attention level keeps it.
    """
    sizes = sorted(set(available), reverse=True)
    return sizes if len(sizes) <= 1 else sizes[1:]


def minmax_per_map(maps: torch.Tensor) -> torch.Tensor:
    """Scale each [..., H, W] map to [0, 1] on its own."""
    low = maps.amin(dim=(-2, -1), keepdim=True)
    high = maps.amax(dim=(-2, -1), keepdim=True)
    return (maps - low) / (high - low + MINMAX_EPS)


def token_attention_map(
    records: Sequence[MapRecord], resolutions: Sequence[int], out_size: int
) -> torch.Tensor:
    """The predicted map Â: [R, C, out, out].

    Per resolution: mean over its layers (heads are already averaged), bilinear upsample,
    min-max each map; then a plain mean over the resolutions, not renormalised.
    """
    per_resolution = []
    for size in resolutions:
        maps = [r.maps for r in records if r.height == size]
        if not maps:
            found = sorted({r.height for r in records}, reverse=True)
            raise ValueError(f"no attention maps recorded at resolution {size}; recorded: {found}")
        mean = torch.stack(maps).mean(dim=0)
        up = F.interpolate(mean, size=(out_size, out_size), mode="bilinear", align_corners=False)
        per_resolution.append(minmax_per_map(up))
    if not per_resolution:
        raise ValueError("token_attention_map needs at least one resolution")
    return torch.stack(per_resolution).mean(dim=0)


def prepare_target_mask(masks: torch.Tensor, out_size: int) -> torch.Tensor:
    """Masks [R, H, W] -> targets [R, out, out], as the authors prepare them.

    Antialiased bilinear resize (like PIL's), then one min-max over the whole batch tensor.
    Edge pixels stay fractional: the masks are not re-binarised. A constant batch (nothing to
    normalise) is only clamped to [0, 1].
    """
    resized = F.interpolate(
        masks[:, None].float(),
        size=(out_size, out_size),
        mode="bilinear",
        align_corners=False,
        antialias=True,
    )[:, 0]
    low, high = resized.min(), resized.max()
    if high > low:
        return (resized - low) / (high - low)
    return resized.clamp(0.0, 1.0)


def hard_attention_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Hard guidance: MSE between the map and the whole mask."""
    return F.mse_loss(pred, target)


def soft_attention_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Soft guidance: only attention where the target is exactly 0 is penalised.

    The mean runs over ALL pixels (the authors' divisor), not just the background ones.
    """
    return ((target == 0).to(pred.dtype) * pred.square()).mean()


def attention_loss(pred: torch.Tensor, target: torch.Tensor, mode: AttentionMode) -> torch.Tensor:
    """One concept's attention loss in the chosen guidance mode ("none" gives 0)."""
    if mode == "hard":
        return hard_attention_loss(pred, target)
    if mode == "soft":
        return soft_attention_loss(pred, target)
    if mode == "none":
        return pred.new_zeros(())
    raise ValueError(f"unknown attention guidance mode {mode!r}; use 'hard', 'soft' or 'none'")


def concepts_attention_loss(pred: torch.Tensor, targets: torch.Tensor, mode: AttentionMode) -> torch.Tensor:
    """Several concepts: the mean of the per-concept losses. pred, targets: [R, C, H, W], concept c in column c.

    Each concept's targets must have been prepared separately (prepare_target_mask normalises per batch).
    """
    if pred.shape != targets.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and targets {tuple(targets.shape)} differ in shape")
    losses = [attention_loss(pred[:, c], targets[:, c], mode) for c in range(pred.shape[1])]
    return torch.stack(losses).mean()


# The authors' valid region leaves out 1 latent pixel on each side of SD1.5's 64x64 latents (512 px).
# The frame scales with the latent side: 1 px at 64 (and up to 127), 2 px at 128 (SDXL at 1024 px),
# none below 64, where a fixed 1 px frame would cover much of a small latent (44 % of 8x8) that is
# then never trained toward the photos.
BORDER_PER_SIDE = 64


def valid_border(height: int, width: int) -> int:
    """Pixels left out on each side of a latent: 1/64 of its shorter side, rounded down."""
    return min(height, width) // BORDER_PER_SIDE


def border_mask(height: int, width: int, border: int, device: torch.device | None = None) -> torch.Tensor:
    """1 inside, 0 on a `border`-pixel frame: Custom Diffusion's valid region with --noaug."""
    if 2 * border >= min(height, width):
        raise ValueError(f"border {border} leaves no interior in a {height}x{width} latent")
    mask = torch.zeros(height, width, device=device)
    mask[border : height - border, border : width - border] = 1.0
    return mask


def instance_denoise_loss(pred: torch.Tensor, target: torch.Tensor, border: int | None = None,
                          weights: torch.Tensor | None = None) -> torch.Tensor:
    """Masked MSE of the instance samples [B, C, H, W], exactly as Custom Diffusion computes it.

    Per sample: sum over c,h,w of m*(pred-target)^2 divided by sum over h,w of m. The numerator
    counts every channel and the denominator does not, so this is C x (4 x for SD latents) the
    element MSE over the interior. Kept on purpose: it sets the balance against the prior and
    attention losses that the published hyperparameters were tuned with. `border` None scales the
    left-out frame with the latent (`valid_border`). `weights` [B, 1, H, W] (from `denoise_weights`)
    multiply the valid region per sample, for the masked loss; the formula stays the same.
    """
    height, width = pred.shape[-2], pred.shape[-1]
    border = valid_border(height, width) if border is None else border
    mask = border_mask(height, width, border, pred.device).expand(pred.shape[0], 1, height, width)
    if weights is not None:
        mask = mask * weights.to(mask)
    squared = (pred.float() - target.float()).square() * mask
    per_sample = squared.sum(dim=(1, 2, 3)) / mask.sum(dim=(1, 2, 3)).clamp_min(MINMAX_EPS)
    return per_sample.mean()


def denoise_weights(concept_masks: torch.Tensor, object_masks: torch.Tensor, region: str,
                    latent_size: tuple[int, int]) -> torch.Tensor:
    """Per-photo weights [N, 1, h, w] of the instance loss on the latent grid.

    concept_masks [N, C, H, W]: the masks of the concepts being learned; object_masks [N, K, H, W]:
    every masked object of the photos (the dataset's mask folders; may be K = 0).
    - "whole photo": 1 everywhere (the paper's loss: the model redraws the whole photo, other objects
      included, so the shared words and K/V directions can learn them);
    - "concepts and background": 0 on every latent pixel that a masked object which is no concept
      touches, 1 elsewhere: the other objects are never asked for, the floor still is;
    - "concepts only": the share of each latent pixel that the concepts cover (Break-A-Scene's masked
      diffusion loss): neither the background nor other objects are asked for.
    """
    if region not in DENOISE_REGIONS:
        raise ValueError(f"unknown denoise region {region!r}; use one of {', '.join(DENOISE_REGIONS)}")
    count = concept_masks.shape[0]
    if region == "whole photo":
        return torch.ones(count, 1, *latent_size, device=concept_masks.device)
    concepts = concept_masks.float().amax(dim=1, keepdim=True)
    if region == "concepts only":
        return F.interpolate(concepts, size=latent_size, mode="area")
    if object_masks.shape[1] == 0:
        return torch.ones(count, 1, *latent_size, device=concept_masks.device)
    objects = object_masks.float().amax(dim=1, keepdim=True)
    others = ((objects > 0.5) & (concepts < 0.5)).float()  # a concept's own mask folder is no other object
    return 1.0 - F.adaptive_max_pool2d(others, latent_size)


def prior_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Class-prior preservation: plain MSE over every element of the class samples."""
    return F.mse_loss(pred.float(), target.float())
