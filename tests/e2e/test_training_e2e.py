"""Training through the real server: files, untouched base model, stock loaders, cancel."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image
from safetensors import safe_open

from headless.paths import WORKFLOWS_DIR
from headless.server import ComfyServer, WorkflowError
from headless.workflow import load_workflow, nodes_of_type, set_training_inputs
from shapes_world.model import CHECKPOINT_NAME  # the model the example workflows train
from textloc.weights.files import latest_checkpoint, load_training_checkpoint

STEPS = 6


def _sample(model: list, prefix: str, prompt: str = "photo of a red ball") -> dict:
    """Nodes 90.. that sample 64 px with a fixed seed from `model` and save the picture."""
    return {
        "90": {"class_type": "CLIPTextEncode", "inputs": {"text": prompt, "clip": ["1", 1]}},
        "91": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["1", 1]}},
        "92": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "93": {"class_type": "KSampler", "inputs": {
            "model": model, "positive": ["90", 0], "negative": ["91", 0], "latent_image": ["92", 0],
            "seed": 3, "steps": 3, "cfg": 7.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}},
        "94": {"class_type": "VAEDecode", "inputs": {"samples": ["93", 0], "vae": ["1", 2]}},
        "95": {"class_type": "SaveImage", "inputs": {"images": ["94", 0], "filename_prefix": prefix}},
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
    assert (out / "embeddings" / "tl_ball.safetensors").is_file()
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
