"""Apply TL Weights and Show Token Attention in the real server: same images as the stock LoRA loader plus
`embedding:NAME`, strength 0 = base model, clear refusals, no trace on the shared MODEL, the workflows."""

from __future__ import annotations

import io
import json
import pickle
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

from headless.server import ComfyServer, RunResult, WorkflowError
from headless.tiny_model import TINY_CHECKPOINT_PATH
from shapes_world.training_sets import TRAIN_SET
from textloc.attention.localization import attention_mass_inside
from textloc.data.dataset import load_dataset
from textloc.weights.files import build_metadata, save_embedding, save_kv_deltas

TRAIN_RESOLUTION = 64  # the example workflows' training size on the world model
CHANGE_FLOOR = 0.1  # measured: before 0.254, after 0.605 (Show Token Attention's maps, training photos)

CKPT = TINY_CHECKPOINT_PATH.name
RUN = "textual_localization/e2e_run.safetensors"
TOKEN = "tl_e2e"
PROMPT = f"photo of a embedding:{TOKEN} ball"
NEW_NODES = {"TL_ApplyWeights": "Apply TL Weights", "TL_ShowTokenAttention": "Show Token Attention"}


def _images(server: ComfyServer, result: RunResult, node_id: str) -> list[np.ndarray]:
    entries = result.outputs[node_id]["images"]
    return [np.asarray(Image.open(io.BytesIO(server.view(e))).convert("RGB")) for e in entries]


def _kv_shapes(checkpoint: Path) -> dict[str, list[int]]:
    """attn2 K/V weight shapes of the tiny checkpoint, read from the file header."""
    prefix = "model."
    with safe_open(str(checkpoint), framework="pt") as f:
        return {k[len(prefix):]: f.get_slice(k).get_shape() for k in f.keys()
                if k.startswith(prefix + "diffusion_model.") and k.endswith((".attn2.to_k.weight", ".attn2.to_v.weight"))}


@pytest.fixture(scope="module")
def models_dir(comfy_server: ComfyServer, tiny_checkpoint: Path) -> Path:
    """A trained-looking run in the server's models folders: K/V deltas and the token's embedding."""
    gen = torch.Generator().manual_seed(0)
    shapes = _kv_shapes(tiny_checkpoint)
    meta = build_metadata(tokens=[TOKEN], class_words=["ball"], init_words=["sks"], steps=30, seed=0,
                          base_model_family="SD15", base_hash="e2e")
    models = comfy_server.base_dir / "models"
    save_kv_deltas(models / "loras" / RUN, {k: torch.randn(s, generator=gen) * 0.05 for k, s in shapes.items()}, meta)
    save_embedding(models / "embeddings" / f"{TOKEN}.safetensors",
                   {"clip_l": torch.randn(1, 768, generator=gen) * 0.02}, {**meta, "token": TOKEN})
    return models


def _branch(prompt: dict, first: int, model: list, clip: list, text: str, seed: int = 5) -> str:
    """CLIPTextEncode x2 -> KSampler (64 px, 3 steps) -> VAEDecode -> SaveImage; returns the SaveImage id."""
    ids = [str(first + i) for i in range(6)]
    enc, neg, empty, sampler, decode, save = ids
    prompt[enc] = {"class_type": "CLIPTextEncode", "inputs": {"text": text, "clip": clip}}
    prompt[neg] = {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": clip}}
    prompt[empty] = {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}}
    prompt[sampler] = {"class_type": "KSampler", "inputs": {
        "model": model, "positive": [enc, 0], "negative": [neg, 0], "latent_image": [empty, 0], "seed": seed,
        "steps": 3, "cfg": 7.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}}
    prompt[decode] = {"class_type": "VAEDecode", "inputs": {"samples": [sampler, 0], "vae": ["1", 2]}}
    prompt[save] = {"class_type": "SaveImage", "inputs": {"images": [decode, 0], "filename_prefix": f"e2e_{first}"}}
    return save


