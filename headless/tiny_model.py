"""A tiny random-weight SD1.5-format checkpoint, so host tests run the real loaders in seconds.

ComfyUI detects a checkpoint's family from key names and tensor shapes only, so a UNet that keeps
SD1.5's fixed fields (320 base channels, 768 context, conv `proj_in`, no `label_emb`) but has fewer
levels and blocks still loads as `SD15`. Key names and shapes are taken from ComfyUI's own modules
built on the meta device, so the file always matches the installed ComfyUI. The text encoder is the
full 12-layer CLIP-L: weights missing from a checkpoint stay uninitialised memory in ComfyUI.
TAESD stands in for the KL-VAE, whose size ComfyUI hard-codes.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .comfy_boot import boot_comfy
from .paths import CACHE_DIR

TINY_CHECKPOINT_PATH = CACHE_DIR / "models" / "tl_tiny_sd15.safetensors"
RECIPE_VERSION = "tl-tiny-sd15/1"
DEFAULT_SEED = 0

# SD1.5 in miniature: 3 levels of width 320 with one res block and one transformer each, plus a
# transformer in the middle block, so attn2 maps exist at 3 resolutions + middle.
TINY_UNET_CONFIG: dict = {
    "image_size": 32,
    "in_channels": 4,
    "out_channels": 4,
    "model_channels": 320,
    "num_res_blocks": [1, 1, 1],
    "channel_mult": [1, 1, 1],
    "transformer_depth": [1, 1, 1],
    "transformer_depth_output": [1, 1, 1, 1, 1, 1],
    "transformer_depth_middle": 1,
    "context_dim": 768,
    "use_linear_in_transformer": False,
    "use_spatial_transformer": True,
    "num_heads": 8,
    "num_head_channels": -1,
    "legacy": False,
    "adm_in_channels": None,
    "use_temporal_attention": False,
    "use_temporal_resblock": False,
}

UNET_PREFIX = "model.diffusion_model."
CLIP_PREFIX = "cond_stage_model."
VAE_PREFIX = "first_stage_model."
CLIP_KEEP = "transformer.text_model."  # SD1.5 files carry no text_projection / logit_scale
CLIP_STORE_DTYPE = torch.float8_e4m3fn  # upcast by load_state_dict into the fp16 text encoder
UNET_STORE_DTYPE = torch.float16
# What ComfyUI's VAELoader sets for an SD1.x TAESD (nodes.py, load_taesd).
TAESD_SCALARS = {"vae_scale": 0.18215, "vae_shift": 0.0}
EMBEDDING_STD = 0.02


@dataclass(frozen=True)
class TinyCheckpointInfo:
    """What a build produced, for the CLI and the log."""

    path: Path
    seconds: float
    bytes: int
    unet_params: int
    clip_params: int
    vae_params: int


def _meta_modules() -> dict[str, tuple[str, torch.nn.Module]]:
    """ComfyUI's UNet, SD1 CLIP and TAESD on the meta device: key names and shapes, no memory."""
    boot_comfy()
    import comfy.ops
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel
    from comfy.sd1_clip import SDClipModel
    from comfy.taesd.taesd import TAESD

    with torch.device("meta"):
        unet = UNetModel(
            **TINY_UNET_CONFIG, dtype=torch.float16, device="meta", operations=comfy.ops.disable_weight_init
        )
        clip = SDClipModel(device="meta", dtype=torch.float16)
        taesd = TAESD()
    return {"unet": (UNET_PREFIX, unet), "clip": (CLIP_PREFIX, clip), "vae": (VAE_PREFIX, taesd)}


