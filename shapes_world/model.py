"""The world model: an SD1.5-format checkpoint whose UNet was pretrained on the shapes world.

Three parts, each made the cheapest honest way:
- UNet: SD1.5's fixed fields (320 channels, 768 context, conv proj_in, 8 heads) with one level,
  trained by `shapes_world.pretrain`; its weights are the one committed weights file
  (WEIGHTS_PATH, int8 per output row with fp16 scales, so it stays under 32 MB).
- Text encoder: the full 12-layer CLIP-L regenerated from a seed (never trained, never stored).
  A random CLIP-L with the usual small init maps every word to nearly the same vector ('ball' vs
  'box' cosine 0.94); here token embeddings are larger and each layer's residual branch is scaled
  down, so a word's output is mostly that word ('ball' vs 'box' 0.26) and still sees its context.
- VAE: a hand-set TAESD: the encoder is an exact 8x8 average pool of RGB (latent = 1.5 * (rgb - 0.5),
  4th channel 0), the decoder upsamples with a small blur. No training, exact colours up to the blur.

`ensure_world_checkpoint()` assembles the loadable checkpoint into `.cache/` (about 20 s) and
rebuilds it when the recipe or the committed weights change.
"""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from headless.paths import CACHE_DIR
from headless.tiny_model import (
    CLIP_KEEP,
    CLIP_PREFIX,
    CLIP_STORE_DTYPE,
    TAESD_SCALARS,
    TINY_UNET_CONFIG,
    UNET_PREFIX,
    VAE_PREFIX,
    is_current,
    random_state,
    save_file_atomic,
)

PACKAGE_DIR = Path(__file__).resolve().parent
WEIGHTS_PATH = PACKAGE_DIR / "weights" / "shapes_world.safetensors"
CHECKPOINT_PATH = CACHE_DIR / "models" / "tl_shapes_world.safetensors"
CHECKPOINT_NAME = "tl_shapes_world.safetensors"
RECIPE_VERSION = "tl-shapes-world/1"
WEIGHTS_RECIPE = "tl-shapes-world-weights/1"
RESOLUTION = 64  # pixels; latents are 8x8

WORLD_UNET_CONFIG: dict = {
    **TINY_UNET_CONFIG,
    "num_res_blocks": [1],
    "channel_mult": [1],
    "transformer_depth": [1],
    "transformer_depth_output": [1, 1],
    "transformer_depth_middle": 1,
}

CLIP_SEED = 20240215
CLIP_TOKEN_STD = 0.3
CLIP_POSITION_STD = 0.03
CLIP_RESIDUAL_SCALE = 0.1  # out_proj and fc2 of every layer
LATENT_GAIN = 1.5  # TAESD latent = gain * (rgb - 0.5): inside the decoder's tanh clamp, nearly linear
# ComfyUI's model latent = TAESD latent * 0.18215 / vae_scale: this vae_scale gives the UNet latents of
# about unit spread, as SD's are, while the decoder still sees the small TAESD values.
MODEL_LATENT_GAIN = 5.0
UNET_SEED = 0


@functools.cache
def _meta_modules() -> tuple[torch.nn.Module, torch.nn.Module, torch.nn.Module]:
    """ComfyUI's UNet (world config), SD1 CLIP and TAESD on the meta device (built once: names and shapes)."""
    from headless.comfy_boot import boot_comfy

    boot_comfy()
    import comfy.ops
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel
    from comfy.sd1_clip import SDClipModel
    from comfy.taesd.taesd import TAESD

    with torch.device("meta"):
        unet = UNetModel(**WORLD_UNET_CONFIG, dtype=torch.float32, device="meta",
                         operations=comfy.ops.disable_weight_init)
        clip = SDClipModel(device="meta", dtype=torch.float16)
        taesd = TAESD()
    return unet, clip, taesd


def world_clip_state() -> dict[str, torch.Tensor]:
    """The world's text encoder (ComfyUI `SDClipModel` keys), regenerated from CLIP_SEED."""
    _, clip, _ = _meta_modules()
    state = random_state(clip, torch.Generator().manual_seed(CLIP_SEED), CLIP_KEEP)
    embeddings = CLIP_KEEP + "embeddings."
    state[embeddings + "token_embedding.weight"] *= CLIP_TOKEN_STD / state[embeddings + "token_embedding.weight"].std()
    state[embeddings + "position_embedding.weight"] *= (
        CLIP_POSITION_STD / state[embeddings + "position_embedding.weight"].std())
    for key in state:
        if key.endswith(("self_attn.out_proj.weight", "mlp.fc2.weight")):
            state[key] *= CLIP_RESIDUAL_SCALE
    return state