def _apply(weights: str, strength_model: float = 1.0, strength_token: float = 1.0) -> dict:
    return {"class_type": "TL_ApplyWeights", "inputs": {
        "model": ["1", 0], "clip": ["1", 1], "weights": weights,
        "strength_model": strength_model, "strength_token": strength_token}}


def _show(model: list, clip: list, text: str, words: str, seed: int = 5, **extra) -> dict:
    inputs = {"model": model, "clip": clip, "vae": ["1", 2], "text": text, "negative": "", "words": words,
              "seed": seed, "steps": 3, "cfg": 7.0, "sampler_name": "euler", "scheduler": "normal", "width": 64,
              "height": 64, "batch_size": 1, "resolutions": "auto", "start_percent": 0.0, "end_percent": 1.0,
              "normalization": "per word", "denoise": 0.6, **extra}
    return {"class_type": "TL_ShowTokenAttention", "inputs": inputs}


def test_nodes_are_registered_with_tooltips(object_info: dict, comfy_server: ComfyServer) -> None:
    for node_id, display in NEW_NODES.items():
        assert node_id in object_info, f"{node_id} not registered; server log:\n{comfy_server.log_tail()}"
        info = object_info[node_id]
        assert info["display_name"] == display and info["category"].startswith("textual_localization/")
        for group in ("required", "optional"):
            for name, spec in info["input"].get(group, {}).items():
                assert spec[1].get("tooltip"), f"{node_id}.{name} has no tooltip"
    apply_inputs = object_info["TL_ApplyWeights"]["input"]
    assert apply_inputs["required"]["weights"][1]["options"][0] == "none"
    assert apply_inputs["optional"]["tl_result"][0] == "TL_RESULT"
    assert object_info["TL_ShowTokenAttention"]["output"] == ["IMAGE", "IMAGE", "MASK", "STRING"]


def test_weights_list_shows_pack_files_only(comfy_server: ComfyServer, models_dir: Path) -> None:
    save_kv_deltas(models_dir / "loras" / "foreign_diff.safetensors", {"diffusion_model.x.weight": torch.zeros(2)}, {})
    options = comfy_server.get_json("/object_info/TL_ApplyWeights")["TL_ApplyWeights"]["input"]["required"]["weights"]
    assert RUN in options[1]["options"] and "foreign_diff.safetensors" not in options[1]["options"]


def test_apply_gives_the_stock_loader_images_and_strength_zero_the_base_model(
        comfy_server: ComfyServer, models_dir: Path) -> None:
    prompt: dict = {"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": CKPT}}}
    prompt["2"] = {"class_type": "LoraLoaderModelOnly", "inputs": {"model": ["1", 0], "lora_name": RUN,
                                                                   "strength_model": 1.0}}
    stock = _branch(prompt, 10, ["2", 0], ["1", 1], PROMPT)  # the stock path: LoRA loader + embedding file
    prompt["3"] = _apply(RUN)
    ours = _branch(prompt, 20, ["3", 0], ["3", 1], PROMPT)
    prompt["4"] = _apply(RUN, 0.0, 0.0)
    ours_zero = _branch(prompt, 30, ["4", 0], ["4", 1], PROMPT)
    base = _branch(prompt, 40, ["1", 0], ["1", 1], "photo of a sks ball")  # the token's init word
    prompt["5"] = {"class_type": "PreviewAny", "inputs": {"source": ["3", 2]}}
    result = comfy_server.run(prompt, timeout=300)
    images = {name: _images(comfy_server, result, node)[0] for name, node in
              (("stock", stock), ("ours", ours), ("zero", ours_zero), ("base", base))}
    assert np.array_equal(images["ours"], images["stock"])
    assert np.array_equal(images["zero"], images["base"])
    assert not np.array_equal(images["ours"], images["base"])
    assert result.outputs["5"]["text"] == [f"embedding:{TOKEN} ball"]


