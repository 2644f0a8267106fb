"""Every model family the pack supports, end to end through the real server: SD2.x with eps and with
v-prediction, and SDXL (SD1.5 is covered by the other files, on the world and tiny models).

Per family, on a tiny random-weight checkpoint that ComfyUI's own loader detects as that family
(tests/host/test_tiny_families_host.py): the example training graph (tl_train.json, converted with the
server's object_info, without class images, at 64 px) trains a few steps; then, on the loader's base
model, Apply TL Weights and the stock LoraLoaderModelOnly + `embedding:<run>/<token>` (the trainer's
trigger) with the written files give the same picture, Show Token Attention maps the trained token, the exported kohya LoRA (where the
server has TL_ExportLoRA) loads through the stock LoraLoader with every key matched, and Apply refuses
the family's weights on another family's checkpoint.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import torch
from safetensors import safe_open
from test_apply_and_attention import _apply, _images, _show

from headless.paths import WORKFLOWS_DIR
from headless.server import ComfyServer, RunResult, WorkflowError
from headless.tiny_families import TINY_FAMILIES
from headless.tiny_model import TINY_CHECKPOINT_PATH
from headless.workflow import load_workflow, nodes_of_type, to_api_prompt
from textloc.training.run_files import RunFiles
from textloc.weights.files import META_FAMILY, META_PREDICTION

FAMILIES = list(TINY_FAMILIES)  # sd2_eps, sd2_v, sdxl
TRAIN_STEPS = 2
SAMPLE_STEPS = 2
RESOLUTION = 64  # the dataset loader's minimum; 8x8 latents
TOKEN = "tl_ball"  # tl_train.json's Mask Target
EXPORT_RANK = 4
CLASS_IMAGE_NODES = {"CLIPTextEncode", "EmptyLatentImage", "KSampler", "VAEDecode"}
OTHER_FAMILY_CKPT = TINY_CHECKPOINT_PATH.name  # SD15


@dataclass
class FamilyRun:
    """The two prompts' results of one family."""

    name: str
    ckpt: str
    run: RunFiles
    trained: RunResult
    used: RunResult
    stock: str  # SaveImage ids in `used`
    ours: str
    exported: str | None  # None where the server has no TL_ExportLoRA
    export_log: str


