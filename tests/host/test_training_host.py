"""The training loop on the real ComfyUI model classes and the tiny checkpoint, in-process."""

from __future__ import annotations

import json
from pathlib import Path

import comfy.model_management
import comfy.model_patcher
import comfy.sd
import pytest
import torch
from PIL import Image
from safetensors import safe_open

from headless.paths import SAMPLE_DATA_DIR
from headless.tiny_model import ensure_tiny_checkpoint
from textloc.config import TrainConfig
from textloc.data.dataset import build_concept, load_dataset
from textloc.errors import TLInputError
from textloc.training.kv_deltas import attach_deltas
from textloc.training.loop import TrainingJob, TrainingStopped, train
from textloc.training.run_files import plan_run
from textloc.weights.files import load_training_checkpoint, read_metadata

RESOLUTION = 64


@pytest.fixture(scope="module")
def loaded():
    """Model, CLIP and VAE loaded as the executor loads them: inside inference mode."""
    with torch.inference_mode():
        model, clip, vae, _ = comfy.sd.load_checkpoint_guess_config(
            str(ensure_tiny_checkpoint()), output_vae=True, output_clip=True)
    return model, clip, vae


def _dataset(concepts: list[tuple[str, str, int]], prior: bool = False):
    with torch.inference_mode():
        dataset = load_dataset(SAMPLE_DATA_DIR, "toy_pair", resolution=RESOLUTION)
        for token, word, index in concepts:
            class_images = dataset.images.flip(2) if prior else None
            dataset = dataset.with_concept(build_concept(dataset, token=token, class_word=word, mask_index=index,
                                                         class_images=class_images))
    return dataset


def _train(loaded, tmp_path: Path, dataset, name: str = "run", resume: bool = False, on_step=None, **config):
    model, clip, vae = loaded
    settings = {"steps": 3, "learning_rate": 1e-3, "prior_weight": 0.0, "checkpoint_every": 2} | config
    run, resume_from = plan_run(tmp_path, name, resume)
    job = TrainingJob(model=model, clip=clip, vae=vae, dataset=dataset, config=TrainConfig(**settings),
                      run=run, resume_from=resume_from, on_step=on_step)
    with torch.inference_mode():  # as inside ComfyUI's executor
        return train(job)


def _state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_only_kv_deltas_and_tokens_change_and_the_base_stays_identical(loaded, tmp_path: Path) -> None:
    model, clip, _ = loaded
    unet_before, clip_before = _state(model.model), _state(clip.cond_stage_model)
    result = _train(loaded, tmp_path, _dataset([("tl_ball", "ball", 1)], prior=True), prior_weight=1.0)

    attn2_kv = [n for n, _ in model.model.diffusion_model.named_modules() if n.endswith(("attn2.to_k", "attn2.to_v"))]
    assert sorted(result.kv_deltas) == sorted(f"diffusion_model.{n}.weight" for n in attn2_kv)
    assert all(d.abs().max() > 0 for d in result.kv_deltas.values())
    init = clip.cond_stage_model.clip_l.transformer.get_input_embeddings().weight[
        clip.tokenize("sks")["l"][0][1][0]].float()
    assert not torch.allclose(result.token_vectors["tl_ball"]["clip_l"][0], init)
    # bit-identical; NaN counts as equal (SD1.5 files carry no text_projection: ComfyUI leaves it uninitialised)
    for before, after in ((unet_before, _state(model.model)), (clip_before, _state(clip.cond_stage_model))):
        for key, value in after.items():
            torch.testing.assert_close(value, before[key], rtol=0, atol=0, equal_nan=True,
                                       msg=f"base model changed at {key}")
    assert model.patches == {} and result.model.patches  # the trained MODEL is a patched clone
    assert result.loss_history[-1]["prior"] > 0

    with safe_open(result.run.kv_path, "pt") as f:
        keys = list(f.keys())
    assert sorted(keys) == sorted(f"diffusion_model.{n}.diff" for n in attn2_kv)
    meta = read_metadata(result.run.kv_path)
    for field in ("tokens", "class_words", "guidance", "attention_weight", "steps", "learning_rate",
                  "resolution", "seed", "base_model_family", "base_hash", "pack_version"):
        assert field in meta, field
    assert "SD15" in meta["base_model_family"]
    assert result.run.embedding_path("tl_ball").is_file()
    assert result.run.loss_path.is_file()