def random_unet_state(seed: int = UNET_SEED) -> dict[str, torch.Tensor]:
    """The UNet before pretraining (the tiny model's init rules), fp32."""
    unet, _, _ = _meta_modules()
    return random_state(unet, torch.Generator().manual_seed(seed))


def _conv_identity(weight: torch.Tensor, channels: int, taps: list[tuple[int, int]]) -> None:
    """Channel c -> channel c with equal weights on the given kernel taps."""
    for c in range(channels):
        for y, x in taps:
            weight[c, c, y, x] = 1.0 / len(taps)


BLUR_TAPS = torch.tensor([1.0, 2.0, 1.0])


def taesd_state() -> dict[str, torch.Tensor]:
    """Hand-set TAESD weights (ComfyUI `TAESD` keys): exact 8x8 average-pool encoder, blurring decoder."""
    _, _, taesd = _meta_modules()
    state = {name: torch.zeros(p.shape) for name, p in taesd.named_parameters()}
    state["vae_scale"] = torch.tensor(TAESD_SCALARS["vae_scale"] / MODEL_LATENT_GAIN)
    state["vae_shift"] = torch.tensor(TAESD_SCALARS["vae_shift"])
    enc, dec = "taesd_encoder.", "taesd_decoder."
    # encoder: RGB into channels 0-2 (blocks are identities: zero convs, identity skip, ReLU of x >= 0)
    _conv_identity(state[enc + "0.weight"], 3, [(1, 1)])
    for index in (2, 6, 10):  # stride-2 convs: a 2x2 average over taps (1..2, 1..2)
        _conv_identity(state[enc + f"{index}.weight"], 3, [(1, 1), (1, 2), (2, 1), (2, 2)])
    for c in range(3):
        state[enc + "14.weight"][c, c, 1, 1] = LATENT_GAIN
        state[enc + "14.bias"][c] = -0.5 * LATENT_GAIN
    # decoder: latent -> RGB in channels 0-2 (>= 0 after ReLU), then upsample + blur three times
    for c in range(3):
        state[dec + "1.weight"][c, c, 1, 1] = 1.0 / LATENT_GAIN
        state[dec + "1.bias"][c] = 0.5
    blur = torch.outer(BLUR_TAPS, BLUR_TAPS) / 16.0
    for index in (7, 12, 17):
        for c in range(3):
            state[dec + f"{index}.weight"][c, c] = blur
    _conv_identity(state[dec + "19.weight"], 3, [(1, 1)])
    return state


# ---------------------------------------------------------------------------------------------- weights file


