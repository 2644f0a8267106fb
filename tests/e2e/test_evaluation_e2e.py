"""Evaluate TL Images inside the real server: tl_evaluate.json scores images made with the trained
ball, with a random-weight CLIP ViT-L/14 loaded by ComfyUI's own CLIP vision loader and random
Inception weights for KID in models/inception/."""

from __future__ import annotations

import json
import math

import pytest

from headless.server import ComfyServer, WorkflowError

WEIGHTS = "loras/textual_localization/tl_demo_ball.safetensors"


def _ensure_trained_ball(server: ComfyServer, workflow_prompt) -> None:
    """tl_evaluate.json applies tl_train_and_generate.json's weights; train them briefly if no earlier test did."""
    if (server.output_dir / WEIGHTS).is_file():
        return
    prompt = workflow_prompt("tl_train_and_generate.json")
    prompt["4"]["inputs"]["steps"] = 2
    server.run(prompt, timeout=600)


def test_evaluate_workflow_reports_every_score(
        comfy_server: ComfyServer, workflow_prompt) -> None:
    _ensure_trained_ball(comfy_server, workflow_prompt)
    result = comfy_server.run(workflow_prompt("tl_evaluate.json"), timeout=900)
    report = result.outputs["13"]["text"][0]
    assert "CLIP-T text: a photo of a ball" in report
    saved = json.loads((comfy_server.output_dir / "textual_localization" / "evaluation" / "tl_demo_ball.json")
                       .read_text())
    assert saved["generated"] == 4 and saved["references"] == 5
    for name in ("clip_i", "clip_t", "kid_mean", "kid_std", "attention_inside", "attention_iou"):
        assert saved[name] is not None and math.isfinite(saved[name]), name
    assert f"CLIP-I: {saved['clip_i']:.4f}" in report and f"CLIP-T: {saved['clip_t']:.4f}" in report
    assert f"attention inside mask: {saved['attention_inside']:.3f}" in report
    assert -1 <= saved["clip_i"] <= 1 and -1 <= saved["clip_t"] <= 1 and 0 <= saved["attention_inside"] <= 1
    assert f"KID: {saved['kid_mean']:.4f} +- {saved['kid_std']:.4f}" in report
    assert saved["notes"] == []


def test_evaluate_refuses_a_file_that_is_not_a_clip_vision_model(comfy_server: ComfyServer,
                                                                  tiny_checkpoint) -> None:
    name = comfy_server.add_model("clip_vision", tiny_checkpoint, "not_clip_vision.safetensors")
    prompt = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": tiny_checkpoint.name}},
        "2": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 2, "color": 0}},
        "3": {"class_type": "TL_EvaluateImages", "inputs": {
            "images": ["2", 0], "reference_images": ["2", 0], "clip": ["1", 1], "clip_vision_name": name,
            "prompt": "a ball", "kid": "off", "save_name": ""}},
    }
    with pytest.raises(WorkflowError) as caught:
        comfy_server.run(prompt, timeout=300)
    message = str(caught.value)
    assert "clip_vision_name" in message and "not a CLIP vision model" in message and "Fix:" in message
    prompt["3"]["inputs"]["clip_vision_name"] = "from_another_machine.safetensors"
    with pytest.raises(WorkflowError) as caught:
        comfy_server.run(prompt, timeout=300)
    assert "is not in models/clip_vision/" in str(caught.value) and "Fix:" in str(caught.value)