def test_token_position_follows_the_prompt_and_two_concepts_both_train(loaded, tmp_path: Path) -> None:
    dataset = _dataset([("tl_ball", "ball", 1), ("tl_box", "box", 2)])
    result = _train(loaded, tmp_path, dataset, steps=2, prompt="a toy scene with {concepts}",
                    concept_phrase="the {token} {class}")
    # <start> a toy scene with the <tl_ball> ball and the <tl_box> box
    assert read_metadata(result.run.kv_path)["token_positions"] == "[6, 10]"
    _, clip, _ = loaded
    init = clip.cond_stage_model.clip_l.transformer.get_input_embeddings().weight[
        clip.tokenize("sks")["l"][0][1][0]].float()
    for token in ("tl_ball", "tl_box"):
        vector = result.token_vectors[token]["clip_l"][0]
        assert (vector - init).abs().max() > 1e-4, f"{token} did not train"
    # the pictures: a labelled row of three >= 256 px panels per concept, and the loss chart, both saved
    _, height, width, _ = result.attention_preview.shape
    assert height > 2 * 256 + 2 * 40 and 3 * 256 <= width < 3 * 256 + 60
    assert result.loss_chart.shape == (1, 450, 800, 3)
    sheet, chart = result.run.attention_dir / "attention_step000002.png", result.run.run_dir / "loss_chart.png"
    assert {sheet, chart} <= set(result.files)
    assert Image.open(sheet).size == (width, height) and Image.open(chart).size == (800, 450)


def test_resume_after_a_cancel_continues_the_same_loss_curve(loaded, tmp_path: Path) -> None:
    dataset = _dataset([("tl_ball", "ball", 1)])
    straight = _train(loaded, tmp_path, dataset, name="straight", steps=4)

    class Cancel(Exception):
        pass

    def cancel_after_two(losses) -> None:
        if losses.step == 3:
            raise Cancel

    with pytest.raises(Cancel):
        _train(loaded, tmp_path, dataset, name="halted", steps=4, on_step=cancel_after_two)
    checkpoints = sorted((tmp_path / "textual_localization" / "halted" / "checkpoints").iterdir())
    assert [p.name for p in checkpoints] == ["checkpoint-000002"]  # nothing half-written
    assert load_training_checkpoint(checkpoints[0]).step == 2

    resumed = _train(loaded, tmp_path, dataset, name="halted", resume=True, steps=4)
    assert [h["step"] for h in resumed.loss_history] == [1, 2, 3, 4]
    assert resumed.loss_history == straight.loss_history
    for key, delta in straight.kv_deltas.items():
        assert torch.equal(delta, resumed.kv_deltas[key])


def test_nan_loss_stops_and_names_the_step_and_last_checkpoint(loaded, tmp_path: Path) -> None:
    with pytest.raises(TrainingStopped) as caught:
        _train(loaded, tmp_path, _dataset([("tl_ball", "ball", 1)]), steps=6, checkpoint_every=1,
               learning_rate=1e30, grad_clip=1e30)
    message = str(caught.value)
    assert "at step" in message and "checkpoint-" in message
    step = int(message.split("at step ")[1].split(";")[0])
    assert f"checkpoint-{step - 1:06d}" in message
    load_training_checkpoint(tmp_path / "textual_localization" / "run" / "checkpoints" / f"checkpoint-{step - 1:06d}")


def test_a_token_the_prompt_also_spells_is_refused_before_training(loaded, tmp_path: Path) -> None:
    """Every occurrence of the token's text would become the trained vector: only its own slot may hold it."""
    model, _, _ = loaded
    with pytest.raises(TLInputError, match="'ball' equals 'ball' in its class word.*Fix: rename the token.*tl_ball"):
        _dataset([("ball", "ball", 1)])  # Mask Target refuses what it knows
    photo = _dataset([("photo", "ball", 1)])  # the prompt template is only known to the trainer
    with pytest.raises(TLInputError, match="'photo' equals 'photo' in the prompt 'photo of {concepts}'.*tl_photo"):
        _train(loaded, tmp_path, photo)
    with pytest.raises(TLInputError, match="'toy' in the prompt"):
        _train(loaded, tmp_path, _dataset([("toy", "ball", 1)]), prompt="a toy scene with {concepts}")
    assert model.patches == {} and not (tmp_path / "textual_localization").exists()


def test_resume_of_a_run_that_does_not_exist_is_refused(loaded, tmp_path: Path) -> None:
    _train(loaded, tmp_path, _dataset([("tl_ball", "ball", 1)]), name="tl_ball_run", steps=2)
    with pytest.raises(TLInputError, match="no run named 'tl_bal_run' to resume; runs that exist: tl_ball_run"):
        _train(loaded, tmp_path, _dataset([("tl_ball", "ball", 1)]), name="tl_bal_run", resume=True, steps=2)
    assert not (tmp_path / "textual_localization" / "tl_bal_run").exists()


def test_no_concept_is_a_clear_error(loaded, tmp_path: Path) -> None:
    with pytest.raises(TLInputError, match="Mask Target"):
        _train(loaded, tmp_path, _dataset([]))


