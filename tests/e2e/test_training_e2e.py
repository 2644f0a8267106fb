"""Training through the real server: files, untouched base model, stock loaders, cancel."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from test_apply_and_attention import _show

from headless.paths import WORKFLOWS_DIR
from headless.server import ComfyServer, WorkflowError
from headless.workflow import load_workflow, nodes_of_type, set_training_inputs
from shapes_world.model import CHECKPOINT_NAME  # the model the example workflows train
from textloc.training.run_files import RunFiles
from textloc.weights.files import latest_checkpoint, load_embedding, load_training_checkpoint

STEPS = 6
TRIGGER_SLOT = 5  # the trainer's outputs: MODEL, CLIP, tl_result, loss, attention, trigger, loss_chart


def _sample(model: list, prefix: str, prompt: str = "photo of a red ball", clip: list | None = None,
            first: int = 90) -> dict:
    """Nodes first.. first+5 that sample 64 px with a fixed seed from `model` (prompt encoded with `clip`, the
    checkpoint's by default) and save the picture as node first+5."""
    enc, neg, empty, sampler, decode, save = (str(first + i) for i in range(6))
    clip = clip or ["1", 1]
    return {
        enc: {"class_type": "CLIPTextEncode", "inputs": {"text": prompt, "clip": clip}},
        neg: {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": clip}},
        empty: {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        sampler: {"class_type": "KSampler", "inputs": {
            "model": model, "positive": [enc, 0], "negative": [neg, 0], "latent_image": [empty, 0],
            "seed": 3, "steps": 3, "cfg": 7.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}},
        decode: {"class_type": "VAEDecode", "inputs": {"samples": [sampler, 0], "vae": ["1", 2]}},
        save: {"class_type": "SaveImage", "inputs": {"images": [decode, 0], "filename_prefix": prefix}},
    }


def _base_sample(prefix: str) -> dict:
    return {"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": CHECKPOINT_NAME}},
            **_sample(["1", 0], prefix)}


def _picture(server: ComfyServer, result, node: str = "95") -> np.ndarray:
    entry = result.outputs[node]["images"][0]
    return np.asarray(Image.open(io.BytesIO(server.view(entry))))


def _train_prompt(workflow_prompt, name: str, **inputs) -> tuple[dict, str]:
    prompt = workflow_prompt("tl_train.json")
    (trainer,) = nodes_of_type(prompt, "TL_TrainKV")
    set_training_inputs(prompt, trainer, **{"steps": STEPS, "checkpoint_every": 3, "output_name": name, **inputs})
    return prompt, trainer


def test_training_workflow_writes_results_and_leaves_the_base_model_unchanged(
        comfy_server: ComfyServer, workflow_prompt) -> None:
    before = _picture(comfy_server, comfy_server.run(_base_sample("base_before")))
    prompt, trainer = _train_prompt(workflow_prompt, "e2e_run")
    steps_seen = []
    result = comfy_server.run(prompt, timeout=900, workflow=load_workflow(WORKFLOWS_DIR / "tl_train.json"),
                              on_event=lambda e: steps_seen.append(e["data"]["step"])
                              if e["type"] == "textloc.train.step" else None)
    assert steps_seen == list(range(1, STEPS + 1))
    progress = [e for e in result.events_of("progress") if e["node"] == trainer]
    assert progress and progress[-1]["value"] == progress[-1]["max"] == STEPS

    out = comfy_server.output_dir
    kv = out / "loras" / "textual_localization" / "e2e_run.safetensors"
    with safe_open(kv, "pt") as f:
        keys = list(f.keys())
        meta = f.metadata()
    assert keys and all(k.endswith((".attn2.to_k.diff", ".attn2.to_v.diff")) for k in keys)
    assert json.loads(meta["tokens"]) == ["tl_ball"] and meta["guidance"] == "hard"
    assert float(meta["prior_weight"]) == 1.0  # class images came from the KSampler in the graph
    assert (out / "embeddings" / "e2e_run" / "tl_ball.safetensors").is_file()  # the run's own token file
    run_dir = out / "textual_localization" / "e2e_run"
    history = json.loads((run_dir / "loss_history.json").read_text())["history"]
    assert [h["step"] for h in history] == list(range(1, STEPS + 1))
    assert all(h["prior"] > 0 and h["attention"] > 0 for h in history)
    assert json.loads((run_dir / "workflow.json").read_text())["nodes"]  # the graph, saved beside
    assert [p.name for p in sorted((run_dir / "checkpoints").iterdir())] == ["checkpoint-000003",
                                                                            "checkpoint-000006"]
    assert list((run_dir / "attention").glob("*.png"))
    assert result.outputs["11"]["images"]  # attention | mask picture
    assert result.outputs["10"]["images"]  # stock loss graph

    after = _picture(comfy_server, comfy_server.run(_base_sample("base_after")))
    assert np.array_equal(before, after), "the cached base model changed during training"


def test_masked_loss_and_empty_prompt_prior_reach_the_trainer_and_its_files(
        comfy_server: ComfyServer, workflow_prompt) -> None:
    """TL Training Options' denoise_region and prior_empty_prompt, set in the graph, change what the run
    learns (the same seed with and without them gives other losses) and are recorded in every file."""
    losses = {}
    for name, options in (("e2e_paper", {}),
                          ("e2e_masked", {"denoise_region": "concepts and background", "prior_empty_prompt": True})):
        prompt, _ = _train_prompt(workflow_prompt, name, steps=2, checkpoint_every=2, **options)
        comfy_server.run(prompt, timeout=900)
        out = comfy_server.output_dir
        for path in (out / "loras" / "textual_localization" / f"{name}.safetensors",
                     out / "embeddings" / name / "tl_ball.safetensors"):
            with safe_open(path, "pt") as f:
                meta = f.metadata()
            assert meta["denoise_region"] == options.get("denoise_region", "whole photo"), path
            assert json.loads(meta["prior_empty_prompt"]) is options.get("prior_empty_prompt", False), path
        history = json.loads((out / "textual_localization" / name / "loss_history.json").read_text())["history"]
        losses[name] = [(h["denoise"], h["prior"]) for h in history]
    paper, masked = losses["e2e_paper"], losses["e2e_masked"]
    assert all(p[0] != m[0] and p[1] != m[1] for p, m in zip(paper, masked, strict=True)), (paper, masked)


def test_stock_lora_loader_on_the_saved_file_equals_the_trained_model(
        comfy_server: ComfyServer, workflow_prompt) -> None:
    prompt, trainer = _train_prompt(workflow_prompt, "e2e_stock")
    prompt.update(_sample([trainer, 0], "trained_in_memory"))
    trained = _picture(comfy_server, comfy_server.run(prompt, timeout=900))

    stock = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": CHECKPOINT_NAME}},
        "2": {"class_type": "LoraLoaderModelOnly", "inputs": {
            "model": ["1", 0], "lora_name": "textual_localization/e2e_stock.safetensors", "strength_model": 1.0}},
        **_sample(["2", 0], "trained_from_file"),
    }
    log_before = len(comfy_server.log_tail(10_000_000))
    from_file = _picture(comfy_server, comfy_server.run(stock, timeout=300))
    assert np.array_equal(trained, from_file)
    new_log = comfy_server.log_tail(10_000_000)[log_before:]
    assert "lora key not loaded" not in new_log and "ERROR" not in new_log


