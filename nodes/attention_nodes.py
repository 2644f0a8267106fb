"""Show Token Attention: sample with ComfyUI's KSampler machinery and map where each word looks.

Thin adapter: word lookup, recording, aggregation and colouring live in `textloc.attention.token_attention`.
"""

from __future__ import annotations

import comfy.model_management
import comfy.samplers
import torch
from comfy_api.latest import io, ui

import nodes as comfy_nodes

from ..textloc.attention.token_attention import NORMALIZATIONS, RESOLUTIONS_AUTO, show_token_attention
from ..textloc.data.images import check_image_batch
from .common import CATEGORY_ROOT

LATENT_CHANNELS = 4  # as EmptyLatentImage; KSampler's fix_empty_latent_channels adapts other models
LATENT_SCALE = 8


class ShowTokenAttention(io.ComfyNode):
    """Generate images and show each listed word's cross-attention map over them."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="TL_ShowTokenAttention",
            display_name="Show Token Attention",
            category=f"{CATEGORY_ROOT}/attention",
            description=(
                "Samples like KSampler (same seed: the same images, up to rounding) and records the cross-attention of the "
                "listed words, averaged over the sampling steps, as heatmaps over the images and as masks. "
                "Works with learned tokens (embedding:NAME). Only this node's own copy of the model is hooked: "
                "the MODEL input stays unchanged for other nodes. Connect photos to 'images' to see where the "
                "words look in your own pictures."
            ),
            is_output_node=True,
            inputs=[
                io.Model.Input("model", tooltip="The model to sample and inspect (e.g. from Apply TL Weights)."),
                io.Clip.Input("clip", tooltip="The text encoder; use Apply TL Weights' CLIP for learned tokens."),
                io.Vae.Input("vae", tooltip="Decodes the samples (and encodes connected images)."),
                io.String.Input("text", multiline=True, default="photo of a embedding:tl_ball ball",
                                tooltip="The positive prompt. The listed words must occur in it."),
                io.String.Input("negative", multiline=True, default="",
                                tooltip="The negative prompt. Its attention is never shown (only the conditional "
                                        "half of the CFG batch is recorded)."),
                io.String.Input("words", default="embedding:tl_ball, ball", tooltip=(
                    "Words to map, separated by commas: plain words or phrases ('tennis racket') and learned "
                    "tokens (embedding:tl_ball). A word the tokenizer splits into several tokens shows their mean; "
                    "a word that occurs twice shows both places.")),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=False,
                             tooltip=("Noise seed, as in KSampler. Kept fixed after each run (no randomize), so "
                                      "two of these nodes compare models on the same noise.")),
                io.Int.Input("steps", default=20, min=1, max=10000, tooltip="Sampling steps, as in KSampler."),
                io.Float.Input("cfg", default=7.0, min=0.0, max=100.0, step=0.1, round=0.01,
                               tooltip="Classifier-free guidance scale, as in KSampler."),
                io.Combo.Input("sampler_name", options=comfy.samplers.KSampler.SAMPLERS, default="euler",
                               tooltip="Sampler, as in KSampler."),
                io.Combo.Input("scheduler", options=comfy.samplers.KSampler.SCHEDULERS, default="normal",
                               tooltip="Noise schedule, as in KSampler."),
                io.Int.Input("width", default=512, min=64, max=8192, step=8,
                             tooltip="Image width in pixels (ignored when images are connected)."),
                io.Int.Input("height", default=512, min=64, max=8192, step=8,
                             tooltip="Image height in pixels (ignored when images are connected)."),
                io.Int.Input("batch_size", default=1, min=1, max=64,
                             tooltip="Images per run (ignored when images are connected)."),
                io.String.Input("resolutions", default=RESOLUTIONS_AUTO, tooltip=(
                    "Which attention layers to average, by map size. auto = every size but the finest, as the "
                    "trainer's attention loss (SD1.5 at 512 px: 32, 16, 8); all = every size; or sizes like "
                    "'16' or '32,16'.")),
                io.Float.Input("start_percent", default=0.0, min=0.0, max=1.0, step=0.01, tooltip=(
                    "Record from this point of the noise schedule (0 = first, noisiest step), like ComfyUI's "
                    "timestep ranges.")),
                io.Float.Input("end_percent", default=1.0, min=0.0, max=1.0, step=0.01, tooltip=(
                    "Record up to this point of the noise schedule (1 = last step). Late steps show fine "
                    "detail, early steps the layout.")),
                io.Combo.Input("normalization", options=list(NORMALIZATIONS), default="per word", tooltip=(
                    "per word: each map stretched to 0..1 (shows where each word looks). across words: one "
                    "scale per image (shows which word is strongest where). none: raw attention probabilities.")),
                io.Image.Input("images", optional=True, tooltip=(
                    "Optional photos to inspect instead of generating from noise: they are encoded, noised by "
                    "'denoise' and sampled back, and the maps show where each word looks in them.")),
                io.Float.Input("denoise", default=0.6, min=0.01, max=1.0, step=0.01, tooltip=(
                    "Only with images: how much noise is added to them (as KSampler's denoise). Lower keeps the "
                    "photos, higher lets the model redraw them.")),
            ],
            outputs=[
                io.Image.Output(display_name="images", tooltip="The sampled images."),
                io.Image.Output(display_name="heatmaps", tooltip=(
                    "Each word's map over each image: image 1's words in list order, then image 2's ...")),
                io.Mask.Output(display_name="maps", tooltip=(
                    "The normalised maps at image size, in the heatmaps' order; chain into mask nodes.")),
                io.String.Output(display_name="token_positions", tooltip=(
                    "Which prompt token positions each word was mapped to.")),
            ],
        )

    @classmethod
    def execute(cls, model, clip, vae, text: str, negative: str, words: str, seed: int, steps: int, cfg: float,
                sampler_name: str, scheduler: str, width: int, height: int, batch_size: int, resolutions: str,
                start_percent: float, end_percent: float, normalization: str,
                images: torch.Tensor | None = None, denoise: float = 0.6) -> io.NodeOutput:
        if images is not None:
            check_image_batch(images, "connect photos (IMAGE), or disconnect 'images' to sample new ones.")
            latent = {"samples": vae.encode(images[..., :3])}
        else:
            shape = [batch_size, LATENT_CHANNELS, height // LATENT_SCALE, width // LATENT_SCALE]
            latent = {"samples": torch.zeros(shape, device=comfy.model_management.intermediate_device())}
            denoise = 1.0

        def sample(hooked, positive, negative_cond, latent_in):
            return comfy_nodes.common_ksampler(hooked, seed, steps, cfg, sampler_name, scheduler, positive,
                                               negative_cond, latent_in, denoise=denoise)[0]

        result = show_token_attention(model, clip, vae, text, negative, words, latent, sample,
                                      resolutions=resolutions, start_percent=start_percent,
                                      end_percent=end_percent, normalization=normalization)
        heatmaps = result.overlays()
        positions = "; ".join(f"{w.word}: {', '.join(map(str, w.positions))}" for w in result.words)
        return io.NodeOutput(result.images, heatmaps, result.masks, positions,
                             ui=ui.PreviewImage(heatmaps, cls=cls))
