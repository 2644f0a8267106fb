"""Tiny random-weight SD2.x (eps and v-prediction) and SDXL checkpoints, built like the SD1.5 one.

ComfyUI picks a checkpoint's family from the UNet's key names and shapes alone
(comfy/model_detection.py, comfy/supported_models.py in 0.3.75), so each UNet keeps the fields its
family fixes and shrinks the rest:
- SD2.x (`SD20`): 320 base channels, 1024 context, linear `proj_in`, no `label_emb`. ComfyUI reads
  v-prediction from a heuristic only: the std of `output_blocks.11.1.transformer_blocks.0.norm1.bias`
  above 0.09 means v, so both SD2 UNets have 12 output blocks and a transformer in the last one, whose
  norm1 bias is 0 (eps) or N(0, 0.2) (v).
- SDXL (`SDXL`): 320 base channels, 2048 context, linear `proj_in`, `label_emb` of 2816 inputs and the
  input transformer depths [0, 0, 2, 2, 10, 10] exactly (smaller lists are SSD-1B, Vega or KOALA).
  Three levels of two res blocks carry those depths (the ten-deep ones at the coarsest level, as in SDXL);
  the output and middle blocks keep one transformer here and there.
The text encoders cannot shrink: ComfyUI builds them from fixed configs and leaves weights missing from
a file uninitialised, so SD2 carries the full OpenCLIP-H and SDXL the full CLIP-L + OpenCLIP-bigG, stored
as fp8 (upcast on load) and written in the checkpoint's own layout by ComfyUI's own save converters
(`process_clip_state_dict_for_saving`). TAESD stands in for the KL-VAE, with the family's latent scale.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .comfy_boot import boot_comfy
from .paths import CACHE_DIR
from .tiny_model import (
    CLIP_STORE_DTYPE,
    TAESD_SCALARS,
    UNET_PREFIX,
    UNET_STORE_DTYPE,
    VAE_PREFIX,
    _init_tensor,
    ensure_tiny_checkpoint,
    is_current,
    save_file_atomic,
)

MODELS_DIR = CACHE_DIR / "models"
DEFAULT_SEED = 0
V_PRED_BIAS_KEY = "output_blocks.11.1.transformer_blocks.0.norm1.bias"
V_PRED_BIAS_STD = 0.2  # ComfyUI's threshold is 0.09
V_PRED_BIAS_SEED = 1  # its own generator: the eps and v files then share every other weight
SD2_CONTEXT = 1024
SDXL_CONTEXT = 2048
SDXL_ADM_CHANNELS = 2816  # pooled CLIP-G (1280) + 6 size/crop embeddings of 256

_COMMON_UNET: dict = {
    "image_size": 32,
    "in_channels": 4,
    "out_channels": 4,
    "model_channels": 320,
    "use_spatial_transformer": True,
    "legacy": False,
    "use_temporal_attention": False,
    "use_temporal_resblock": False,
}

# Four levels of two res blocks: 12 output blocks, so output_blocks.11 (the v-prediction marker, at the
# finest level) exists, while most blocks run at 4x4 latents and below (64 px pictures are 8x8).
SD2_UNET_CONFIG: dict = {
    **_COMMON_UNET,
    "num_res_blocks": [2, 2, 2, 2],
    "channel_mult": [1, 1, 1, 1],
    "transformer_depth": [1, 0, 1, 0, 1, 0, 0, 0],
    "transformer_depth_output": [1, 0, 0, 0, 0, 1, 0, 0, 1, 0, 0, 0],  # index i is output_blocks.(11 - i)
    "transformer_depth_middle": 1,
    "context_dim": SD2_CONTEXT,
    "use_linear_in_transformer": True,
    "num_heads": -1,
    "num_head_channels": 64,
    "adm_in_channels": None,
}

SDXL_UNET_CONFIG: dict = {
    **_COMMON_UNET,
    "num_res_blocks": [2, 2, 2],
    "channel_mult": [1, 1, 1],
    "transformer_depth": [0, 0, 2, 2, 10, 10],
    "transformer_depth_output": [0, 0, 0, 1, 0, 0, 1, 0, 0],
    "transformer_depth_middle": 1,
    "context_dim": SDXL_CONTEXT,
    "use_linear_in_transformer": True,
    "num_heads": -1,
    "num_head_channels": 64,
    "num_classes": "sequential",
    "adm_in_channels": SDXL_ADM_CHANNELS,
}


@dataclass(frozen=True)
class TinyFamily:
    """One tiny checkpoint: what ComfyUI should detect it as, and how to build it."""

    name: str  # test id and file stem part: "sd2_eps", "sd2_v", "sdxl"
    recipe: str  # stored in the file's metadata; a changed recipe rebuilds the cached file
    model_config: str  # the class ComfyUI's detection must pick (comfy.supported_models)
    model_type: str  # comfy.model_base.ModelType member name
    unet_config: dict
    clip_model: str  # "sd2" or "sdxl"
    taesd_scale: float
    v_prediction: bool = False
    extra_metadata: dict[str, str] = field(default_factory=dict)

    @property
    def path(self) -> Path:
        return MODELS_DIR / f"tl_tiny_{self.name}.safetensors"

    @property
    def file_name(self) -> str:
        return self.path.name


SD2_EPS = TinyFamily("sd2_eps", "tl-tiny-sd2-eps/2", "SD20", "EPS", SD2_UNET_CONFIG, "sd2", 0.18215)
SD2_V = TinyFamily("sd2_v", "tl-tiny-sd2-v/3", "SD20", "V_PREDICTION", SD2_UNET_CONFIG, "sd2", 0.18215,
                   v_prediction=True)
SDXL = TinyFamily("sdxl", "tl-tiny-sdxl/2", "SDXL", "EPS", SDXL_UNET_CONFIG, "sdxl", 0.13025)
TINY_FAMILIES: dict[str, TinyFamily] = {f.name: f for f in (SD2_EPS, SD2_V, SDXL)}


@dataclass(frozen=True)
class FamilyBuildInfo:
    """What a build produced, for the CLI and the log."""

    path: Path
    seconds: float
    bytes: int
    unet_params: int
    clip_params: int


def _random_params(root: torch.nn.Module, gen: torch.Generator, skip: tuple[str, ...] = ()
                   ) -> Iterator[tuple[str, torch.Tensor]]:
    """Seeded fp32 values of `root`'s parameters one at a time (a text encoder never sits in fp32 whole)."""
    for module_name, module in root.named_modules():
        for name, param in module.named_parameters(recurse=False):
            key = f"{module_name}.{name}" if module_name else name
            if key.endswith(skip):
                continue
            if key in TAESD_SCALARS:
                yield key, torch.tensor(TAESD_SCALARS[key])
            else:
                yield key, _init_tensor(module, name, param.shape, gen)


