"""The evaluation's CLIP features through ComfyUI's real CLIP vision model and the tiny checkpoint's CLIP.

The image tower is ComfyUI's own ClipVisionModel with a cut-down config and seeded weights (the
ViT-L/14 file the stock loader needs is covered by the end-to-end test); the text tower is the tiny
checkpoint's full-size CLIP-L at random init.
"""

from __future__ import annotations

import json

import pytest
import torch

from headless.comfy_boot import boot_comfy
from headless.tiny_model import ensure_tiny_checkpoint, random_state
from textloc.evaluation import scores as ev

pytestmark = pytest.mark.host

TINY_VISION_CONFIG = {
    "hidden_act": "quick_gelu", "hidden_size": 64, "image_size": 224, "intermediate_size": 128,
    "layer_norm_eps": 1e-05, "model_type": "clip_vision_model", "num_attention_heads": 4, "num_channels": 3,
    "num_hidden_layers": 2, "patch_size": 14, "projection_dim": 768,
}


@pytest.fixture(scope="module")
def clip_vision(tmp_path_factory: pytest.TempPathFactory):
    boot_comfy()
    import comfy.clip_vision

    config = tmp_path_factory.mktemp("clip_vision") / "tiny_vit.json"
    config.write_text(json.dumps(TINY_VISION_CONFIG))
    model = comfy.clip_vision.ClipVisionModel(str(config))
    missing, unexpected = model.load_sd(random_state(model.model, torch.Generator().manual_seed(0)))
    assert not missing and not unexpected
    return model


@pytest.fixture(scope="module")
def clip():
    boot_comfy()
    import comfy.sd

    with torch.inference_mode():
        return comfy.sd.load_checkpoint_guess_config(str(ensure_tiny_checkpoint()), output_vae=False,
                                                     output_clip=True)[1]


def _photos(seed: int, count: int) -> torch.Tensor:
    return torch.rand(count, 96, 128, 3, generator=torch.Generator().manual_seed(seed))


def test_clip_i_feature_is_the_pooled_output_before_the_projection(clip_vision) -> None:
    images = _photos(0, 3)
    pooled, projected = ev.clip_image_features(clip_vision, images)
    assert pooled.shape == (3, 64) and projected.shape == (3, 768)
    with torch.no_grad():
        reprojected = clip_vision.model.visual_projection(pooled)
    assert torch.allclose(reprojected, projected, atol=1e-5)  # the feature the projection is applied to
    again, _ = ev.clip_image_features(clip_vision, images[1:2])  # batches do not mix
    assert torch.allclose(again[0], pooled[1], atol=1e-5)


def test_clip_t_text_feature_is_comfyuis_pooled_output_through_the_files_projection(clip) -> None:
    """The pooled output at the end-of-text token, before any projection (SD1.5 files carry none),
    times the CLIP file's text projection: HF's CLIPModel.get_text_features."""
    text = "photo of a ball on a table"
    projection = torch.randn(768, 768, generator=torch.Generator().manual_seed(3)) / 768**0.5
    ours = ev.clip_text_features(clip, [text], projection)
    _, pooled = clip.encode_from_tokens(clip.tokenize(text), return_pooled=True)
    model = clip.cond_stage_model.clip_l
    tokens = torch.tensor([[t for t, _ in clip.tokenizer.clip_l.tokenize_with_weights(text)[0]]])
    with torch.no_grad():
        hidden, _, projected_by_comfy, unprojected = model.transformer(tokens, dtype=torch.float32)
    eos = len(clip.tokenizer.clip_l.tokenizer(text)["input_ids"]) - 1  # start, words, end-of-text
    assert torch.allclose(unprojected[0], hidden[0, eos], atol=1e-5)  # pooled = the end-of-text position
    assert torch.allclose(pooled.float(), unprojected, atol=1e-4)
    assert ours.shape == (1, 768)
    assert torch.allclose(ours, unprojected @ projection, atol=1e-4)


def test_evaluate_gives_every_score_and_names_what_is_missing(clip_vision, clip) -> None:
    generated, references = _photos(1, 4), _photos(2, 3)
    projection = torch.randn(768, 768, generator=torch.Generator().manual_seed(4)) / 768**0.5
    encoders = ev.Encoders(clip_vision=clip_vision, clip=clip, text_projection=projection)
    scores = ev.evaluate("photo of a embedding:tl_ball ball", generated, references, encoders)
    assert scores.text_for_clip_t == "photo of a ball"
    assert -1 <= scores.clip_i <= 1 and -1 <= scores.clip_t <= 1
    pooled_gen, _ = ev.clip_image_features(clip_vision, generated)
    pooled_ref, _ = ev.clip_image_features(clip_vision, references)
    assert scores.clip_i == pytest.approx(ev.mean_pairwise_cosine(pooled_gen, pooled_ref), abs=1e-6)
    same = ev.evaluate("a ball", references, references, encoders)
    assert same.clip_i > scores.clip_i  # identical sets are closer than different ones
    no_text = ev.evaluate("a ball", generated, references,
                          ev.Encoders(clip_vision=clip_vision, missing={"clip_t": "no projection"}))
    assert no_text.clip_t is None and no_text.clip_i == pytest.approx(scores.clip_i, abs=1e-6)
    assert no_text.notes == ["no projection"]
