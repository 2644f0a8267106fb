"""Masks from word attention: segment each photo's objects by where their class words look.

For photos that have no masks yet. Each photo is encoded, noised to a few timesteps with fixed seeded
noise and denoised once per timestep with a caption that names the objects ("a photo of a ball and a
box"). The words' cross-attention is captured by the pack's one capture path (textloc.attention.capture,
through the AttentionAccumulator of Show Token Attention, on a clone of the model) and averaged over
heads, layers, every attention resolution and the timesteps, then min-max normalised per map: the
soft maps. Each map is thresholded (Otsu, or a fixed value), a pixel two words claim goes to the
stronger map, and the masks are cleaned (opening/closing, holes filled, the largest component kept,
grown or shrunk, feathered).

Only as good as the model's knowledge of the words: the model must know the class words, and small
or touching objects come out poorly. The masks are a starting point to check, not ground truth.

Output order: word 1's mask for every photo, then word 2's ..., the order of Load Multi-Concept
Dataset's `masks` (mask_1 of every photo, then mask_2), so Mask Target's `mask_index` picks the word.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import kornia.contrib
import torch
import torch.nn.functional as F

from .. import host
from ..attention.token_attention import (
    AttentionAccumulator,
    WordTokens,
    column_maps,
    encode_prompt,
    locate_words,
    normalize_maps,
    parse_words,
    word_maps,
)
from ..errors import TLInputError
from .images import check_image_batch
from .masks import feather, grow
from .masks import overlay as tint_overlay

WORDS_PLACEHOLDER = "{words}"
DEFAULT_TEMPLATE = "a photo of a {words}"
WORD_JOINER = " and a "
DEFAULT_TIMESTEPS = "250, 500"
LAST_TIMESTEP = 999  # discrete DDPM schedules count timesteps 0..999; ComfyUI's percent_to_sigma does too
OTSU_BINS = 256
# Distinct tints for the preview, one per word (cycled after six).
WORD_COLORS: tuple[tuple[float, float, float], ...] = (
    (1.0, 0.2, 0.2), (0.2, 0.6, 1.0), (0.2, 0.9, 0.3), (1.0, 0.8, 0.1), (0.8, 0.3, 1.0), (0.1, 0.9, 0.9),
)

StepFn = Callable[[Any, list, list, torch.Tensor, torch.Tensor, float], Any]
"""(hooked model, positive, negative, latent [1,C,h,w], noise [1,C,h,w], sigma) -> anything: one model call."""


# ---------------------------------------------------------------------------------------------- options


def parse_timesteps(text: str) -> list[int]:
    """'250, 500' -> [250, 500]: integer DDPM timesteps, 1..999 (higher = noisier)."""
    fix = "write integer timesteps from 1 to 999 separated by commas, e.g. '250, 500'."
    parts = [p.strip() for p in str(text).split(",") if p.strip()]
    try:
        steps = [int(p) for p in parts]
    except ValueError:
        raise TLInputError("timesteps", f"'{text}' is not a list of whole numbers.", fix) from None
    if not steps:
        raise TLInputError("timesteps", "is empty.", fix)
    if any(not 1 <= t <= LAST_TIMESTEP for t in steps):
        raise TLInputError("timesteps", f"'{text}' has a timestep outside 1..{LAST_TIMESTEP}.", fix)
    return sorted(set(steps))


def build_caption(template: str, words: Sequence[str]) -> str:
    """'a photo of a {words}' with ['ball', 'box'] -> 'a photo of a ball and a box'.

    A template without {words} is used as written (a full caption); the words must then occur in it.
    """
    text = str(template).strip()
    if not text:
        raise TLInputError("prompt", "is empty.", f"use '{DEFAULT_TEMPLATE}' or a caption that names every word.")
    if WORDS_PLACEHOLDER in text:
        return text.replace(WORDS_PLACEHOLDER, WORD_JOINER.join(words))
    return text


def check_threshold(threshold: float) -> None:
    if not 0.0 <= float(threshold) <= 1.0:
        raise TLInputError("threshold", f"is {threshold}, outside 0..1.",
                           "use 0 for Otsu's automatic threshold per map, or a value such as 0.5.")


def check_images(images: torch.Tensor) -> None:
    check_image_batch(images, "connect the photos, e.g. Load Multi-Concept Dataset's images or a Load Image node.")


# ---------------------------------------------------------------------------------------------- thresholds


def otsu_threshold(maps: torch.Tensor, bins: int = OTSU_BINS) -> torch.Tensor:
    """Otsu's threshold of each [..., H, W] map with values in 0..1: the cut that maximises the variance
    between the two classes of the map's histogram. Returns [...]; pixels above it are the object."""
    flat = maps.flatten(-2).float().clamp(0.0, 1.0)
    index = (flat * (bins - 1)).round().long()
    hist = torch.zeros(*flat.shape[:-1], bins, device=maps.device).scatter_add_(-1, index, torch.ones_like(flat))
    prob = hist / hist.sum(-1, keepdim=True)
    centers = torch.linspace(0.0, 1.0, bins, device=maps.device)
    weight = prob.cumsum(-1)  # share of pixels at or below each bin
    mean = (prob * centers).cumsum(-1)
    between = (mean[..., -1:] * weight - mean).square() / (weight * (1.0 - weight)).clamp_min(1e-12)
    return (between.argmax(-1).float() + 0.5) / (bins - 1)  # the upper edge of the last background bin


