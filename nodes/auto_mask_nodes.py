"""Masks from Word Attention: masks for photos that have none, from where the class words look.

Thin adapter: captioning, recording, thresholding and clean-up live in `textloc.data.auto_masks`.
"""

from __future__ import annotations

import torch
from comfy_api.latest import io, ui

from ..textloc.data.auto_masks import DEFAULT_TEMPLATE, DEFAULT_TIMESTEPS, masks_from_word_attention
from .common import CATEGORY_ROOT


class MasksFromWordAttention(io.ComfyNode):
    """Segment each listed object on every photo by its class word's cross-attention."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="TL_MasksFromWordAttention",
            display_name="Masks from Word Attention",
            category=f"{CATEGORY_ROOT}/dataset",
            description=(
                "Makes a mask per listed word on every photo from the model's own cross-attention: each photo "
                "is noised a little, denoised once per timestep with a caption naming the words, and each "
                "word's attention map is thresholded and cleaned. Only as good as the model's knowledge of "
                "the words; check the preview, and fix bad masks in the mask editor. Connect masks to Mask "
                "Target's mask input: its mask_index picks the word (1 = first word)."
            ),
            is_output_node=True,
            inputs=[
                io.Image.Input("images", tooltip=(
                    "The photos, e.g. Load Multi-Concept Dataset's images (then the masks are at the dataset's "
                    "size).")),
                io.Model.Input("model", tooltip="The base model whose attention draws the masks (never changed)."),
                io.Clip.Input("clip", tooltip="The text encoder that encodes the caption."),
                io.Vae.Input("vae", tooltip="Encodes the photos."),
                io.String.Input("words", default="ball, box", tooltip=(
                    "The objects' class words, separated by commas, in the order of your Mask Targets "
                    "(mask_index 1 = the first word). Use words the model knows; a phrase ('teddy bear') "
                    "or a word split into several tokens uses their mean.")),
                io.String.Input("prompt", default=DEFAULT_TEMPLATE, tooltip=(
                    "The caption; {words} becomes the words joined with ' and a ' ('a photo of a ball and a "
                    "box'). Without {words} it is used as written and must contain every word.")),
                io.String.Input("timesteps", default=DEFAULT_TIMESTEPS, tooltip=(
                    "Noise levels as DDPM timesteps 1..999 (higher = noisier), separated by commas; the maps "
                    "are averaged over them. Low keeps the photo, high shows the layout the model expects.")),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=False,
                             tooltip="Seed of the noise added to the photos (fixed, so reruns give the same masks)."),
                io.Float.Input("threshold", default=0.0, min=0.0, max=1.0, step=0.01, tooltip=(
                    "0 = Otsu's automatic threshold per map; otherwise map values above this (0..1, each map "
                    "stretched to 0..1) count as the object. Raise it for tighter masks.")),
                io.Boolean.Input("fill_holes", default=True, tooltip="Fill holes inside each mask."),
                io.Boolean.Input("keep_largest", default=True, tooltip=(
                    "Keep only the largest piece of each mask (one object per word and photo). Turn off when "
                    "a word names several objects in a photo.")),
                io.Int.Input("grow", default=0, min=-64, max=64, tooltip=(
                    "Pixels to grow (positive) or shrink (negative) each mask; masks still never overlap.")),
                io.Int.Input("feather", default=0, min=0, max=64, tooltip="Pixels of soft edge (Gaussian blur)."),
            ],
            outputs=[
                io.Mask.Output(display_name="masks", tooltip=(
                    "All masks, word 1 for every photo, then word 2 ... (the order of Load Multi-Concept "
                    "Dataset's masks). Connect to Mask Target's mask; its mask_index picks the word.")),
                io.Mask.Output(display_name="soft_maps", tooltip=(
                    "The attention maps before thresholding (0..1, each map stretched), in the same order.")),
                io.Image.Output(display_name="preview", tooltip=(
                    "Each photo with every word's mask tinted in its own colour (red, blue, green, ...).")),
            ],
        )

    @classmethod
    def execute(cls, images: torch.Tensor, model, clip, vae, words: str, prompt: str, timesteps: str, seed: int,
                threshold: float, fill_holes: bool, keep_largest: bool, grow: int, feather: int) -> io.NodeOutput:
        result = masks_from_word_attention(model, clip, vae, images, words, template=prompt, timesteps=timesteps,
                                           seed=seed, threshold=threshold, fill=fill_holes, largest=keep_largest,
                                           grow_pixels=grow, feather_pixels=feather)
        return io.NodeOutput(result.mask_batch, result.soft_batch, result.preview,
                             ui=ui.PreviewImage(result.preview, cls=cls))