def _train_for_trigger(server: ComfyServer, workflow_prompt, name: str, **inputs) -> str:
    """Train tl_train.json's tl_ball as run `name`; the trainer's trigger output."""
    prompt, trainer = _train_prompt(workflow_prompt, name, **inputs)
    prompt["80"] = {"class_type": "PreviewAny", "inputs": {"source": [trainer, TRIGGER_SLOT]}}
    (trigger,) = server.run(prompt, timeout=900).outputs["80"]["text"]
    return trigger


def _assert_same_picture(stock: np.ndarray, applied: np.ndarray) -> None:
    """The same model and token drawn through two paths. ComfyUI patches a model's weights in place or on
    the fly depending on the memory free at the time, and the two round differently, so a pixel may move
    by a few levels (seen: at most 5 of 255, 0.3 on average); another token or K/V file moves them by far
    more."""
    diff = np.abs(stock.astype(np.int16) - applied.astype(np.int16))
    assert diff.max() <= 8 and diff.mean() <= 1.0, (int(diff.max()), float(diff.mean()))


def _use_run(server: ComfyServer, run: RunFiles, trigger: str) -> tuple[np.ndarray, np.ndarray]:
    """On the base model, typed as the trigger: (stock LoraLoaderModelOnly + the checkpoint's own CLIP,
    Apply TL Weights from the weights list + its CLIP). Show Token Attention on the checkpoint's CLIP in
    the same prompt fails unless ComfyUI's own embedding lookup finds the trigger's token file."""
    token = trigger.split()[0]
    prompt = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": CHECKPOINT_NAME}},
        "2": {"class_type": "LoraLoaderModelOnly", "inputs": {
            "model": ["1", 0], "lora_name": run.kv_lora_name, "strength_model": 1.0}},
        "3": {"class_type": "TL_ApplyWeights", "inputs": {
            "model": ["1", 0], "clip": ["1", 1], "weights": run.kv_lora_name, "strength_model": 1.0,
            "strength_token": 1.0}},
        "4": _show(["1", 0], ["1", 1], f"a photo of a {trigger}", token, steps=1),
        **_sample(["2", 0], f"{run.name}_stock", f"a photo of a {trigger}"),
        **_sample(["3", 0], f"{run.name}_applied", f"a photo of a {trigger}", clip=["3", 1], first=100),
    }
    result = server.run(prompt, timeout=300)
    assert len(result.outputs["4"]["images"]) == 1
    return _picture(server, result, "95"), _picture(server, result, "105")