def _init_tensor(module: torch.nn.Module, name: str, shape: torch.Size, gen: torch.Generator) -> torch.Tensor:
    """Norm weights 1, biases 0, embeddings N(0, 0.02), other weights N(0, 1/fan_in)."""
    if isinstance(module, (torch.nn.GroupNorm, torch.nn.LayerNorm)) and name == "weight":
        return torch.ones(shape)
    if name == "bias":
        return torch.zeros(shape)
    if isinstance(module, torch.nn.Embedding):
        return torch.randn(shape, generator=gen) * EMBEDDING_STD
    if len(shape) >= 2:
        fan_in = math.prod(shape[1:])
        return torch.randn(shape, generator=gen) / math.sqrt(fan_in)
    if name.endswith("_embedding"):  # a bare embedding vector, e.g. CLIP vision's class_embedding
        return torch.randn(shape, generator=gen) * EMBEDDING_STD
    raise ValueError(f"no init rule for {type(module).__name__}.{name} {tuple(shape)}")


def random_state(root: torch.nn.Module, gen: torch.Generator, keep: str = "") -> dict[str, torch.Tensor]:
    """Seeded values for the parameters of `root` under `keep`, in module order (the seed fixes them all)."""
    state: dict[str, torch.Tensor] = {}
    for module_name, module in root.named_modules():
        for name, param in module.named_parameters(recurse=False):
            key = f"{module_name}.{name}" if module_name else name
            if not key.startswith(keep):
                continue
            if key in TAESD_SCALARS:
                state[key] = torch.tensor(TAESD_SCALARS[key])
            else:
                state[key] = _init_tensor(module, name, param.shape, gen)
    return state


def build_tiny_state_dict(seed: int = DEFAULT_SEED) -> dict[str, torch.Tensor]:
    """The whole checkpoint in memory, ldm key layout, in the dtypes it is stored with."""
    gen = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {}
    for part, (prefix, module) in _meta_modules().items():
        keep = CLIP_KEEP if part == "clip" else ""
        for key, value in random_state(module, gen, keep).items():
            if part == "clip":
                value = value.to(CLIP_STORE_DTYPE) if value.ndim >= 2 else value.half()
            elif part == "unet":
                value = value.to(UNET_STORE_DTYPE)
            out[prefix + key] = value.contiguous()
    return out


def _param_count(state: dict[str, torch.Tensor], prefix: str) -> int:
    return sum(t.numel() for k, t in state.items() if k.startswith(prefix))


def save_file_atomic(path: Path, state: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """safetensors write through a tmp file + os.replace: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        save_file(state, str(tmp), metadata=metadata)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_tiny_checkpoint(path: Path, seed: int = DEFAULT_SEED) -> TinyCheckpointInfo:
    """Build and write the checkpoint atomically (tmp file + os.replace): readers never see half a file."""
    start = time.perf_counter()
    state = build_tiny_state_dict(seed)
    counts = {
        name: _param_count(state, prefix)
        for name, prefix in (("unet", UNET_PREFIX), ("clip", CLIP_PREFIX), ("vae", VAE_PREFIX))
    }
    metadata = {"recipe": RECIPE_VERSION, "seed": str(seed), "unet_config": json.dumps(TINY_UNET_CONFIG)}
    save_file_atomic(path, state, metadata)
    info = TinyCheckpointInfo(
        path=path,
        seconds=time.perf_counter() - start,
        bytes=path.stat().st_size,
        unet_params=counts["unet"],
        clip_params=counts["clip"],
        vae_params=counts["vae"],
    )
    logging.info("built %s in %.1f s (%.1f MiB)", path, info.seconds, info.bytes / 2**20)
    return info


def is_current(path: Path, recipe: str) -> bool:
    """True when a cached model file exists and was written by `recipe` (a changed recipe rebuilds it)."""
    if not path.is_file():
        return False
    try:
        with safe_open(str(path), framework="pt") as f:
            return (f.metadata() or {}).get("recipe") == recipe
    except Exception:  # truncated or not a safetensors file: rebuild it
        return False


def ensure_tiny_checkpoint(path: Path | None = None) -> Path:
    """Return the tiny checkpoint, building it first if it is missing or from an older recipe."""
    path = Path(path) if path is not None else TINY_CHECKPOINT_PATH
    if not is_current(path, RECIPE_VERSION):
        write_tiny_checkpoint(path)
    return path