def test_a_model_without_cross_attention_is_refused() -> None:
    class NoCrossAttention(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.diffusion_model = torch.nn.Sequential(torch.nn.Conv2d(4, 4, 3), torch.nn.Linear(4, 4))

    device = comfy.model_management.get_torch_device()
    patcher = comfy.model_patcher.ModelPatcher(NoCrossAttention(), load_device=device, offload_device=device)
    with pytest.raises(TLInputError, match="cross-attention"):
        attach_deltas(patcher)


def test_guidance_modes_move_the_map_the_way_their_loss_says(loaded, tmp_path: Path) -> None:
    """hard pulls the map onto the mask, soft clears what lies outside it, none leaves attention alone."""
    dataset = _dataset([("tl_ball", "ball", 1)])
    runs = {mode: _train(loaded, tmp_path, dataset, name=mode, guidance=mode, steps=8).localization
            for mode in ("hard", "soft", "none")}
    before = runs["hard"]["before"]
    assert runs["soft"]["before"] == before == runs["none"]["before"]  # same start, same measure
    hard, soft, none = (runs[m]["after"] for m in ("hard", "soft", "none"))
    assert hard["mask_mse"][0] < 0.6 * before["mask_mse"][0]
    assert hard["mask_mse"][0] < 0.6 * none["mask_mse"][0]
    assert soft["outside_energy"][0] < 0.6 * before["outside_energy"][0]
    assert soft["outside_energy"][0] < 0.6 * none["outside_energy"][0]


def test_train_token_off_keeps_the_start_word_and_still_trains_kv(loaded, tmp_path: Path) -> None:
    result = _train(loaded, tmp_path, _dataset([("tl_ball", "ball", 1)]), steps=2, train_token=False)
    _, clip, _ = loaded
    init = clip.cond_stage_model.clip_l.transformer.get_input_embeddings().weight[
        clip.tokenize("sks")["l"][0][1][0]].float()
    assert torch.equal(result.token_vectors["tl_ball"]["clip_l"][0], init)
    assert all(d.abs().max() > 0 for d in result.kv_deltas.values())


def test_lora_rank_also_writes_a_low_rank_lora_of_the_same_deltas(loaded, tmp_path: Path) -> None:
    from textloc.weights.lora_export import export_path, lora_module_name

    result = _train(loaded, tmp_path, _dataset([("tl_ball", "ball", 1)]), name="lora_run", lora_rank=4)
    lora = export_path(tmp_path, "lora_run", 4)
    assert lora in result.files and lora.is_file()
    # the token stays in the run's own folder, where no LoRA list looks
    assert sorted(p.name for p in lora.parent.iterdir()) == ["lora_run.safetensors", "lora_run_lora_r4.safetensors"]
    meta = read_metadata(lora)
    assert meta["trigger"] == result.trigger_text == "embedding:lora_run/tl_ball ball"
    assert json.loads(meta["embeddings"]) == {"tl_ball": "lora_run/tl_ball.safetensors"}
    assert meta["rank"] == "4" and meta["tokens"] == result.metadata["tokens"]
    with safe_open(lora, "pt") as f:
        keys = set(f.keys())
        for key, delta in result.kv_deltas.items():
            name = lora_module_name(key)
            up, down = f.get_tensor(f"{name}.lora_up.weight").float(), f.get_tensor(f"{name}.lora_down.weight").float()
            assert up.shape == (delta.shape[0], 4) and down.shape == (4, delta.shape[1])
            error = (up @ down - delta.float()).norm() / delta.float().norm()
            assert error < 1.0  # rank 4 keeps part of the delta; the unit tests check the SVD's exact error
    assert len(keys) == 3 * len(result.kv_deltas)


def test_gradient_checkpointing_reruns_the_unets_layers_and_learns_the_same(loaded, tmp_path: Path) -> None:
    """ComfyUI's UNet calls each block's layers one by one (forward_timestep_embed), never the block's own
    forward: checkpointing must wrap those layers. With it, every training step runs them a second time
    (the recompute during backward) and the run learns exactly what a run without it learns."""
    res_block = loaded[0].model.diffusion_model.output_blocks[0][0]  # gradients pass it on the way to attn2
    calls = {"count": 0}

    def count(*_: object) -> None:
        calls["count"] += 1

    hook = res_block.in_layers.register_forward_hook(count)
    dataset = _dataset([("tl_ball", "ball", 1)], prior=True)
    results, counts = {}, {}
    try:
        for mode in ("off", "on"):
            calls["count"] = 0
            results[mode] = _train(loaded, tmp_path, dataset, name=f"gc_{mode}", steps=2, gradient_checkpointing=mode)
            counts[mode] = calls["count"]
    finally:
        hook.remove()
    assert counts["on"] - counts["off"] == 2  # one recompute per training step; no-grad passes are never wrapped
    assert [h["total"] for h in results["on"].loss_history] == pytest.approx(
        [h["total"] for h in results["off"].loss_history], rel=1e-5)
    for key, delta in results["off"].kv_deltas.items():
        torch.testing.assert_close(results["on"].kv_deltas[key], delta, rtol=0, atol=1e-3)  # fp16 files
    assert not any("forward" in layer.__dict__ for layer in loaded[0].model.diffusion_model.modules())
