"""The tiny checkpoint through ComfyUI's real loader, and attn2 capture on its real UNet."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open

from headless.comfy_boot import boot_comfy
from headless.tiny_model import ensure_tiny_checkpoint
from textloc.attention.capture import (
    AttentionRecorder,
    CaptureSpec,
    attn2_layer_keys,
    first_rows,
    install_recorder,
)
from textloc.errors import TLInputError

pytestmark = pytest.mark.host

LATENT = 16  # 128 px


@pytest.fixture(scope="module")
def checkpoint():
    boot_comfy()
    return ensure_tiny_checkpoint()


@pytest.fixture(scope="module")
def loaded(checkpoint):
    import comfy.sd

    model, clip, vae, _ = comfy.sd.load_checkpoint_guess_config(
        str(checkpoint), output_vae=True, output_clip=True, embedding_directory=None
    )[:4]
    return model, clip, vae


@pytest.fixture(scope="module")
def context(loaded) -> torch.Tensor:
    _, clip, _ = loaded
    with torch.no_grad():
        cond = clip.encode_from_tokens(clip.tokenize("a photo of a sks dog"))
    return cond.float()


def unet_inputs(context: torch.Tensor, batch: int = 2) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 4, LATENT, LATENT, generator=gen)
    return x, torch.full((batch,), 3.0), context.expand(batch, -1, -1)


def apply(model_patcher, x, sigma, ctx) -> torch.Tensor:
    """One UNet call with the patcher's own transformer options (a copy: ComfyUI writes into them)."""
    options = dict(model_patcher.model_options["transformer_options"])
    with torch.no_grad():
        return model_patcher.model.apply_model(x, sigma, c_crossattn=ctx, transformer_options=options)


def test_checkpoint_is_detected_as_sd15(loaded, context) -> None:
    model, _, vae = loaded
    config = model.model.model_config
    assert type(config).__name__ == "SD15"
    assert config.unet_config["channel_mult"] == [1, 1, 1]
    assert config.unet_config["transformer_depth_middle"] == 1
    assert type(vae.first_stage_model).__name__ == "TAESD"
    assert context.shape[-1] == config.unet_config["context_dim"]
    assert torch.isfinite(context).all() and context.std() > 0


def test_text_encoder_holds_the_file_weights(checkpoint, loaded) -> None:
    _, clip, _ = loaded
    key = "cond_stage_model.transformer.text_model.encoder.layers.11.mlp.fc2.weight"
    with safe_open(str(checkpoint), framework="pt") as f:
        stored = f.get_tensor(key)
    loaded_weight = clip.cond_stage_model.clip_l.transformer.text_model.encoder.layers[11].mlp.fc2.weight
    torch.testing.assert_close(loaded_weight.float().cpu(), stored.float())
    # SD1.5 files carry no text_projection: ComfyUI leaves it uninitialised memory (may hold NaN)
    assert all(torch.isfinite(p).all() for name, p in clip.cond_stage_model.named_parameters()
               if "text_projection" not in name)


def test_layer_keys_cover_every_attn2_module(loaded) -> None:
    model, _, _ = loaded
    unet = model.model.diffusion_model
    attn2_modules = [name for name, _ in unet.named_modules() if name.endswith(".attn2")]
    keys = attn2_layer_keys(unet)
    assert len(keys) == len(attn2_modules) == 10
    assert ("middle", 0, 0) in keys


def test_recorder_keeps_output_and_captures_every_level(loaded, context) -> None:
    model, _, _ = loaded
    x, sigma, ctx = unet_inputs(context)
    base = apply(model, x, sigma, ctx)

    clone = model.clone()
    recorder = AttentionRecorder(CaptureSpec(torch.tensor([[1, 5]]), first_rows(1)))
    install_recorder(clone, recorder)
    recorder.begin_step()
    patched = apply(clone, x, sigma, ctx)

    assert (patched - base).abs().max() <= 1e-4 * base.abs().max()
    records = recorder.records()
    assert [r.layer_key for r in records] == attn2_layer_keys(model.model.diffusion_model)
    assert sorted({r.height for r in records}, reverse=True) == [LATENT, LATENT // 2, LATENT // 4]
    middle = next(r for r in records if r.layer_key[0] == "middle")
    assert middle.height == LATENT // 4
    for r in records:
        assert r.maps.shape == (1, 2, r.height, r.width) and r.height == r.width
        assert torch.isfinite(r.maps).all() and (r.maps >= 0).all() and (r.maps <= 1).all()


def test_installing_on_a_clone_leaves_the_base_patcher_alone(loaded) -> None:
    model, _, _ = loaded
    clone = model.clone()
    install_recorder(clone, AttentionRecorder(CaptureSpec(torch.tensor([[1]]), first_rows(1))))
    assert len(clone.model_options["transformer_options"]["patches_replace"]["attn2"]) == 10
    assert "patches_replace" not in model.model_options["transformer_options"]
    assert model.patches == {}


def test_an_earlier_attn2_patch_is_wrapped(loaded, context) -> None:
    model, _, _ = loaded
    x, sigma, ctx = unet_inputs(context, batch=1)
    calls = []

    def zero_attention(q, k, v, extra_options):
        calls.append(extra_options["block"])
        return torch.zeros_like(q)

    other = model.clone()
    other.set_model_attn2_replace(zero_attention, "input", 1)  # a 2-part key, as some packs register
    expected = apply(other, x, sigma, ctx)

    recorder = AttentionRecorder(CaptureSpec(torch.tensor([[1]]), first_rows(1)))
    install_recorder(other, recorder)
    recorder.begin_step()
    got = apply(other, x, sigma, ctx)
    torch.testing.assert_close(got, expected)
    assert calls == [("input", 1), ("input", 1)]
    assert ("input", 1, 0) in [r.layer_key for r in recorder.records()]


def test_model_without_cross_attention_is_rejected() -> None:
    import comfy.model_patcher

    patcher = comfy.model_patcher.ModelPatcher(
        torch.nn.Linear(2, 2), torch.device("cpu"), torch.device("cpu")
    )
    with pytest.raises(TLInputError, match="no cross-attention"):
        install_recorder(patcher, AttentionRecorder(CaptureSpec(torch.tensor([[1]]), first_rows(1))))