def quantize_rows(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 per output row: (int8 values, fp16 scale per row)."""
    flat = weight.float().reshape(weight.shape[0], -1)
    scale = flat.abs().amax(dim=1).clamp_min(1e-12) / 127.0
    values = torch.round(flat / scale[:, None]).clamp(-127, 127).to(torch.int8)
    return values.reshape(weight.shape), scale.half()


UNET_KEY = "unet."
DECODER_KEY = "decoder."


def pack(prefix: str, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Tensors for the committed file: >=2-D weights as int8 + '<key>.scale', others fp16."""
    packed: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if value.ndim >= 2:
            packed[prefix + key], packed[prefix + key + ".scale"] = quantize_rows(value)
        else:
            packed[prefix + key] = value.half()
    return packed


def unpack(prefix: str, packed: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Inverse of pack for the keys under `prefix`, in fp32."""
    state: dict[str, torch.Tensor] = {}
    for key, value in packed.items():
        if not key.startswith(prefix) or key.endswith(".scale"):
            continue
        if value.dtype == torch.int8:
            scale = packed[key + ".scale"].float()
            state[key[len(prefix):]] = value.float() * scale.reshape(-1, *([1] * (value.ndim - 1)))
        else:
            state[key[len(prefix):]] = value.float()
    return state


def save_weights(path: Path, unet: dict[str, torch.Tensor] | None = None,
                 decoder: dict[str, torch.Tensor] | None = None, metadata: dict[str, str] | None = None) -> None:
    """Write the UNet and/or the decoder into the one weights file atomically, keeping the other part."""
    packed: dict[str, torch.Tensor] = {}
    meta: dict[str, str] = {}
    if path.is_file():
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
        packed = load_file(str(path))
    if unet is not None:
        packed = {k: v for k, v in packed.items() if not k.startswith(UNET_KEY)} | pack(UNET_KEY, unet)
    if decoder is not None:
        packed = {k: v for k, v in packed.items() if not k.startswith(DECODER_KEY)} | pack(DECODER_KEY, decoder)
    meta.update(metadata or {})
    meta.update({"recipe": WEIGHTS_RECIPE, "unet_config": json.dumps(WORLD_UNET_CONFIG)})
    save_file_atomic(path, {k: v.contiguous() for k, v in packed.items()}, meta)


def load_weights(path: Path = WEIGHTS_PATH) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, str]]:
    """(UNet state, decoder state (empty if none was trained), metadata), fp32."""
    with safe_open(str(path), framework="pt") as f:
        metadata = dict(f.metadata() or {})
    if metadata.get("recipe") != WEIGHTS_RECIPE:
        raise ValueError(f"{path} was not written by {WEIGHTS_RECIPE}; rebuild it with "
                         "`python -m shapes_world.pretrain`")
    packed = load_file(str(path))
    return unpack(UNET_KEY, packed), unpack(DECODER_KEY, packed), metadata


def clip_digest(state: dict[str, torch.Tensor]) -> str:
    """Digest of the regenerated text encoder: the UNet only works with the encoder it was trained with."""
    digest = hashlib.sha256()
    for key in sorted(state):
        digest.update(key.encode())
        digest.update(state[key].to(torch.float16).contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


# ---------------------------------------------------------------------------------------------- checkpoint


def checkpoint_state(unet_state: dict[str, torch.Tensor], decoder_state: dict[str, torch.Tensor] | None = None,
                     clip_state: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """The whole SD1.5-format checkpoint (ldm keys) around a UNet state (and a trained decoder)."""
    out = {UNET_PREFIX + k: v.half().contiguous() for k, v in unet_state.items()}
    for key, value in (clip_state if clip_state is not None else world_clip_state()).items():
        out[CLIP_PREFIX + key] = (value.to(CLIP_STORE_DTYPE) if value.ndim >= 2 else value.half()).contiguous()
    vae = taesd_state()
    vae.update({"taesd_decoder." + k: v for k, v in (decoder_state or {}).items()})
    out.update({VAE_PREFIX + k: v.float().contiguous() for k, v in vae.items()})
    return out


def checkpoint_recipe(weights: Path) -> str:
    """The recipe string a cached checkpoint must carry: code recipe + the weights file's digest."""
    return f"{RECIPE_VERSION}+{file_digest(weights)}"


def write_checkpoint(path: Path, weights: Path = WEIGHTS_PATH) -> Path:
    """Assemble the checkpoint from the committed UNet weights and write it atomically."""
    unet_state, decoder_state, meta = load_weights(weights)
    clip_state = world_clip_state()
    expected = meta.get("clip_digest")
    if expected and clip_digest(clip_state) != expected:
        raise RuntimeError(
            f"the text encoder this ComfyUI regenerates differs from the one {weights.name} was trained with "
            f"(digest {clip_digest(clip_state)}, expected {expected}): ComfyUI's CLIP module changed. Use "
            "ComfyUI 0.3.75 (`make setup`) or rebuild the weights with `make world-model`.")
    state = checkpoint_state(unet_state, decoder_state, clip_state)
    metadata = {"recipe": checkpoint_recipe(weights), "unet_config": json.dumps(WORLD_UNET_CONFIG),
                "pretraining": meta.get("pretraining", ""), "decoder": meta.get("decoder", "hand-set")}
    save_file_atomic(path, state, metadata)
    return path


def ensure_world_checkpoint(path: Path | None = None, weights: Path = WEIGHTS_PATH) -> Path:
    """The world checkpoint, assembled first if missing or built from other code or weights."""
    path = Path(path) if path is not None else CHECKPOINT_PATH
    if not weights.is_file():
        raise FileNotFoundError(f"the world model's weights {weights} are missing; "
                                "rebuild them with `python -m shapes_world.pretrain`")
    if not is_current(path, checkpoint_recipe(weights)):
        write_checkpoint(path, weights)
    return path
