"""The exported LoRA in the real ComfyUI: the stock LoraLoader and LoraLoaderModelOnly apply every key (no
"lora key not loaded"), at full rank the patched K/V weights equal the pack's full delta patch, at a low rank
they differ from it by the error the file records, and the key names are ComfyUI's for SDXL too.

The tiny SD1.5 checkpoint is loaded through ComfyUI's own checkpoint loader inside `torch.inference_mode()`,
as ComfyUI's executor does. The deltas are random small ones on the model's real attn2 K/V keys.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from bench.common import SD2_UNET_CONFIG, SD15_UNET_CONFIG, SDXL_UNET_CONFIG
from headless.comfy_boot import boot_comfy
from headless.tiny_model import ensure_tiny_checkpoint
from textloc.weights import apply, lora_export
from textloc.weights import files as weights
from textloc.weights.trained import TrainedWeights

pytestmark = pytest.mark.host

FOLDER = "textual_localization"
NOT_LOADED = ("lora key not loaded", "NOT LOADED")



@pytest.fixture(scope="module")
def loras_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    boot_comfy()
    import folder_paths

    root = tmp_path_factory.mktemp("lora_export_models") / "loras"
    (root / FOLDER).mkdir(parents=True)
    folder_paths.add_model_folder_path("loras", str(root))
    return root


@pytest.fixture(scope="module")
def sd15(loras_dir):
    import comfy.sd

    with torch.inference_mode():
        model, clip = comfy.sd.load_checkpoint_guess_config(
            str(ensure_tiny_checkpoint()), output_vae=False, output_clip=True)[:2]
    return model, clip


@pytest.fixture(scope="module")
def trained(sd15) -> TrainedWeights:
    """What a run hands out: small fp16 K/V deltas (as the trainer keeps them) and a token."""
    model, _ = sd15
    gen = torch.Generator().manual_seed(7)
    shapes = {k: s for k, s in apply.model_kv_shapes(model).items() if ".to_k." in k or ".to_v." in k}
    deltas = {k: (torch.randn(s, generator=gen) * 0.05).half() for k, s in shapes.items()}
    meta = weights.build_metadata(run_name="tl_host", tokens=["tl_ball"], class_words=["ball"], init_words=["sks"],
                                  steps=30, base_model_family="SD15", base_hash="lora_host")
    return TrainedWeights(kv_deltas=deltas, token_vectors={"tl_ball": {"clip_l": torch.randn(1, 768, generator=gen)}},
                          metadata=meta)


def _export(loras_dir: Path, trained: TrainedWeights, rank: int) -> str:
    name = f"{FOLDER}/{lora_export.lora_file_name('tl_host', rank)}"
    lora_export.save_kv_lora(loras_dir / name, trained, rank, loras_dir.parent / "output")
    return name


def _effective_kv(patcher) -> dict[str, torch.Tensor]:
    """The attn2 K/V weights as sampling sees them: loaded the way KSampler loads a model."""
    import comfy.model_management

    comfy.model_management.load_models_gpu([patcher], force_full_load=True)
    return {k: v.detach().float().clone() for k, v in patcher.model.state_dict().items()
            if ".attn2.to_k." in k or ".attn2.to_v." in k}


def _unloaded(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if any(text in r.getMessage() for text in NOT_LOADED)]


def test_stock_lora_loaders_apply_the_full_rank_export_like_the_full_delta(
        sd15, trained, loras_dir, caplog: pytest.LogCaptureFixture) -> None:
    import nodes

    model, clip = sd15
    name = _export(loras_dir, trained, lora_export.MAX_RANK)
    with torch.inference_mode(), caplog.at_level(logging.WARNING):
        lora_model, lora_clip = nodes.LoraLoader().load_lora(model, clip, name, 1.0, 1.0)
        only_model = nodes.LoraLoaderModelOnly().load_lora_model_only(model, name, 1.0)[0]
        assert _unloaded(caplog) == []
        full = apply.apply_weights(model, clip, trained, 1.0, 1.0, "tl_result").model
        assert set(lora_model.patches) == set(only_model.patches) == set(full.patches) == set(trained.kv_deltas)
        assert lora_clip.patcher.patches == {}  # the file holds no text-encoder keys
        base, full_w = _effective_kv(model), _effective_kv(full)
        for patched in (_effective_kv(lora_model), _effective_kv(only_model)):
            for key, weight in patched.items():
                # fp16 factors of a ~0.05 delta: the product differs from the fp16 delta by a few 1e-4
                assert torch.allclose(weight, full_w[key], atol=1e-3, rtol=0), key
                assert (weight - base[key]).abs().max() > 0.1  # the delta is really there


def test_a_low_rank_export_applies_the_error_its_metadata_records(
        sd15, trained, loras_dir, caplog: pytest.LogCaptureFixture) -> None:
    import nodes

    model, _ = sd15
    name = _export(loras_dir, trained, 4)
    recorded = json.loads(weights.read_metadata(loras_dir / name)["relative_errors"])
    with torch.inference_mode(), caplog.at_level(logging.WARNING):
        lora_model = nodes.LoraLoaderModelOnly().load_lora_model_only(model, name, 1.0)[0]
        assert _unloaded(caplog) == []
        base, patched = _effective_kv(model), _effective_kv(lora_model)
    errors = {}
    for key, delta in trained.kv_deltas.items():
        applied = patched[key] - base[key]
        errors[key] = float((applied - delta.float()).norm() / delta.float().norm())
        assert errors[key] == pytest.approx(recorded[lora_export.lora_module_name(key)], abs=5e-3), key
    assert 0.5 < min(errors.values())  # rank 4 of a random 320-wide delta keeps little: the cut is real


def test_bundled_embedding_keys_would_be_reported_so_the_token_is_a_separate_file(
        sd15, trained, loras_dir, caplog: pytest.LogCaptureFixture) -> None:
    """Why the token is a file of its own: ComfyUI does not read A1111's bundle_emb keys in a LoRA."""
    import nodes

    model, _ = sd15
    name = _export(loras_dir, trained, 2)
    tensors = load_file(str(loras_dir / name))
    assert not any(k.startswith("bundle_emb.") for k in tensors)
    tensors["bundle_emb.tl_ball.string_to_param.*"] = trained.token_vectors["tl_ball"]["clip_l"].half()
    bundled = f"{FOLDER}/tl_host_bundled.safetensors"
    save_file(tensors, str(loras_dir / bundled))
    with torch.inference_mode(), caplog.at_level(logging.WARNING):
        nodes.LoraLoaderModelOnly().load_lora_model_only(model, bundled, 1.0)
    assert _unloaded(caplog) == ["lora key not loaded: bundle_emb.tl_ball.string_to_param.*"]
    token_file = loras_dir.parent / "output" / "embeddings" / "tl_host" / "tl_ball.safetensors"  # the run's token
    assert torch.equal(weights.load_embedding(token_file)[0]["clip_l"], trained.token_vectors["tl_ball"]["clip_l"])