def _apply_error(server: ComfyServer, weights: str) -> str:
    prompt = {"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": CKPT}},
              "2": _apply(weights), "3": {"class_type": "PreviewAny", "inputs": {"source": ["2", 2]}}}
    with pytest.raises(WorkflowError) as caught:
        server.run(prompt, timeout=120)
    message = str(caught.value)
    assert "Fix:" in message and "Traceback" not in message
    return message


def test_bad_weights_are_refused_with_clear_errors(comfy_server: ComfyServer, models_dir: Path,
                                                   tiny_checkpoint: Path) -> None:
    loras = models_dir / "loras" / "textual_localization"
    key = next(iter(_kv_shapes(tiny_checkpoint)))
    meta = build_metadata(tokens=[TOKEN], class_words=["ball"], init_words=["sks"], base_model_family="SDXL")
    save_kv_deltas(loras / "sdxl_shaped.safetensors", {key: torch.zeros(320, 2048)}, meta)
    (loras / "pickled.safetensors").write_bytes(pickle.dumps({key: [0.0] * 8}))
    (loras / "random.safetensors").write_bytes(np.random.default_rng(0).bytes(4096))
    shutil.copy(loras / "random.safetensors", models_dir / "outside.safetensors")

    message = _apply_error(comfy_server, "textual_localization/sdxl_shaped.safetensors")
    assert "(320, 2048)" in message and "(320, 768)" in message and "SDXL" in message and "SD15" in message
    message = _apply_error(comfy_server, "textual_localization/not_there.safetensors")
    assert "not found in ComfyUI's loras folders" in message
    message = _apply_error(comfy_server, "textual_localization/pickled.safetensors")
    assert "not a safetensors file" in message and "never pickle" in message
    message = _apply_error(comfy_server, "textual_localization/random.safetensors")
    assert "not a safetensors file" in message or "corrupt" in message or "truncated" in message
    message = _apply_error(comfy_server, "../outside.safetensors")
    assert "outside ComfyUI's loras folders" in message
    message = _apply_error(comfy_server, "none")
    assert "no weights are selected" in message


def test_show_token_attention_leaves_the_shared_model_as_it_was(comfy_server: ComfyServer, models_dir: Path,
                                                               tiny_checkpoint: Path) -> None:
    reference_name = comfy_server.add_checkpoint(tiny_checkpoint, "tl_tiny_reference.safetensors")
    reference: dict = {"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": reference_name}}}
    ref_save = _branch(reference, 10, ["1", 0], ["1", 1], "a ball on a table", seed=11)
    expected = _images(comfy_server, comfy_server.run(reference, timeout=300), ref_save)[0]

    prompt: dict = {"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": CKPT}},
                    "2": _show(["1", 0], ["1", 1], "a ball on a table", "ball, table", seed=11, batch_size=2)}
    save = _branch(prompt, 10, ["1", 0], ["1", 1], "a ball on a table", seed=11)
    result = comfy_server.run(prompt, timeout=300)
    order = [e["node"] for e in result.events_of("executing") if e.get("node")]
    assert order.index("2") < order.index("13"), f"the KSampler must run after the hooked sampling: {order}"
    assert np.array_equal(_images(comfy_server, result, save)[0], expected)
    heatmaps = _images(comfy_server, result, "2")
    assert len(heatmaps) == 4 and heatmaps[0].shape == (64, 64, 3)  # 2 images x 2 words


def test_show_token_attention_errors_name_the_input(comfy_server: ComfyServer) -> None:
    prompt = {"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": CKPT}},
              "2": _show(["1", 0], ["1", 1], "a ball on a table", "dog")}
    with pytest.raises(WorkflowError) as caught:
        comfy_server.run(prompt, timeout=120)
    assert "'dog' does not occur" in str(caught.value) and "Fix:" in str(caught.value)