def _unet_state(family: TinyFamily, gen: torch.Generator) -> dict[str, torch.Tensor]:
    import comfy.ops
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    with torch.device("meta"):
        unet = UNetModel(**family.unet_config, dtype=torch.float16, device="meta",
                         operations=comfy.ops.disable_weight_init)
    state = {}
    for key, value in _random_params(unet, gen):
        if key == V_PRED_BIAS_KEY and family.v_prediction:
            marker_gen = torch.Generator().manual_seed(V_PRED_BIAS_SEED)
            value = torch.randn(value.shape, generator=marker_gen) * V_PRED_BIAS_STD
        state[UNET_PREFIX + key] = value.to(UNET_STORE_DTYPE).contiguous()
    return state


def _clip_state(family: TinyFamily, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """The text encoders in ComfyUI's layout, turned into the checkpoint's layout by ComfyUI's own converter."""
    import comfy.sdxl_clip
    import comfy.supported_models
    from comfy.text_encoders.sd2_clip import SD2ClipModel

    model_cls, config_cls = {
        "sd2": (SD2ClipModel, comfy.supported_models.SD20),
        "sdxl": (comfy.sdxl_clip.SDXLClipModel, comfy.supported_models.SDXL),
    }[family.clip_model]
    with torch.device("meta"):
        clip = model_cls(device="meta", dtype=torch.float16)
    comfy_layout = {key: value.half() for key, value in _random_params(clip, gen, skip=("logit_scale",))}
    saved = config_cls(dict(family.unet_config)).process_clip_state_dict_for_saving(comfy_layout)
    return {key: (value.to(CLIP_STORE_DTYPE) if value.is_floating_point() and value.ndim >= 2 else value).contiguous()
            for key, value in saved.items()}


def _vae_state(family: TinyFamily, gen: torch.Generator) -> dict[str, torch.Tensor]:
    from comfy.taesd.taesd import TAESD

    with torch.device("meta"):
        taesd = TAESD()
    state = {VAE_PREFIX + k: v.contiguous() for k, v in _random_params(taesd, gen)}
    state[VAE_PREFIX + "vae_scale"] = torch.tensor(family.taesd_scale)
    return state


def build_family_state_dict(family: TinyFamily, seed: int = DEFAULT_SEED) -> dict[str, torch.Tensor]:
    """The whole checkpoint in memory, in the family's key layout and stored dtypes."""
    boot_comfy()
    gen = torch.Generator().manual_seed(seed)
    return {**_unet_state(family, gen), **_clip_state(family, gen), **_vae_state(family, gen)}


def write_family_checkpoint(family: TinyFamily, path: Path | None = None, seed: int = DEFAULT_SEED
                            ) -> FamilyBuildInfo:
    """Build and write one tiny checkpoint atomically."""
    path = Path(path) if path is not None else family.path
    start = time.perf_counter()
    state = build_family_state_dict(family, seed)
    unet_params = sum(t.numel() for k, t in state.items() if k.startswith(UNET_PREFIX))
    clip_params = sum(t.numel() for k, t in state.items()
                      if not k.startswith((UNET_PREFIX, VAE_PREFIX)))
    metadata = {"recipe": family.recipe, "seed": str(seed), "unet_config": json.dumps(family.unet_config),
                **family.extra_metadata}
    save_file_atomic(path, state, metadata)
    info = FamilyBuildInfo(path, time.perf_counter() - start, path.stat().st_size, unet_params, clip_params)
    logging.info("built %s in %.1f s (%.1f MiB)", path, info.seconds, info.bytes / 2**20)
    return info


def ensure_family_checkpoint(name: str) -> Path:
    """Return the tiny checkpoint of a family ("sd15", "sd2_eps", "sd2_v", "sdxl"), building it if stale."""
    if name == "sd15":
        return ensure_tiny_checkpoint()
    if name not in TINY_FAMILIES:
        raise ValueError(f"unknown tiny model family '{name}'; known: sd15, {', '.join(TINY_FAMILIES)}")
    family = TINY_FAMILIES[name]
    if not is_current(family.path, family.recipe):
        write_family_checkpoint(family)
    return family.path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("families", nargs="*", default=list(TINY_FAMILIES), help="sd2_eps, sd2_v, sdxl")
    parser.add_argument("--force", action="store_true", help="rebuild even when the cached file is current")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    for name in args.families:
        family = TINY_FAMILIES[name]
        if args.force or not is_current(family.path, family.recipe):
            info = write_family_checkpoint(family)
            print(f"{name}: {info.path} {info.bytes / 2**20:.1f} MiB, UNet {info.unet_params / 1e6:.1f} M, "
                  f"text encoders {info.clip_params / 1e6:.1f} M params, {info.seconds:.1f} s")
        else:
            print(f"{name}: {family.path} is current")


if __name__ == "__main__":
    main()
