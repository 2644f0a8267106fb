"""Where the world model's own words attend on world scenes: the check that pretraining worked.

Each scene is noised at a few timesteps and denoised once with its caption; the colour and shape
word of each object are captured through the pack's attention path (textloc.attention.capture) and turned
into maps with the training loss's formula (textloc.training.losses.token_attention_map). The share of a map's
mass inside its object's mask is the pack's localisation measure; chance is the object's area share.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .scenes import Scene

MAP_SIZE = 32
TIMESTEPS = (250, 500, 750)


@dataclass(frozen=True)
class WordShares:
    """Mean share of attention inside the object, per word kind, and the chance level (mask area)."""

    color: float
    shape: float
    chance: float

    def ratio(self) -> float:
        return min(self.color, self.shape) / self.chance


def tokens_of(clip: Any, text: str) -> list[int]:
    return [t[0] for t in clip.tokenize(text)["l"][0]]


def word_slots(clip: Any, scene: Scene) -> list[tuple[int, int, str]]:
    """(token position, object index, 'color'|'shape') for each object's two words in the caption."""
    tokenizer = clip.tokenizer.clip_l.tokenizer
    tokens = tokens_of(clip, scene.caption())
    slots, start = [], 0
    for index, obj in enumerate(scene.objects):
        for kind, word in (("color", obj.color), ("shape", obj.shape)):
            word_id = tokenizer(word)["input_ids"][1]
            position = tokens.index(word_id, start)
            slots.append((position, index, kind))
            start = position + 1
    return slots


def unet_with_recorder(diffusion_model: torch.nn.Module, recorder: Any) -> dict:
    """transformer_options that route every attn2 layer of a bare UNet through the recorder."""
    from textloc.attention.capture import attn2_layer_keys

    return {"patches_replace": {"attn2": {key: recorder.patch(key) for key in attn2_layer_keys(diffusion_model)}}}


def noised_forward(base_model: Any, x0: torch.Tensor, cond: torch.Tensor, timesteps: torch.Tensor,
                   noise: torch.Tensor, transformer_options: dict) -> torch.Tensor:
    """Epsilon prediction of ComfyUI's BaseModel's UNet for x0 noised to integer timesteps."""
    sampling = base_model.model_sampling
    sigma = sampling.sigma(timesteps.float())
    noisy = x0 + noise * sigma.reshape(-1, 1, 1, 1)
    return base_model.diffusion_model(sampling.calculate_input(sigma, noisy), timesteps=sampling.timestep(sigma).float(),
                                      context=cond, transformer_options=transformer_options)


def encode_captions(clip: Any, captions: list[str]) -> torch.Tensor:
    """[N, 77, 768] conditioning of each caption, encoded in one batch."""
    chunks = [chunk for caption in captions for chunk in clip.tokenize(caption)["l"]]
    return clip.encode_from_tokens({"l": chunks}).reshape(len(captions), 77, -1).float()


def word_shares(model: Any, clip: Any, vae: Any, scenes: list[Scene], images: np.ndarray,
                masks: list[list[np.ndarray]], seed: int = 1234) -> WordShares:
    """Shares of the scenes' colour and shape words inside their objects (model, clip, vae: ComfyUI's)."""
    from textloc.attention.capture import AttentionRecorder, CaptureSpec
    from textloc.attention.localization import attention_mass_inside
    from textloc.training.losses import token_attention_map

    base = model.model
    slots = [word_slots(clip, s) for s in scenes]
    width = max(len(s) for s in slots)
    columns = torch.tensor([[p for p, _, _ in s] + [0] * (width - len(s)) for s in slots])
    recorder = AttentionRecorder(CaptureSpec(columns=columns, rows=lambda b, _: slice(0, b)))
    options = unet_with_recorder(base.diffusion_model, recorder)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        pixels = torch.from_numpy(images).float() / 255.0
        x0 = base.process_latent_in(vae.encode(pixels)).float()
        cond = encode_captions(clip, [s.caption() for s in scenes])
        total = None
        for t in TIMESTEPS:
            recorder.begin_step()
            noise = torch.randn(x0.shape, generator=generator)
            noised_forward(base, x0, cond, torch.full((len(scenes),), t), noise, options)
            records = recorder.records()
            maps = token_attention_map(records, sorted({r.height for r in records}), MAP_SIZE)
            total = maps if total is None else total + maps
    maps = total / len(TIMESTEPS)
    shares: dict[str, list[float]] = {"color": [], "shape": []}
    chance: list[float] = []
    for row, (scene_slots, scene_masks) in enumerate(zip(slots, masks, strict=True)):
        for column, (_, index, kind) in enumerate(scene_slots):
            mask = torch.from_numpy(scene_masks[index]).float()
            small = F.interpolate(mask[None, None], size=(MAP_SIZE, MAP_SIZE), mode="area")[0, 0]
            shares[kind].append(float(attention_mass_inside(maps[row, column], small)))
            chance.append(float(small.mean()))
    return WordShares(color=float(np.mean(shares["color"])), shape=float(np.mean(shares["shape"])),
                      chance=float(np.mean(chance)))