# ---------------------------------------------------------------------------------------------- workflows


def _maps(server: ComfyServer, result: RunResult, node_id: str) -> torch.Tensor:
    return torch.tensor(np.stack([img[..., 0] for img in _images(server, result, node_id)]), dtype=torch.float32) / 255


def test_show_token_attention_finds_the_learned_object_after_training(
        comfy_server: ComfyServer, workflow_prompt) -> None:
    """Runs tl_train_and_generate.json, then tl_before_after_attention.json, on the shapes-world model and
    measures on the training photos the share of the learned token's attention (Show Token Attention's
    maps) inside the magenta ball's mask: before training (Apply at strengths 0 = base model + init word)
    and after (strengths 1, hard guidance). On this model's words-that-mean-objects the trained token
    lands on its object (measured values beside CHANGE_FLOOR)."""
    trained = comfy_server.run(workflow_prompt("tl_train_and_generate.json"), timeout=900)
    assert len(_images(comfy_server, trained, "12")) == 1  # the image generated with the learned token
    assert len(_images(comfy_server, trained, "13")) == 2  # Show Token Attention: 1 image x 2 words
    (trigger,) = trained.outputs["6"]["text"]  # the run's own token file (tl_demo_ball, or _2 ... when it ran before)
    assert re.fullmatch(r"embedding:tl_demo_ball(_\d+)?/tl_ball ball", trigger), trigger

    prompt = workflow_prompt("tl_before_after_attention.json")
    for node_id in ("5", "6"):  # the side-by-side on new images is not measured here
        del prompt[node_id]
    compared = comfy_server.run(prompt, timeout=600)
    before, after = _maps(comfy_server, compared, "10"), _maps(comfy_server, compared, "12")
    dataset = load_dataset(comfy_server.input_dir, TRAIN_SET, resolution=TRAIN_RESOLUTION)
    ball = dataset.folder_mask(1)
    assert before.shape == after.shape == ball.shape == (5, TRAIN_RESOLUTION, TRAIN_RESOLUTION)
    for maps in (before, after):
        assert maps.amax(dim=(1, 2)).min() > 0.9 and maps.amin(dim=(1, 2)).max() < 0.1  # per-word min-max
    inside_before = attention_mass_inside(before, ball).mean().item()
    inside_after = attention_mass_inside(after, ball).mean().item()
    print(f"attention inside the ball on the training photos: before {inside_before:.3f}, after {inside_after:.3f}")
    assert inside_after > inside_before + CHANGE_FLOOR


def test_two_concepts_workflow_applies_both_tokens(comfy_server: ComfyServer, workflow_prompt) -> None:
    """Both concepts train together, each with its own mask and its own class images, and both tokens apply."""
    prompt = workflow_prompt("tl_two_concepts.json")
    prompt["5"]["inputs"]["steps"] = 2  # the graph, not the training quality, is under test here
    result = comfy_server.run(prompt, timeout=600)
    (trigger,) = result.outputs["7"]["text"]
    assert re.fullmatch(r"embedding:(tl_demo_pair(_\d+)?)/tl_ball ball and embedding:\1/tl_box box", trigger), trigger
    run = re.match(r"embedding:([^/]+)/", trigger).group(1)
    record = json.loads((comfy_server.output_dir / "textual_localization" / run / "loss_history.json").read_text())
    meta = record["metadata"]
    assert json.loads(meta["tokens"]) == ["tl_ball", "tl_box"] and json.loads(meta["class_words"]) == ["ball", "box"]
    assert meta["prompt"] == "photo of a tl_ball ball and a tl_box box" and float(meta["prior_weight"]) == 1.0
    assert all(h["prior"] > 0 and h["attention"] > 0 for h in record["history"])  # both concepts' losses ran
    assert len(_images(comfy_server, result, "13")) == 1
    assert len(_images(comfy_server, result, "14")) == 2  # 1 image x 2 tokens

