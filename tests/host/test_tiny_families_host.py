"""ComfyUI's own checkpoint loader detects each tiny checkpoint as the family it stands in for.

The end-to-end family tests only mean something if SD2-eps, SD2-v and SDXL are what ComfyUI thinks
they are: the model config class, the prediction type, the text encoders (every weight loaded, none
left uninitialised) and the latent format.
"""

from __future__ import annotations

import logging

import pytest
import torch

from headless.comfy_boot import boot_comfy
from headless.tiny_families import TINY_FAMILIES, TinyFamily, ensure_family_checkpoint

pytestmark = pytest.mark.host

# What each family's CLIP must hold after loading: encoder key -> token width.
TEXT_ENCODERS = {"sd2": {"clip_h": 1024}, "sdxl": {"clip_l": 768, "clip_g": 1280}}
CONTEXT_WIDTH = {"sd2": 1024, "sdxl": 2048}
LATENT_FORMAT = {"sd2": "SD15", "sdxl": "SDXL"}


@pytest.fixture(scope="module", params=list(TINY_FAMILIES), ids=list(TINY_FAMILIES))
def family(request: pytest.FixtureRequest) -> TinyFamily:
    return TINY_FAMILIES[request.param]


@pytest.fixture(scope="module")
def loaded(family: TinyFamily, caplog_module: list[logging.LogRecord]):
    boot_comfy()
    import comfy.sd

    path = ensure_family_checkpoint(family.name)
    model, clip, vae, _ = comfy.sd.load_checkpoint_guess_config(
        str(path), output_vae=True, output_clip=True, embedding_directory=None)[:4]
    return model, clip, vae


@pytest.fixture(scope="module")
def caplog_module() -> list[logging.LogRecord]:
    """Log records of the module's loads (pytest's caplog is per test)."""
    records: list[logging.LogRecord] = []

    class _Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = _Keep(level=logging.WARNING)
    logging.getLogger().addHandler(handler)
    yield records
    logging.getLogger().removeHandler(handler)


def test_comfyui_detects_the_intended_family_and_prediction(family: TinyFamily, loaded) -> None:
    import comfy.model_base

    model, _, _ = loaded
    assert type(model.model.model_config).__name__ == family.model_config
    assert model.model.model_type == comfy.model_base.ModelType[family.model_type]
    assert type(model.model).__name__ == ("SDXL" if family.clip_model == "sdxl" else "BaseModel")
    assert type(model.model.latent_format).__name__ == LATENT_FORMAT[family.clip_model]
    assert model.model.model_config.unet_config["context_dim"] == CONTEXT_WIDTH[family.clip_model]


def test_text_encoders_load_whole_and_encode(family: TinyFamily, loaded, caplog_module) -> None:
    """A weight missing from the file would stay uninitialised memory in ComfyUI: none may be missing."""
    _, clip, _ = loaded
    assert not [r for r in caplog_module if "clip missing" in r.getMessage()]
    widths = {name: getattr(clip.cond_stage_model, name).transformer.get_input_embeddings().weight.shape[-1]
              for name in TEXT_ENCODERS[family.clip_model]}
    assert widths == TEXT_ENCODERS[family.clip_model]
    with torch.no_grad():
        cond, pooled = clip.encode_from_tokens(clip.tokenize("a photo of a sks ball"), return_pooled=True)
    assert cond.shape[-1] == CONTEXT_WIDTH[family.clip_model]
    assert torch.isfinite(cond).all() and torch.isfinite(pooled).all() and cond.std() > 0


def test_vae_decodes_the_families_latents(family: TinyFamily, loaded) -> None:
    _, _, vae = loaded
    images = vae.decode(torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0)))
    assert images.shape[-3:] == (64, 64, 3) and torch.isfinite(images).all()


def test_eps_and_v_differ_only_in_the_prediction_marker() -> None:
    """The SD2 pair shares every other weight, so a difference between their runs is the prediction type."""
    from safetensors import safe_open

    from headless.tiny_families import SD2_EPS, SD2_V, UNET_PREFIX, V_PRED_BIAS_KEY

    eps, v = ensure_family_checkpoint(SD2_EPS.name), ensure_family_checkpoint(SD2_V.name)
    marker = UNET_PREFIX + V_PRED_BIAS_KEY
    with safe_open(str(eps), "pt") as a, safe_open(str(v), "pt") as b:
        assert set(a.keys()) == set(b.keys())
        assert a.get_tensor(marker).float().std() < 0.09 < b.get_tensor(marker).float().std()
        for key in [k for k in a.keys() if k.startswith(UNET_PREFIX + "output_blocks.11.")][:8]:
            if key != marker:
                assert torch.equal(a.get_tensor(key), b.get_tensor(key)), key
