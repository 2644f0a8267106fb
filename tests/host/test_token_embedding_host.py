"""Token training through ComfyUI's real CLIP, and the trainer's files through ComfyUI's stock loaders.

The tiny SD1.5 checkpoint is loaded inside `torch.inference_mode()`, as ComfyUI's executor does, and
training happens outside it. SD2.x and SDXL text encoders are ComfyUI's own classes with fewer layers
and seeded weights (the real ones are too large for a quick test); tokenizers are the real ones.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest
import torch

from headless.comfy_boot import boot_comfy
from headless.tiny_model import ensure_tiny_checkpoint
from textloc.errors import TLInputError
from textloc.training import token_embedding as te
from textloc.weights import files as weights

pytestmark = pytest.mark.host


@pytest.fixture(scope="module")
def embeddings_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("embeddings")


@pytest.fixture(scope="module")
def sd15(embeddings_dir: Path):
    boot_comfy()
    import comfy.sd

    path = ensure_tiny_checkpoint()
    with torch.inference_mode():
        model, clip, _vae = comfy.sd.load_checkpoint_guess_config(
            str(path), output_vae=True, output_clip=True, embedding_directory=[str(embeddings_dir)]
        )[:3]
    return model, clip


def _small_clip(family: str, embeddings_dir: Path):
    """A real ComfyUI CLIP object of `family` with 3-layer encoders and seeded weights, built in inference mode."""
    import comfy.sd
    import comfy.sdxl_clip
    import comfy.supported_models_base
    import comfy.text_encoders.sd2_clip as sd2

    if family == "sdxl":
        target = comfy.supported_models_base.ClipTarget(comfy.sdxl_clip.SDXLTokenizer, comfy.sdxl_clip.SDXLClipModel)
        options = {"clip_l_model_config": {"num_hidden_layers": 3}, "clip_g_model_config": {"num_hidden_layers": 3}}
    else:
        target = comfy.supported_models_base.ClipTarget(sd2.SD2Tokenizer, sd2.SD2ClipModel)
        options = {"clip_h_model_config": {"num_hidden_layers": 3}}
    gen = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        clip = comfy.sd.CLIP(target, embedding_directory=[str(embeddings_dir)], model_options=options)
        for name, param in clip.cond_stage_model.named_parameters():
            if "layer_norm" in name:
                param.fill_(1.0 if name.endswith("weight") else 0.0)
            elif name.endswith("bias"):
                param.zero_()
            else:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.02)
    return clip


@pytest.fixture(scope="module")
def sdxl(embeddings_dir: Path):
    boot_comfy()
    return _small_clip("sdxl", embeddings_dir)


@pytest.fixture(scope="module")
def sd2(embeddings_dir: Path):
    boot_comfy()
    return _small_clip("sd2", embeddings_dir)


def _clip_layers(clip) -> list[torch.nn.Module]:
    return [m for m in clip.cond_stage_model.modules() if type(m).__name__ == "CLIPLayer"]


# ---------------------------------------------------------------------------------------------- positions


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("photo of a <new1> doll", [4]),
        ("a photo of <new1>", [4]),
        ("a photo of a <new1> dog", [5]),
        ("<new1>, on a table", [1]),
        ("(photo:1.2) of a <new1> doll", [4]),
        ("a <new1> next to another <new1>", [2, 6]),
    ],
)
def test_single_concept_positions(sd15, template: str, expected: list[int]) -> None:
    _, clip = sd15
    token = te.TrainableToken.from_clip(clip, "<new1>")
    prompt = te.build_prompt_tokens(clip, template, {"<new1>": token})
    assert prompt.positions == {"<new1>": expected}
    chunk = prompt.tokens["l"][0]
    for pos in expected:
        assert chunk[pos][0] is token.vectors["clip_l"]
    assert sum(torch.is_tensor(e[0]) for e in chunk) == len(expected)
    plain = clip.tokenize(prompt.text)["l"][0]
    assert [e[0] for i, e in enumerate(plain) if i not in expected] == [
        e[0] for i, e in enumerate(chunk) if i not in expected
    ]


@pytest.mark.parametrize("init_words", [("sks", "sks"), ("sks", "toy")])
def test_two_concept_positions(sd15, init_words: tuple[str, str]) -> None:
    _, clip = sd15
    tokens = {
        "<new1>": te.TrainableToken.from_clip(clip, "<new1>", init_words[0]),
        "<new2>": te.TrainableToken.from_clip(clip, "<new2>", init_words[1]),
    }
    prompt = te.build_prompt_tokens(clip, "photo of a <new1> bucket and a <new2> doll", tokens)
    assert prompt.positions == {"<new1>": [4], "<new2>": [8]}
    chunk = prompt.tokens["l"][0]
    assert chunk[4][0] is tokens["<new1>"].vectors["clip_l"]
    assert chunk[8][0] is tokens["<new2>"].vectors["clip_l"]
    # the paper's code hard-codes 8 for this one; the tokenizer says 9 (method.md 2.4)
    prompt = te.build_prompt_tokens(clip, "photo of a <new1> robot toy and a <new2> dinosaur toy", tokens)
    assert prompt.positions == {"<new1>": [4], "<new2>": [9]}


def test_position_in_second_chunk(sd15) -> None:
    _, clip = sd15
    token = te.TrainableToken.from_clip(clip, "<new1>")
    filler = ", ".join(["a red house"] * 30)
    prompt = te.build_prompt_tokens(clip, f"{filler} and a <new1> doll", {"<new1>": token})
    chunks = prompt.tokens["l"]
    assert len(chunks) == 2
    (pos,) = prompt.positions["<new1>"]
    assert pos >= len(chunks[0])
    assert chunks[1][pos - len(chunks[0])][0] is token.vectors["clip_l"]


def test_init_word_of_several_tokens_is_refused(sd15) -> None:
    _, clip = sd15
    with pytest.raises(TLInputError) as err:
        te.TrainableToken.from_clip(clip, "<new1>", "xyzzyqq")
    assert "init word" in str(err.value) and "'xyzzyqq' is 4 tokens" in str(err.value) and "'sks'" in str(err.value)
    with pytest.raises(TLInputError, match="one plain word"):
        te.TrainableToken.from_clip(clip, "<new1>", "red dog")


def test_bad_templates_are_refused(sd15) -> None:
    _, clip = sd15
    token = te.TrainableToken.from_clip(clip, "<new1>")
    with pytest.raises(TLInputError, match="does not contain"):
        te.build_prompt_tokens(clip, "photo of a doll", {"<new1>": token})
    with pytest.raises(TLInputError, match="does not contain"):
        te.build_prompt_tokens(clip, "photo of a <new10> doll", {"<new1>": token})
    with pytest.raises(TLInputError, match="word of its own"):
        te.build_prompt_tokens(clip, "photo of a x<new1>y doll", {"<new1>": token})


def test_init_vector_is_the_init_words_row(sd15) -> None:
    _, clip = sd15
    token = te.TrainableToken.from_clip(clip, "<new1>", "sks")
    table = clip.cond_stage_model.clip_l.transformer.get_input_embeddings().weight
    assert token.vectors["clip_l"].dtype == torch.float32 and token.vectors["clip_l"].requires_grad
    assert torch.equal(token.vectors["clip_l"].detach()[0], table[48136].float())


# ---------------------------------------------------------------------------------------------- training


def test_gradient_reaches_each_concept_through_real_clip(sd15) -> None:
    _, clip = sd15
    tokens = {
        "<new1>": te.TrainableToken.from_clip(clip, "<new1>"),
        "<new2>": te.TrainableToken.from_clip(clip, "<new2>", "toy"),
    }
    before = {k: v.clone() for k, v in clip.cond_stage_model.state_dict().items()}
    with torch.no_grad(), torch.inference_mode():
        reference = clip.encode_from_tokens(clip.tokenize("photo of a sks bucket and a toy doll"))

    with te.trainable_text_encoder(clip):
        prompt = te.build_prompt_tokens(clip, "photo of a <new1> bucket and a <new2> doll", tokens)
        start = time.perf_counter()
        cond, pooled = te.encode(clip, prompt.tokens)
        loss = cond[0, prompt.positions["<new1>"]].square().mean() - cond[0, prompt.positions["<new2>"]].mean()
        loss.backward()
        seconds = time.perf_counter() - start
    print(f"\nCLIP-L fwd+bwd {seconds:.2f} s, cond {cond.dtype}, weights "
          f"{clip.cond_stage_model.clip_l.transformer.text_model.encoder.layers[0].mlp.fc1.weight.dtype}")

    assert torch.equal(cond.detach(), reference)  # out-of-place forward, same numbers
    assert pooled is not None and pooled.shape == (1, 768)
    for token in tokens.values():
        grad = token.vectors["clip_l"].grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0
    assert all(p.grad is None for p in clip.cond_stage_model.parameters())
    after = clip.cond_stage_model.state_dict()
    # bit-identical; NaN counts as equal (SD1.5 files carry no text_projection: ComfyUI leaves it uninitialised)
    for k in before:
        torch.testing.assert_close(after[k], before[k], rtol=0, atol=0, equal_nan=True, msg=k)
    assert not any(t.is_inference() for t in after.values())


def test_forward_is_restored_after_the_block_and_after_errors(sd15) -> None:
    import comfy.clip_model

    _, clip = sd15
    layers = _clip_layers(clip)
    assert len(layers) == 12
    with pytest.raises(ValueError, match="inside"):
        with te.trainable_text_encoder(clip):
            assert te.is_trainable(clip)
            raise ValueError("inside")
    assert all("forward" not in layer.__dict__ for layer in layers)
    assert comfy.clip_model.CLIPLayer.forward.__name__ == "forward"
    assert not te.is_trainable(clip)
    with pytest.raises(RuntimeError, match="trainable_text_encoder"):
        te.encode(clip, clip.tokenize("a photo"))

    # the stock in-place forward really is back: backward into a token vector fails again (G7)
    token = te.TrainableToken.from_clip(clip, "<new1>")
    prompt = te.build_prompt_tokens(clip, "photo of a <new1> doll", {"<new1>": token})
    with torch.enable_grad():
        cond = clip.encode_from_tokens(prompt.tokens)
        with pytest.raises(RuntimeError, match="inplace"):
            cond.sum().backward()


def test_saved_embedding_reproduces_the_trained_conditioning(sd15, embeddings_dir: Path) -> None:
    _, clip = sd15
    token = te.TrainableToken.from_clip(clip, "<new1>")
    with torch.no_grad():
        token.vectors["clip_l"].add_(torch.randn(1, 768, generator=torch.Generator().manual_seed(1)) * 0.05)
    with te.trainable_text_encoder(clip):
        prompt = te.build_prompt_tokens(clip, "photo of a <new1> doll", {"<new1>": token})
        trained, _ = te.encode(clip, prompt.tokens)
    weights.save_embedding(embeddings_dir / "tl_host_sd15.safetensors", token.state(), weights.build_metadata(token="<new1>"))

    with torch.inference_mode():  # the stock CLIPTextEncode path
        stock_tokens = clip.tokenize("photo of a embedding:tl_host_sd15 doll")
        stock = clip.encode_from_tokens(stock_tokens)
    assert te.find_embedding_positions(clip.tokenize("photo of a embedding:tl_host_sd15 doll")) == {"l": [4]}
    torch.testing.assert_close(stock, trained.detach(), atol=1e-3, rtol=0)
    with torch.inference_mode():
        plain = clip.encode_from_tokens(clip.tokenize("photo of a sks doll"))
    assert (plain - stock)[0, 4:].abs().max() > 1e-3  # the embedding really changed something


# ---------------------------------------------------------------------------------------------- SD2.x and SDXL


@pytest.mark.parametrize("family", ["sd2", "sdxl"])
def test_other_families_train_and_round_trip(family: str, request: pytest.FixtureRequest, embeddings_dir: Path) -> None:
    clip = request.getfixturevalue(family)
    keys = {"sd2": {"h": "clip_h"}, "sdxl": {"l": "clip_l", "g": "clip_g"}}[family]
    widths = {"clip_h": 1024, "clip_l": 768, "clip_g": 1280}
    token = te.TrainableToken.from_clip(clip, "<new1>")
    assert token.branch_keys == keys
    assert {k: tuple(v.shape) for k, v in token.vectors.items()} == {f: (1, widths[f]) for f in keys.values()}

    prompt = te.build_prompt_tokens(clip, "a photo of a <new1> doll", {"<new1>": token})
    assert prompt.positions == {"<new1>": [5]}
    with te.trainable_text_encoder(clip):
        cond, _ = te.encode(clip, prompt.tokens)
        cond[0, 5].square().sum().backward()
    assert cond.shape[-1] == sum(widths[f] for f in keys.values())
    for vector in token.vectors.values():
        assert vector.grad is not None and vector.grad.abs().sum() > 0

    name = f"tl_host_{family}"
    weights.save_embedding(embeddings_dir / f"{name}.safetensors", token.state(), {})
    with torch.inference_mode():
        stock = clip.encode_from_tokens(clip.tokenize(f"a photo of a embedding:{name} doll"))
    torch.testing.assert_close(stock, cond.detach(), atol=1e-3, rtol=0)


# ---------------------------------------------------------------------------------------------- K/V files


def _kv_weights(model) -> dict[str, torch.Tensor]:
    return {
        k: v for k, v in model.model.state_dict().items()
        if k.endswith((".attn2.to_k.weight", ".attn2.to_v.weight"))
    }


def test_kv_file_applies_with_the_stock_lora_loader(sd15, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    import comfy.lora
    import comfy.sd
    import comfy.utils

    model, _ = sd15
    base = {k: v.detach().clone() for k, v in _kv_weights(model).items()}
    assert len(base) == 20  # 10 attn2 layers in the tiny UNet, K and V each
    gen = torch.Generator().manual_seed(3)
    deltas = {k: torch.randn(v.shape, generator=gen) * 0.01 for k, v in base.items()}
    meta = weights.build_metadata(base_model_family="sd15", base_hash=weights.kv_base_hash(base))
    path = tmp_path / "tl_kv.safetensors"
    weights.save_kv_deltas(path, deltas, meta)

    lora_sd = comfy.utils.load_torch_file(str(path), safe_load=True)
    with caplog.at_level(logging.WARNING):
        with torch.inference_mode():
            patched, _ = comfy.sd.load_lora_for_models(model, None, lora_sd, 1.0, 0)
    assert not [r for r in caplog.records if "not loaded" in r.getMessage().lower()]
    with caplog.at_level(logging.WARNING):  # the capture does see the loader's warnings
        comfy.lora.load_lora({"diffusion_model.unknown.diff": torch.zeros(1)}, {})
    assert any("lora key not loaded" in r.getMessage() for r in caplog.records)
    assert set(patched.patches) == set(base)
    assert all(len(patched.patches[k]) == 1 for k in base)

    stored, _ = weights.load_kv_deltas(path)
    with torch.inference_mode():
        patched.patch_model()
        try:
            effective = {k: v.detach().clone() for k, v in _kv_weights(patched).items()}
        finally:
            patched.unpatch_model()
    for key, weight in base.items():
        torch.testing.assert_close(effective[key].float(), weight.float() + stored[key].float(), atol=1e-6, rtol=0)
    restored = _kv_weights(model)
    assert all(torch.equal(restored[k], base[k]) for k in base)


def test_kv_file_for_another_family_is_refused(sd15, tmp_path: Path) -> None:
    model, _ = sd15
    shapes = {k: tuple(v.shape) for k, v in _kv_weights(model).items()}
    key = next(iter(shapes))
    path = tmp_path / "sdxl_kv.safetensors"
    weights.save_kv_deltas(path, {key: torch.zeros(shapes[key][0], 2048)}, weights.build_metadata(base_model_family="sdxl"))
    deltas, meta = weights.load_kv_deltas(path)
    with pytest.raises(TLInputError, match=r"\(320, 2048\).*\(320, 768\).*'sdxl'.*'sd15'"):
        weights.check_kv_deltas_match(deltas, shapes, meta, str(path), model_family="sd15")