def test_two_runs_of_one_token_keep_their_own_files_and_both_stay_usable(
        comfy_server: ComfyServer, workflow_prompt) -> None:
    """tl_ball trained with guidance none, then hard, under one run name to compare them: the second run
    replaces nothing of the first, each trainer's trigger names its own token file, and afterwards both
    runs work through ComfyUI's own embedding lookup and through Apply TL Weights."""
    log_start = len(comfy_server.log_tail(10_000_000))
    triggers = {guidance: _train_for_trigger(comfy_server, workflow_prompt, "e2e_twin", guidance=guidance)
                for guidance in ("none", "hard")}
    assert triggers == {"none": "embedding:e2e_twin/tl_ball ball", "hard": "embedding:e2e_twin_2/tl_ball ball"}
    runs = {"none": RunFiles("e2e_twin", comfy_server.output_dir), "hard": RunFiles("e2e_twin_2", comfy_server.output_dir)}
    vectors = {}
    for guidance, run in runs.items():
        vectors[guidance], meta = load_embedding(run.embedding_path("tl_ball"))
        assert meta["guidance"] == guidance and meta["run_name"] == run.name
    assert not torch.equal(vectors["none"]["clip_l"], vectors["hard"]["clip_l"])

    pictures = {guidance: _use_run(comfy_server, run, triggers[guidance]) for guidance, run in runs.items()}
    for stock, applied in pictures.values():
        _assert_same_picture(stock, applied)  # the file the prompt names = the token Apply loads for the run
    assert not np.array_equal(pictures["none"][1], pictures["hard"][1])
    assert "does not exist" not in comfy_server.log_tail(10_000_000)[log_start:]  # no embedding: name was missed


def test_overwrite_choice_types_the_token_alone_and_replaces_only_its_shared_file(
        comfy_server: ComfyServer, workflow_prompt) -> None:
    """embedding_name 'token (overwrite)': the run also writes embeddings/<token>.safetensors (an earlier
    run's file of that name is replaced, as asked) and its trigger types the token alone."""
    out = comfy_server.output_dir
    shared = out / "embeddings" / "tl_ball.safetensors"
    own = {}
    for name in ("e2e_shared_a", "e2e_shared_b"):
        trigger = _train_for_trigger(comfy_server, workflow_prompt, name, embedding_name="token (overwrite)")
        assert trigger == "embedding:tl_ball ball"
        own[name] = load_embedding(RunFiles(name, out).embedding_path("tl_ball"))[0]["clip_l"]
        replaced, meta = load_embedding(shared)
        assert meta["run_name"] == name and torch.equal(replaced["clip_l"], own[name])
    # the first run keeps its own file, typed embedding:e2e_shared_a/tl_ball
    assert torch.equal(load_embedding(RunFiles("e2e_shared_a", out).embedding_path("tl_ball"))[0]["clip_l"],
                       own["e2e_shared_a"])
    stock, applied = _use_run(comfy_server, RunFiles("e2e_shared_b", out), trigger)
    _assert_same_picture(stock, applied)


def test_cancel_mid_run_keeps_the_last_checkpoint_valid(comfy_server: ComfyServer, workflow_prompt) -> None:
    prompt, _ = _train_prompt(workflow_prompt, "e2e_cancel", steps=200, checkpoint_every=2)

    def cancel_at_step_five(event: dict) -> None:
        if event["type"] == "textloc.train.step" and event["data"]["step"] == 5:
            comfy_server.interrupt()

    with pytest.raises(WorkflowError, match="interrupted"):
        comfy_server.run(prompt, timeout=900, on_event=cancel_at_step_five)
    checkpoints = comfy_server.output_dir / "textual_localization" / "e2e_cancel" / "checkpoints"
    assert not [p for p in checkpoints.iterdir() if p.name.endswith(".tmp")]
    last = latest_checkpoint(checkpoints)
    assert last is not None and last.name in ("checkpoint-000004", "checkpoint-000006")
    state = load_training_checkpoint(last)
    assert state.step == int(last.name.split("-")[1]) and state.kv_deltas
    assert not (comfy_server.output_dir / "loras" / "textual_localization" / "e2e_cancel.safetensors").exists()


def test_training_without_a_concept_says_what_to_add(comfy_server: ComfyServer, workflow_prompt) -> None:
    prompt, trainer = _train_prompt(workflow_prompt, "e2e_no_concept")
    prompt[trainer]["inputs"]["dataset"] = ["7", 0]  # straight from the loader, no Mask Target
    with pytest.raises(WorkflowError) as caught:
        comfy_server.run(prompt, timeout=300)
    assert "Mask Target" in str(caught.value) and "Fix:" in str(caught.value)
