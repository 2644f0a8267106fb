"""Show Token Attention on the real ComfyUI libraries: word -> token mapping with the real tokenizer,
only the conditional rows of the CFG batch, steps and timestep ranges, and no trace left on the model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from headless.comfy_boot import boot_comfy
from headless.tiny_model import ensure_tiny_checkpoint
from textloc.attention import token_attention as ta
from textloc.errors import TLInputError
from textloc.weights.apply import clip_with_tokens
from textloc.weights.files import build_metadata, save_embedding

pytestmark = pytest.mark.host

STEPS = 4


@pytest.fixture(scope="module")
def sd15(tmp_path_factory: pytest.TempPathFactory):
    boot_comfy()
    import comfy.sd

    embeddings = tmp_path_factory.mktemp("attention_embeddings")
    save_embedding(embeddings / "tl_file.safetensors", {"clip_l": torch.full((1, 768), 0.01)}, build_metadata())
    with torch.inference_mode():
        model, clip, vae = comfy.sd.load_checkpoint_guess_config(
            str(ensure_tiny_checkpoint()), output_vae=True, output_clip=True, embedding_directory=[str(embeddings)])[:3]
    return model, clip, vae


def _sampler(seed: int = 3, denoise: float = 1.0):
    import nodes

    def sample(model, positive, negative, latent):
        return nodes.common_ksampler(model, seed, STEPS, 7.0, "euler", "normal", positive, negative, latent,
                                     denoise=denoise)[0]

    return sample


def _empty(batch: int = 1) -> dict:
    return {"samples": torch.zeros(batch, 4, 8, 8)}


# ---------------------------------------------------------------------------------------------- words


def test_words_map_to_their_tokens(sd15) -> None:
    _, clip, _ = sd15
    memory = clip_with_tokens(clip, {"tl_mem": {"clip_l": torch.full((1, 768), 0.02)}})
    prompt = "photo of a embedding:tl_mem ball next to a ball, embedding:tl_file and a tennis racket"
    words = ["embedding:tl_mem", "ball", "embedding:tl_file", "tennis racket"]
    located = {w.word: w.positions for w in ta.locate_words(memory, prompt, words)}
    # [BOS] photo of a <tl_mem> ball next to a ball , <tl_file> and a tennis racket
    assert located == {"embedding:tl_mem": (4,), "ball": (5, 9), "embedding:tl_file": (11,),
                       "tennis racket": (14, 15)}


def test_a_word_split_into_several_tokens_covers_all_of_them(sd15) -> None:
    _, clip, _ = sd15
    word = "photorealistic"
    pieces = [e for e in clip.tokenize(word)["l"][0] if e[0] not in (49406, 49407)]
    assert len(pieces) > 1  # BPE splits it
    (located,) = ta.locate_words(clip, f"a {word} ball", [word])
    assert located.positions == tuple(range(2, 2 + len(pieces)))


def test_positions_count_across_77_token_chunks(sd15) -> None:
    _, clip, _ = sd15
    prompt = " ".join(["red"] * 80) + " ball"
    (located,) = ta.locate_words(clip, prompt, ["ball"])
    assert located.positions[0] >= 77  # second chunk: the conditioning is [1, 154, 768]


def test_missing_words_and_unknown_embeddings_are_refused(sd15) -> None:
    _, clip, _ = sd15
    with pytest.raises(TLInputError, match="'dog' does not occur"):
        ta.locate_words(clip, "photo of a ball", ["dog"])
    with pytest.raises(TLInputError, match="not an embedding ComfyUI can find"):
        ta.locate_words(clip, "photo of a embedding:tl_nowhere ball", ["embedding:tl_nowhere"])


# ---------------------------------------------------------------------------------------------- rows


def _record_call(model, clip, texts: list[str], order: list[int]) -> dict:
    """One UNet call on a [texts] batch with ComfyUI's cond_or_uncond, maps of column 4 per layer."""
    import comfy.patcher_extension

    acc = ta.AttentionAccumulator(columns=[4])
    hooked = model.clone()
    acc.install(hooked)
    context = torch.cat([clip.encode_from_tokens(clip.tokenize(t)).float() for t in texts])
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0)).expand(len(texts), -1, -1, -1)
    options = dict(hooked.model_options["transformer_options"], cond_or_uncond=order)
    comfy.patcher_extension.merge_nested_dicts(options.setdefault("wrappers", {}), hooked.wrappers, copy_dict1=False)
    hooked.model.apply_model(x, torch.full((len(texts),), 2.0), c_crossattn=context, transformer_options=options)
    return {r.layer_key: r.maps for r in acc.layer_means()}


