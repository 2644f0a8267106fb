"""Apply TL Weights on the real ComfyUI libraries: same result as the stock LoRA loader plus `embedding:NAME`,
strength 0 gives the base model, chaining, untouched inputs, refusals of weights for another architecture.

The tiny SD1.5 checkpoint is loaded inside `torch.inference_mode()` and everything runs inside it, as in
ComfyUI's executor. Files are laid out like the trainer writes them.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from headless.comfy_boot import boot_comfy
from headless.tiny_model import ensure_tiny_checkpoint
from textloc.errors import TLInputError
from textloc.weights import apply
from textloc.weights.files import build_metadata, save_embedding, save_kv_deltas
from textloc.weights.trained import TrainedWeights

pytestmark = pytest.mark.host

RUN = "textual_localization/tl_host_run.safetensors"
PROMPT = "photo of a embedding:tl_ball ball"


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    boot_comfy()
    import folder_paths

    root = tmp_path_factory.mktemp("apply_models")
    out = {"loras": root / "loras", "embeddings": root / "embeddings"}
    for kind, folder in out.items():
        folder.mkdir()
        folder_paths.add_model_folder_path(kind, str(folder))
    return out


@pytest.fixture(scope="module")
def sd15(folders):
    import comfy.sd

    with torch.inference_mode():
        model, clip, vae = comfy.sd.load_checkpoint_guess_config(
            str(ensure_tiny_checkpoint()), output_vae=True, output_clip=True,
            embedding_directory=[str(folders["embeddings"])])[:3]
    return model, clip, vae


def _sks_row(clip) -> torch.Tensor:
    table = clip.cond_stage_model.clip_l.transformer.get_input_embeddings().weight
    return table[clip.tokenize("sks")["l"][0][1][0]].float().reshape(1, -1)


def _trained(model, clip, token: str = "tl_ball", seed: int = 0) -> TrainedWeights:
    """What a run hands out: small K/V deltas and a token moved away from its init word."""
    gen = torch.Generator().manual_seed(seed)
    shapes = {k: s for k, s in apply.model_kv_shapes(model).items() if ".to_k." in k or ".to_v." in k}
    deltas = {k: torch.randn(s, generator=gen) * 0.05 for k, s in shapes.items()}
    vector = _sks_row(clip) + torch.randn(1, 768, generator=gen) * 0.05
    meta = build_metadata(tokens=[token], class_words=["ball"], init_words=["sks"], steps=30, seed=seed,
                          base_model_family="SD15", base_hash=f"host{seed}")
    return TrainedWeights(kv_deltas=deltas, token_vectors={token: {"clip_l": vector}}, metadata=meta)


@pytest.fixture(scope="module")
def run_files(sd15, folders) -> TrainedWeights:
    """The trained weights written as files: K/V under loras/, the token under embeddings/."""
    model, clip, _ = sd15
    trained = _trained(model, clip)
    save_kv_deltas(folders["loras"] / RUN, trained.kv_deltas, trained.metadata)
    save_embedding(folders["embeddings"] / "tl_ball.safetensors", trained.token_vectors["tl_ball"],
                   {**trained.metadata, "token": "tl_ball"})
    return trained


def _from_file() -> TrainedWeights:
    import folder_paths

    path = apply.resolve_weights_name(RUN, lambda n: folder_paths.get_full_path("loras", n))
    return apply.load_weights_file(path, lambda n: folder_paths.get_full_path("embeddings", n))


def _effective_kv(patcher) -> dict[str, torch.Tensor]:
    """The attn2 weights as sampling sees them: loaded the way KSampler loads a model."""
    import comfy.model_management

    comfy.model_management.load_models_gpu([patcher], force_full_load=True)
    return {k: v.detach().clone() for k, v in patcher.model.state_dict().items() if ".attn2.to_" in k}


def _sample(model, clip, vae, text: str) -> tuple[torch.Tensor, torch.Tensor]:
    import nodes

    positive = clip.encode_from_tokens_scheduled(clip.tokenize(text))
    negative = clip.encode_from_tokens_scheduled(clip.tokenize(""))
    latent = nodes.common_ksampler(model, 7, 3, 7.0, "euler", "normal", positive, negative,
                                   {"samples": torch.zeros(1, 4, 8, 8)})[0]["samples"]
    return latent, vae.decode(latent)


def _cond(clip, text: str) -> torch.Tensor:
    return clip.encode_from_tokens_scheduled(clip.tokenize(text))[0][0]


def test_apply_from_file_equals_the_stock_lora_loader_and_embedding(sd15, run_files) -> None:
    import nodes

    model, clip, vae = sd15
    with torch.inference_mode():
        stock_model = nodes.LoraLoaderModelOnly().load_lora_model_only(model, RUN, 1.0)[0]
        applied = apply.apply_weights(model, clip, _from_file(), 1.0, 1.0, RUN)
        assert applied.trigger == "embedding:tl_ball ball"
        assert set(applied.model.patches) == set(stock_model.patches) == set(run_files.kv_deltas)
        stock_weights, our_weights = _effective_kv(stock_model), _effective_kv(applied.model)
        assert all(torch.equal(stock_weights[k], our_weights[k]) for k in stock_weights)
        assert any(not torch.equal(stock_weights[k], v) for k, v in _effective_kv(model).items())

        assert torch.equal(_cond(applied.clip, PROMPT), _cond(clip, PROMPT))  # clip: the stock file lookup
        stock_latent, stock_image = _sample(stock_model, clip, vae, PROMPT)
        our_latent, our_image = _sample(applied.model, applied.clip, vae, PROMPT)
    assert torch.equal(stock_latent, our_latent) and torch.equal(stock_image, our_image)


def test_strength_zero_is_the_base_model_and_the_init_word(sd15, run_files) -> None:
    model, clip, vae = sd15
    with torch.inference_mode():
        applied = apply.apply_weights(model, clip, run_files, 0.0, 0.0, "tl_result")
        assert applied.model.patches == {}
        base_weights, our_weights = _effective_kv(model), _effective_kv(applied.model)
        assert all(torch.equal(base_weights[k], our_weights[k]) for k in base_weights)
        assert torch.equal(_cond(applied.clip, PROMPT), _cond(clip, "photo of a sks ball"))
        base = _sample(model, clip, vae, "photo of a sks ball")
        ours = _sample(applied.model, applied.clip, vae, PROMPT)
    assert torch.equal(base[0], ours[0]) and torch.equal(base[1], ours[1])


def test_model_strength_scales_the_delta_and_token_strength_blends_linearly(sd15, run_files) -> None:
    model, clip, _ = sd15
    key = next(iter(run_files.kv_deltas))
    with torch.inference_mode():
        applied = apply.apply_weights(model, clip, run_files, 0.5, 0.25, "tl_result")
        effective = _effective_kv(applied.model)[key]
        base = _effective_kv(model)[key]
        tokens = applied.clip.tokenize(PROMPT)["l"][0]
    torch.testing.assert_close(effective, base + 0.5 * run_files.kv_deltas[key], atol=1e-6, rtol=0)
    vector = tokens[4][0]
    expected = _sks_row(clip) + 0.25 * (run_files.token_vectors["tl_ball"]["clip_l"] - _sks_row(clip))
    assert torch.is_tensor(vector)
    torch.testing.assert_close(vector.reshape(1, -1), expected, atol=1e-6, rtol=0)


def test_inputs_stay_untouched_and_in_memory_tokens_stay_private(sd15) -> None:
    model, clip, _ = sd15
    trained = _trained(model, clip, token="tl_memory_only", seed=1)
    with torch.inference_mode():
        applied = apply.apply_weights(model, clip, trained, 1.0, 1.0, "tl_result")
        ours = applied.clip.tokenize("a embedding:tl_memory_only, ball")["l"][0]
        stock = clip.tokenize("a embedding:tl_memory_only, ball")["l"][0]
    assert torch.is_tensor(ours[2][0]) and torch.equal(ours[2][0].reshape(1, -1),
                                                       trained.token_vectors["tl_memory_only"]["clip_l"])
    assert [e[0] for e in ours[3:5]] == [267, 1069]  # the comma and 'ball' stay text, as in the stock lookup
    assert not any(torch.is_tensor(e[0]) for e in stock)
    assert model.patches == {} and clip.tokenizer.clip_l is not applied.clip.tokenizer.clip_l
    assert "_tl_vectors" not in vars(clip.tokenizer.clip_l)


def test_chained_applies_and_loras_before_and_after_add_up(sd15, run_files, folders) -> None:
    import nodes

    model, clip, _ = sd15
    box = _trained(model, clip, token="tl_box", seed=2)
    plain = "textual_localization/plain_diff.safetensors"
    extra = {k: torch.full_like(v, 0.01) for k, v in run_files.kv_deltas.items()}
    save_kv_deltas(folders["loras"] / plain, extra, build_metadata())
    key = next(iter(extra))
    with torch.inference_mode():
        before = nodes.LoraLoaderModelOnly().load_lora_model_only(model, plain, 1.0)[0]
        first = apply.apply_weights(before, clip, _from_file(), 1.0, 1.0, RUN)
        second = apply.apply_weights(first.model, first.clip, box, 1.0, 1.0, "tl_result")
        after = nodes.LoraLoaderModelOnly().load_lora_model_only(second.model, plain, 1.0)[0]
        tokens = second.clip.tokenize("embedding:tl_ball and embedding:tl_box")["l"][0]
        effective = _effective_kv(after)[key]
        base = _effective_kv(model)[key]
    assert len(after.patches[key]) == 4
    expected = base + 2 * extra[key].half().float() + run_files.kv_deltas[key].half().float() + box.kv_deltas[key]
    torch.testing.assert_close(effective, expected, atol=1e-5, rtol=0)
    vectors = [e[0] for e in tokens if torch.is_tensor(e[0])]
    assert torch.equal(vectors[0].reshape(1, -1), run_files.token_vectors["tl_ball"]["clip_l"])
    assert torch.equal(vectors[1].reshape(1, -1), box.token_vectors["tl_box"]["clip_l"])
    assert first.clip.tokenizer.clip_l._tl_vectors.keys() == {"tl_ball"}  # the first CLIP did not change


def test_weights_for_another_architecture_are_refused(sd15, run_files) -> None:
    model, clip, _ = sd15
    key = next(iter(run_files.kv_deltas))
    sdxl_meta = {**run_files.metadata, "base_model_family": "SDXL"}
    wide = replace(run_files, kv_deltas={key: torch.zeros(320, 2048)}, metadata=sdxl_meta)
    with pytest.raises(TLInputError, match=r"\(320, 2048\).*\(320, 768\).*'SDXL'.*'SD15'"):
        apply.apply_weights(model, clip, wide, 1.0, 1.0, "sdxl.safetensors")
    extra_layer = "diffusion_model.input_blocks.4.1.transformer_blocks.1.attn2.to_k.weight"
    deeper = replace(run_files, kv_deltas={extra_layer: torch.zeros(640, 2048)}, metadata=sdxl_meta)
    with pytest.raises(TLInputError, match="does not have"):
        apply.apply_weights(model, clip, deeper, 1.0, 1.0, "sdxl.safetensors")
    g_only = replace(run_files, token_vectors={"tl_ball": {"clip_g": torch.zeros(1, 1280)}}, metadata=sdxl_meta)
    with pytest.raises(TLInputError, match="clip_l.*width 768.*nothing"):
        apply.apply_weights(model, clip, g_only, 1.0, 1.0, "sdxl.safetensors")
    assert model.patches == {}


def test_two_runs_of_one_token_are_both_reachable_by_their_run_names(sd15, folders) -> None:
    """Each run's token sits in embeddings/<run>/: ComfyUI's own tokenizer reads `embedding:<run>/<token>` from
    there, Apply names that in its trigger, and chained Applies of both runs keep both apart."""
    import folder_paths

    model, clip, _ = sd15
    runs = {}
    for name, seed in (("twin_none", 11), ("twin_hard", 12)):
        trained = _trained(model, clip, token="tl_twin", seed=seed)
        meta = {**trained.metadata, "run_name": name}
        save_kv_deltas(folders["loras"] / "textual_localization" / f"{name}.safetensors", trained.kv_deltas, meta)
        save_embedding(folders["embeddings"] / name / "tl_twin.safetensors", trained.token_vectors["tl_twin"],
                       {**meta, "token": "tl_twin"})
        runs[name] = trained.token_vectors["tl_twin"]["clip_l"]

    def vector(tokenizing_clip, text: str) -> torch.Tensor:
        (found,) = [e[0] for e in tokenizing_clip.tokenize(text)["l"][0] if torch.is_tensor(e[0])]
        return found.reshape(1, -1)

    with torch.inference_mode():
        applied = {}
        for name in runs:
            path = apply.resolve_weights_name(f"textual_localization/{name}.safetensors",
                                              lambda n: folder_paths.get_full_path("loras", n))
            loaded = apply.load_weights_file(path, lambda n: folder_paths.get_full_path("embeddings", n))
            applied[name] = apply.apply_weights(model, clip, loaded, 1.0, 1.0, str(path))
            assert applied[name].trigger == f"embedding:{name}/tl_twin ball"
            assert torch.equal(vector(clip, applied[name].trigger), runs[name])  # the stock lookup, from the file
            assert torch.equal(vector(applied[name].clip, applied[name].trigger), runs[name])  # from memory
        both = apply.apply_weights(applied["twin_none"].model, applied["twin_none"].clip,
                                   apply.load_weights_file(
                                       folders["loras"] / "textual_localization" / "twin_hard.safetensors",
                                       lambda n: folder_paths.get_full_path("embeddings", n)), 1.0, 1.0, "twin_hard")
        for name in runs:
            assert torch.equal(vector(both.clip, f"a embedding:{name}/tl_twin ball"), runs[name])