def _is_link(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 2


def _prune(prompt: dict, object_info: dict) -> None:
    """Drop nodes whose outputs nothing uses, unless they are output nodes (changed in place)."""
    while True:
        used = {v[0] for node in prompt.values() for v in node["inputs"].values() if _is_link(v)}
        idle = [n for n, node in prompt.items()
                if n not in used and not object_info[node["class_type"]].get("output_node")]
        if not idle:
            return
        for node_id in idle:
            del prompt[node_id]


def _train_prompt(object_info: dict, ckpt: str, run_name: str) -> tuple[dict, str]:
    """tl_train.json on `ckpt`: no class images, 64 px, TRAIN_STEPS steps, everything else at its default."""
    prompt = to_api_prompt(load_workflow(WORKFLOWS_DIR / "tl_train.json"), object_info)
    (loader,) = nodes_of_type(prompt, "CheckpointLoaderSimple")
    prompt[loader]["inputs"]["ckpt_name"] = ckpt
    for node_id in nodes_of_type(prompt, "TL_MaskTarget"):
        prompt[node_id]["inputs"].pop("class_images", None)
    for node_id in [n for n, node in prompt.items() if node["class_type"] in CLASS_IMAGE_NODES]:
        del prompt[node_id]
    for node_id in nodes_of_type(prompt, "TL_LoadMultiConceptDataset"):
        prompt[node_id]["inputs"]["resolution"] = RESOLUTION
    (trainer,) = nodes_of_type(prompt, "TL_TrainKV")
    prompt[trainer]["inputs"].update({"steps": TRAIN_STEPS, "output_name": run_name, "resume": False})
    _prune(prompt, object_info)
    if "TL_ExportLoRA" in object_info:
        result_slot = object_info["TL_TrainKV"]["output"].index("TL_RESULT")
        prompt["80"] = {"class_type": "TL_ExportLoRA", "inputs": {
            "tl_result": [trainer, result_slot], "rank": EXPORT_RANK, "file_name": ""}}
        prompt["81"] = {"class_type": "PreviewAny", "inputs": {"source": ["80", 0]}}
    return prompt, trainer


def _prompt_text(run: RunFiles) -> str:
    """The prompt with the run's token as the trainer's trigger names it."""
    return f"photo of a embedding:{run.embedding_name(TOKEN)} ball"


def _branch(prompt: dict, first: int, model: list, clip: list | None, negative: list,
            positive: list | None = None, text: str = "") -> str:
    """CLIPTextEncode(text) on `clip` (or the given `positive`) -> KSampler (64 px, fixed seed) -> VAEDecode
    -> SaveImage; returns the save id. Branches share encodings where they can: the full-size text
    encoders are most of the time on these models."""
    enc, empty, sampler, decode, save = (str(first + i) for i in range(5))
    if positive is None:
        prompt[enc] = {"class_type": "CLIPTextEncode", "inputs": {"text": text, "clip": clip}}
        positive = [enc, 0]
    prompt[empty] = {"class_type": "EmptyLatentImage", "inputs": {"width": RESOLUTION, "height": RESOLUTION,
                                                                  "batch_size": 1}}
    prompt[sampler] = {"class_type": "KSampler", "inputs": {
        "model": model, "positive": positive, "negative": negative, "latent_image": [empty, 0], "seed": 5,
        "steps": SAMPLE_STEPS, "cfg": 7.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}}
    prompt[decode] = {"class_type": "VAEDecode", "inputs": {"samples": [sampler, 0], "vae": ["1", 2]}}
    prompt[save] = {"class_type": "SaveImage", "inputs": {"images": [decode, 0], "filename_prefix": f"fam_{first}"}}
    return save


def _use_prompt(ckpt: str, run: RunFiles, exported_lora: str | None) -> tuple[dict, str, str, str | None]:
    """Base model + the written files: stock LoRA loader + embedding, Apply TL Weights, Show Token Attention
    and the stock LoraLoader with the exported LoRA."""
    text = _prompt_text(run)
    prompt: dict = {"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
                    "2": {"class_type": "LoraLoaderModelOnly", "inputs": {
                        "model": ["1", 0], "lora_name": run.kv_lora_name, "strength_model": 1.0}},
                    "3": _apply(run.kv_lora_name),
                    "4": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["1", 1]}},
                    "5": _show(["3", 0], ["3", 1], text, f"embedding:{run.embedding_name(TOKEN)}, ball",
                               steps=SAMPLE_STEPS, width=RESOLUTION, height=RESOLUTION)}
    stock = _branch(prompt, 10, ["2", 0], ["1", 1], ["4", 0], text=text)
    ours = _branch(prompt, 20, ["3", 0], ["3", 1], ["4", 0], text=text)
    exported = None
    if exported_lora is not None:
        prompt["6"] = {"class_type": "LoraLoader", "inputs": {
            "model": ["1", 0], "clip": ["1", 1], "lora_name": exported_lora, "strength_model": 1.0,
            "strength_clip": 1.0}}
        # The export holds UNet keys only, so the base CLIP's encoding of the prompt (stock branch) is its text.
        exported = _branch(prompt, 30, ["6", 0], None, ["4", 0], positive=["10", 0])
    return prompt, stock, ours, exported


@pytest.fixture(scope="module", params=FAMILIES)
def family_run(request: pytest.FixtureRequest, comfy_server: ComfyServer, object_info: dict,
               family_checkpoints: dict[str, str]) -> FamilyRun:
    name = request.param
    ckpt = family_checkpoints[name]
    prompt, _ = _train_prompt(object_info, ckpt, f"family_{name}")
    trained = comfy_server.run(prompt, timeout=600)
    run = RunFiles(f"family_{name}", comfy_server.output_dir)
    exported_lora = trained.outputs["81"]["text"][0] if "81" in prompt else None
    log_start = len(comfy_server.log_tail(10**9))
    used_prompt, stock, ours, exported = _use_prompt(ckpt, run, exported_lora)
    used = comfy_server.run(used_prompt, timeout=600)
    export_log = comfy_server.log_tail(10**9)[log_start:]
    return FamilyRun(name, ckpt, run, trained, used, stock, ours, exported, export_log)