def test_only_the_conditional_rows_of_the_cfg_batch_are_recorded(sd15) -> None:
    model, clip, _ = sd15
    cond, uncond = "photo of a red ball", "blurry dark noise texture"
    with torch.inference_mode():
        mixed = _record_call(model, clip, [uncond, cond], order=[1, 0])
        cond_alone = _record_call(model, clip, [cond], order=[0])
        uncond_alone = _record_call(model, clip, [uncond], order=[0])
        uncond_only_call = _record_call(model, clip, [uncond], order=[1])
    assert uncond_only_call == {}
    assert mixed.keys() == cond_alone.keys() and len(mixed) == 10
    for key, maps in mixed.items():
        assert maps.shape[0] == 1
        torch.testing.assert_close(maps, cond_alone[key], atol=1e-5, rtol=1e-4)
    assert any((mixed[k] - uncond_alone[k]).abs().max() > 1e-3 for k in mixed)


# ---------------------------------------------------------------------------------------------- runs


def test_a_run_leaves_no_trace_on_the_model_and_samples_like_ksampler(sd15) -> None:
    model, clip, vae = sd15
    sample = _sampler()
    with torch.inference_mode():
        positive = clip.encode_from_tokens_scheduled(clip.tokenize("photo of a red ball"))
        negative = clip.encode_from_tokens_scheduled(clip.tokenize(""))
        before = sample(model, positive, negative, _empty(2))["samples"]
        result = ta.show_token_attention(model, clip, vae, "photo of a red ball", "", "red, ball", _empty(2), sample)
        after = sample(model, positive, negative, _empty(2))["samples"]
        plain_images = vae.decode(before)
    assert torch.equal(before, after)
    assert model.wrappers == {} and "patches_replace" not in model.model_options["transformer_options"]
    assert "wrappers" not in model.model_options["transformer_options"]
    torch.testing.assert_close(result.images, plain_images, atol=2e-3, rtol=0)  # exact softmax vs fused kernel
    assert result.calls == STEPS  # cond and uncond share one batch per step
    assert result.resolutions == [4, 2]  # 64 px: latent 8 -> maps 8, 4, 2; the finest is left out
    assert result.maps.shape == (2, 2, 64, 64) and result.masks.shape == (4, 64, 64)
    assert result.overlays().shape == (4, 64, 64, 3)
    assert torch.allclose(result.maps.amax(dim=(-2, -1)), torch.ones(2, 2), atol=1e-4)


def test_timestep_range_limits_the_recorded_steps(sd15) -> None:
    model, clip, vae = sd15
    with torch.inference_mode():
        late = ta.show_token_attention(model, clip, vae, "photo of a ball", "", "ball", _empty(), _sampler(),
                                       start_percent=0.5, end_percent=1.0, resolutions="all")
        with pytest.raises(TLInputError, match="no sampling step"):
            ta.show_token_attention(model, clip, vae, "photo of a ball", "", "ball", _empty(), _sampler(),
                                    start_percent=0.42, end_percent=0.46)  # between two steps
    assert 0 < late.calls < STEPS
    assert late.resolutions == [8, 4, 2]


def test_photos_can_be_inspected_instead_of_noise(sd15) -> None:
    model, clip, vae = sd15
    photos = torch.rand(2, 96, 128, 3, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        result = ta.show_token_attention(model, clip, vae, "photo of a ball", "", "ball",
                                         {"samples": vae.encode(photos)}, _sampler(denoise=0.5),
                                         normalization="none")
    assert result.images.shape == (2, 96, 128, 3)
    assert result.maps.shape == (2, 1, 96, 128)
    assert 0 < result.calls < STEPS + 1
    assert 0 < result.maps.mean() < 0.5  # raw probabilities: one token's share of each pixel's attention


def test_unknown_options_are_refused_before_sampling(sd15, tmp_path: Path) -> None:
    model, clip, vae = sd15
    with pytest.raises(TLInputError, match="normalization"):
        ta.show_token_attention(model, clip, vae, "a ball", "", "ball", _empty(), _sampler(), normalization="log")
    with pytest.raises(TLInputError, match="start_percent"):
        ta.show_token_attention(model, clip, vae, "a ball", "", "ball", _empty(), _sampler(), start_percent=1.0)