def threshold_maps(soft: torch.Tensor, threshold: float) -> torch.Tensor:
    """[..., H, W] soft maps -> bool masks: Otsu per map for threshold 0, else soft > threshold."""
    check_threshold(threshold)
    cut = otsu_threshold(soft) if threshold == 0 else torch.full(soft.shape[:-2], float(threshold))
    return soft > cut.to(soft.device)[..., None, None]


def exclusive(masks: torch.Tensor, soft: torch.Tensor) -> torch.Tensor:
    """[N, W, H, W] bool masks: a pixel claimed by several words keeps only the word with the highest
    soft value (the first listed on a tie); pixels claimed by one word stay as they are."""
    score = torch.where(masks, soft, torch.full_like(soft, -1.0))
    winner = score.argmax(dim=1, keepdim=True)
    words = torch.arange(masks.shape[1], device=masks.device).view(1, -1, 1, 1)
    return masks & (words == winner)


# ---------------------------------------------------------------------------------------------- components


def _labels_by_pooling(binary: torch.Tensor) -> torch.Tensor:
    """Exact 8-connected labels for kornia without connected_components_union_find: the largest
    raster index spreads through each component by 3x3 max pooling until nothing changes (kornia's
    connected_components runs a fixed count of the same steps, which can leave a long object split)."""
    count, height, width = binary.shape
    inside = binary[:, None].float()
    labels = torch.arange(1, height * width + 1, dtype=torch.float32, device=binary.device)
    labels = labels.view(1, 1, height, width) * inside  # float32 holds every index exactly up to 2**24 pixels
    while True:
        spread = F.max_pool2d(labels, 3, stride=1, padding=1) * inside
        if torch.equal(spread, labels):
            break
        labels = spread
    offsets = torch.arange(count, device=binary.device).view(-1, 1, 1) * (height * width)
    return torch.where(binary, labels[:, 0].long() + offsets, torch.zeros_like(offsets))


def label_components(binary: torch.Tensor) -> torch.Tensor:
    """[B, H, W] bool -> int64 labels of the 8-connected components, 0 = background, distinct across B."""
    union_find = getattr(kornia.contrib, "connected_components_union_find", None)  # kornia >= 0.9: exact
    if union_find is not None:
        return union_find(binary[:, None].float())[:, 0]
    return _labels_by_pooling(binary)


def fill_holes(binary: torch.Tensor) -> torch.Tensor:
    """[B, H, W] bool: background pieces that do not reach the image border become object."""
    background = ~binary
    labels = label_components(background)
    border = torch.cat([labels[:, 0], labels[:, -1], labels[:, :, 0], labels[:, :, -1]], dim=1)
    outside = torch.isin(labels, border[border > 0])
    return binary | (background & ~outside)


def keep_largest(binary: torch.Tensor) -> torch.Tensor:
    """[B, H, W] bool: only the largest 8-connected component of each mask (the first found on a tie)."""
    labels = label_components(binary)
    sizes = torch.bincount(labels.flatten())[labels]  # each pixel's component size
    sizes = torch.where(binary, sizes, torch.zeros_like(sizes))
    biggest = sizes.flatten(1).argmax(dim=1)
    keep = labels.flatten(1).gather(1, biggest[:, None]).view(-1, 1, 1)
    return binary & (labels == keep)


# ---------------------------------------------------------------------------------------------- masks


def cleanup_radius(height: int, width: int) -> int:
    """Opening/closing radius: about one cell of a 64x64 attention map (1 px at 64 px, 8 px at 512 px)."""
    return max(1, round(min(height, width) / 64))


def masks_from_maps(
    soft: torch.Tensor,
    threshold: float = 0.0,
    fill: bool = True,
    largest: bool = True,
    grow_pixels: int = 0,
    feather_pixels: int = 0,
) -> torch.Tensor:
    """Soft maps [N, W, H, W] in 0..1 -> masks [N, W, H, W] float32 that never overlap (before feathering).

    Threshold, stronger word wins, opening then closing (specks off, gaps bridged), holes filled,
    largest component kept, grow/shrink, stronger word wins again (filling and growing can reach into
    another word's object), feather.
    """
    count, words, height, width = soft.shape
    masks = exclusive(threshold_maps(soft, threshold), soft)
    flat = masks.reshape(-1, height, width).float()
    radius = cleanup_radius(height, width)
    flat = grow(grow(flat, -radius), radius)  # opening
    flat = grow(grow(flat, radius), -radius)  # closing
    binary = flat > 0.5
    if fill:
        binary = fill_holes(binary)
    if largest:
        binary = keep_largest(binary)
    binary = grow(binary.float(), grow_pixels) > 0.5
    masks = exclusive(binary.view(count, words, height, width), soft)
    return feather(masks.float().reshape(-1, height, width), feather_pixels).view(count, words, height, width)