def _meta_model(unet_config: dict, family: str):
    """ComfyUI's full-size model of a family built on meta tensors (shapes only), as detection configures it."""
    boot_comfy()
    import comfy.model_detection

    model_config = comfy.model_detection.model_config_from_unet_config(unet_config)
    assert type(model_config).__name__ == family
    model_config.set_inference_dtype(torch.float16, None)
    with torch.device("meta"):
        return model_config.get_model({}, device=torch.device("meta"))


@pytest.mark.parametrize(("unet_config", "family", "largest_limit"), [
    (SD15_UNET_CONFIG, "SD15", 768), (SD2_UNET_CONFIG, "SD20", 1024), (SDXL_UNET_CONFIG, "SDXL", 1280)])
def test_the_rank_limit_lets_every_kv_layer_of_every_family_be_exact(unet_config, family, largest_limit) -> None:
    """A layer is exact at its smaller side; the rank inputs (max = MAX_RANK) must reach it on every family."""
    model = _meta_model(unet_config, family)
    limits = [min(p.shape) for k, p in model.state_dict().items() if ".attn2.to_k." in k or ".attn2.to_v." in k]
    assert max(limits) == largest_limit
    assert lora_export.MAX_RANK >= largest_limit


def test_comfyui_maps_the_export_key_names_of_every_sdxl_kv_layer() -> None:
    """SDXL's own module names (kohya's SDXL convention) are in ComfyUI's LoRA key map, built on meta tensors."""
    import comfy.lora

    model = _meta_model(SDXL_UNET_CONFIG, "SDXL")
    kv_keys = [k for k in model.state_dict() if ".attn2.to_k." in k or ".attn2.to_v." in k]
    assert len(kv_keys) == 140  # 70 transformer blocks, K and V each
    key_map = comfy.lora.model_lora_keys_unet(model, {})
    assert all(key_map.get(lora_export.lora_module_name(k)) == k for k in kv_keys)