def test_training_writes_finite_weights_for_the_right_family(family_run: FamilyRun) -> None:
    family = TINY_FAMILIES[family_run.name]
    run = family_run.run
    with safe_open(str(run.kv_path), "pt") as f:
        meta = f.metadata()
        keys = list(f.keys())
        assert keys and all(k.endswith((".attn2.to_k.diff", ".attn2.to_v.diff")) for k in keys)
        deltas = [f.get_tensor(k).float() for k in keys]
    assert meta[META_FAMILY] == family.model_config
    assert meta[META_PREDICTION] == family.model_type.lower()  # what tells SD2 eps and v apart
    assert all(torch.isfinite(d).all() for d in deltas) and any(d.abs().sum() > 0 for d in deltas)
    with safe_open(str(run.embedding_path(TOKEN)), "pt") as f:
        widths = {k: f.get_slice(k).get_shape()[-1] for k in f.keys()}
    assert widths == {"sd2": {"clip_h": 1024}, "sdxl": {"clip_l": 768, "clip_g": 1280}}[family.clip_model]
    history = json.loads(run.loss_path.read_text())["history"]
    assert [h["step"] for h in history] == list(range(1, TRAIN_STEPS + 1))
    assert all(np.isfinite([h["total"], h["denoise"], h["attention"]]).all() for h in history)


def test_apply_equals_the_stock_loaders_and_samples_a_picture(comfy_server: ComfyServer,
                                                             family_run: FamilyRun) -> None:
    (stock,) = _images(comfy_server, family_run.used, family_run.stock)
    (ours,) = _images(comfy_server, family_run.used, family_run.ours)
    assert ours.shape == (RESOLUTION, RESOLUTION, 3)
    assert ours.std() > 1.0, "the picture is flat (NaN latents decode to one colour)"
    assert np.array_equal(ours, stock), "Apply TL Weights differs from LoraLoaderModelOnly + embedding:<run>/<token>"


def test_show_token_attention_maps_the_trained_token(comfy_server: ComfyServer, family_run: FamilyRun) -> None:
    heatmaps = _images(comfy_server, family_run.used, "5")
    assert len(heatmaps) == 2 and heatmaps[0].shape == (RESOLUTION, RESOLUTION, 3)  # 1 image x 2 words
    assert all(h.std() > 1.0 for h in heatmaps)


def test_exported_lora_loads_with_every_key_matched(comfy_server: ComfyServer, family_run: FamilyRun) -> None:
    if family_run.exported is None:
        pytest.skip("this server has no TL_ExportLoRA node")
    (picture,) = _images(comfy_server, family_run.used, family_run.exported)
    assert picture.std() > 1.0
    assert "lora key not loaded" not in family_run.export_log, family_run.export_log[-3000:]


def test_apply_refuses_the_weights_on_another_family(comfy_server: ComfyServer, family_run: FamilyRun) -> None:
    prompt = {"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": OTHER_FAMILY_CKPT}},
              "2": _apply(family_run.run.kv_lora_name),
              "3": {"class_type": "PreviewAny", "inputs": {"source": ["2", 2]}}}
    with pytest.raises(WorkflowError) as caught:
        comfy_server.run(prompt, timeout=300)
    message = str(caught.value)
    assert family_run.run.kv_path.name in message and "Fix:" in message and "Traceback" not in message
    assert f"'{TINY_FAMILIES[family_run.name].model_config}'" in message and "'SD15'" in message


@pytest.mark.parametrize("family_run", ["sd2_eps", "sd2_v"], indirect=True)
def test_sd2_weights_are_refused_on_the_other_prediction_type(comfy_server: ComfyServer, family_run: FamilyRun,
                                                              family_checkpoints: dict[str, str]) -> None:
    """SD2 base (eps) and 768-v share family and layer shapes; only the recorded prediction tells them apart."""
    other = {"sd2_eps": "sd2_v", "sd2_v": "sd2_eps"}[family_run.name]
    prompt = {"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": family_checkpoints[other]}},
              "2": _apply(family_run.run.kv_lora_name),
              "3": {"class_type": "PreviewAny", "inputs": {"source": ["2", 2]}}}
    with pytest.raises(WorkflowError) as caught:
        comfy_server.run(prompt, timeout=300)
    message = str(caught.value)
    assert family_run.run.kv_path.name in message and "Fix:" in message and "Traceback" not in message
    assert "predicts eps" in message and "predicts v_prediction" in message