def word_major(maps: torch.Tensor) -> torch.Tensor:
    """[N photos, W words, H, W] -> MASK [W*N, H, W]: word 1 for every photo, then word 2 ..."""
    return maps.transpose(0, 1).reshape(-1, *maps.shape[-2:]).contiguous()


def preview(images: torch.Tensor, masks: torch.Tensor, alpha: float = 0.45) -> torch.Tensor:
    """IMAGE [N, H, W, 3]: each word's mask tinted and outlined in its own colour over the photo."""
    out = images[..., :3].float()
    for word in range(masks.shape[1]):
        out = tint_overlay(out, masks[:, word].to(out.device), WORD_COLORS[word % len(WORD_COLORS)], alpha)
    return out


# ---------------------------------------------------------------------------------------------- attention


def word_attention_maps(
    model: Any,
    clip: Any,
    vae: Any,
    images: torch.Tensor,
    caption: str,
    words: Sequence[str],
    timesteps: Sequence[int],
    seed: int = 0,
    step: StepFn = host.denoise_once,
) -> tuple[torch.Tensor, list[WordTokens]]:
    """Soft maps [N, W, H, W] (min-max per map) of each word over each photo, and the words' positions.

    One photo at a time (memory stays that of a batch of one); photo i's noise is drawn from seed + i,
    so a photo keeps its maps when others are added. The model is never changed: the recorder
    sits on a clone.
    """
    check_images(images)
    located = locate_words(clip, caption, list(words))
    columns = sorted({p for w in located for p in w.positions})
    positive, negative = encode_prompt(clip, caption), encode_prompt(clip, "")
    latents = vae.encode(images[..., :3])
    sampling = model.get_model_object("model_sampling")
    sigmas = [float(sampling.percent_to_sigma(1.0 - t / LAST_TIMESTEP)) for t in timesteps]
    accumulator = AttentionAccumulator(columns)
    hooked = model.clone()
    accumulator.install(hooked)
    size = (int(images.shape[1]), int(images.shape[2]))  # the VAE may crop to its scale; maps span the photo
    progress = host.progress_bar(len(images))
    per_photo = []
    for index in range(len(images)):
        host.check_interrupted()
        accumulator.reset()
        generator = torch.Generator().manual_seed((int(seed) + index) % 2**64)
        noise = torch.randn((len(sigmas), 1, *latents.shape[1:]), generator=generator)
        for j, sigma in enumerate(sigmas):
            step(hooked, positive, negative, latents[index : index + 1], noise[j], sigma)
        progress.update(1)
        records = accumulator.layer_means()
        if not records:
            raise RuntimeError("no cross-attention was recorded: another node may bypass the model's attn2 layers")
        resolutions = sorted({r.height for r in records}, reverse=True)
        per_photo.append(word_maps(column_maps(records, resolutions, size), columns, located))
    return normalize_maps(torch.cat(per_photo), "per word"), located


@dataclass
class AutoMasks:
    """The node's results; `masks` and `soft` are [N, W, H, W] (photo, word)."""

    caption: str
    words: list[WordTokens]
    soft: torch.Tensor
    masks: torch.Tensor
    preview: torch.Tensor

    @property
    def mask_batch(self) -> torch.Tensor:
        """MASK [W*N, H, W], word-major: Mask Target's mask_index k picks word k."""
        return word_major(self.masks)

    @property
    def soft_batch(self) -> torch.Tensor:
        return word_major(self.soft)


def masks_from_word_attention(
    model: Any,
    clip: Any,
    vae: Any,
    images: torch.Tensor,
    words: str,
    template: str = DEFAULT_TEMPLATE,
    timesteps: str = DEFAULT_TIMESTEPS,
    seed: int = 0,
    threshold: float = 0.0,
    fill: bool = True,
    largest: bool = True,
    grow_pixels: int = 0,
    feather_pixels: int = 0,
    step: StepFn = host.denoise_once,
) -> AutoMasks:
    """Masks of the listed words' objects on every photo; see the module docstring."""
    check_images(images)
    word_list = parse_words(words)
    steps = parse_timesteps(timesteps)
    check_threshold(threshold)
    if feather_pixels < 0:
        raise TLInputError("feather", f"is {feather_pixels}, below 0.", "use 0 (sharp edge) or a positive width.")
    caption = build_caption(template, word_list)
    soft, located = word_attention_maps(model, clip, vae, images, caption, word_list, steps, seed, step)
    masks = masks_from_maps(soft, threshold, fill, largest, grow_pixels, feather_pixels)
    return AutoMasks(caption=caption, words=located, soft=soft, masks=masks,
                     preview=preview(images.cpu(), masks))
