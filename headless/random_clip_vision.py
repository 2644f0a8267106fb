"""A random-weight CLIP ViT-L/14 file that ComfyUI's own CLIP vision loader accepts.

ComfyUI picks a CLIP vision config from key names and builds it without initialising weights, so
the file must hold every tensor of the full ViT-L/14 image tower (304M parameters). Stored as fp8
(upcast on load) it is about 300 MiB. Like openai/clip-vit-large-patch14's model.safetensors it
also holds `text_projection.weight`, which the evaluation's CLIP-T reads from the same file.
Only for tests and demos: the features mean nothing.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import save_file

from .comfy_boot import boot_comfy
from .paths import CACHE_DIR, COMFYUI_DIR
from .tiny_model import is_current, random_state

CLIP_VISION_PATH = CACHE_DIR / "models" / "tl_random_clip_vit_l14.safetensors"
RECIPE_VERSION = "tl-random-clip-vit-l14/1"
STORE_DTYPE = torch.float8_e4m3fn
TEXT_WIDTH = 768


def _meta_vision_model() -> torch.nn.Module:
    boot_comfy()
    import comfy.ops
    from comfy.clip_model import CLIPVisionModelProjection

    config = json.loads((COMFYUI_DIR / "comfy" / "clip_vision_config_vitl.json").read_text())
    with torch.device("meta"):
        return CLIPVisionModelProjection(config, torch.float16, "meta", comfy.ops.disable_weight_init)


def write_random_clip_vision(path: Path, seed: int = 0) -> Path:
    """Build and write the file atomically."""
    gen = torch.Generator().manual_seed(seed)
    state = {key: (value.to(STORE_DTYPE) if value.ndim >= 2 else value.half()).contiguous()
             for key, value in random_state(_meta_vision_model(), gen).items()}
    state["text_projection.weight"] = (torch.randn(TEXT_WIDTH, TEXT_WIDTH, generator=gen)
                                       / TEXT_WIDTH**0.5).to(STORE_DTYPE)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        save_file(state, str(tmp), metadata={"recipe": RECIPE_VERSION, "seed": str(seed)})
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def ensure_random_clip_vision(path: Path | None = None) -> Path:
    """The cached file, built first when missing or from an older recipe."""
    path = Path(path) if path is not None else CLIP_VISION_PATH
    return path if is_current(path, RECIPE_VERSION) else write_random_clip_vision(path)
