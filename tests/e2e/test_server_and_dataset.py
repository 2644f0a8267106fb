"""The pack inside the real ComfyUI server: registration, a stock workflow, the dataset workflow."""

from __future__ import annotations

import io
import shutil

import numpy as np
import pytest
from PIL import Image

from headless.server import ComfyServer, WorkflowError
from headless.tiny_model import TINY_CHECKPOINT_PATH
from shapes_world.training_sets import PHOTO_SIZE

PACK_NODES = {
    "TL_LoadMultiConceptDataset": "Load Multi-Concept Dataset",
    "TL_MaskTarget": "Mask Target",
}


def _images(server: ComfyServer, result, node_id: str) -> list[np.ndarray]:
    entries = result.outputs[node_id]["images"]
    return [np.asarray(Image.open(io.BytesIO(server.view(e))).convert("RGB")) for e in entries]


def test_object_info_lists_the_pack_nodes(object_info: dict, comfy_server: ComfyServer) -> None:
    for node_id, display in PACK_NODES.items():
        assert node_id in object_info, f"{node_id} not registered; server log:\n{comfy_server.log_tail()}"
        assert object_info[node_id]["display_name"] == display
        assert object_info[node_id]["category"].startswith("textual_localization/")
        for name, spec in object_info[node_id]["input"]["required"].items():
            assert spec[1].get("tooltip"), f"{node_id}.{name} has no tooltip"
    assert "IMPORT FAILED" not in comfy_server.log_tail(200_000).split("comfyui-textual-localization")[0][-200:]


def test_stock_text_to_image_runs_on_the_tiny_checkpoint(comfy_server: ComfyServer) -> None:
    prompt = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": TINY_CHECKPOINT_PATH.name}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "photo of a red ball", "clip": ["1", 1]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["1", 1]}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 2}},
        "5": {"class_type": "KSampler", "inputs": {
            "model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0], "latent_image": ["4", 0],
            "seed": 1, "steps": 2, "cfg": 7.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}},
        "6": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["1", 2]}},
        "7": {"class_type": "SaveImage", "inputs": {"images": ["6", 0], "filename_prefix": "stock"}},
    }
    result = comfy_server.run(prompt, timeout=300)
    images = _images(comfy_server, result, "7")
    assert len(images) == 2
    assert images[0].shape == (64, 64, 3)
    assert images[0].std() > 0  # a real decode of random weights, not a blank frame


def test_dataset_preview_workflow_loads_masks_aligned_with_photos(comfy_server: ComfyServer, workflow_prompt) -> None:
    prompt = workflow_prompt("tl_dataset_preview.json")
    prompt["1"]["inputs"]["resolution"] = PHOTO_SIZE  # the photos at their own size, not the training size
    assert {n["class_type"] for n in prompt.values()} >= set(PACK_NODES)
    result = comfy_server.run(prompt, timeout=300)
    photos = _images(comfy_server, result, "4")
    masks = _images(comfy_server, result, "6")  # MaskToImage of all folder masks: mask_1 x5 then mask_2 x5
    ball_overlays, box_overlays = _images(comfy_server, result, "7"), _images(comfy_server, result, "8")
    assert len(photos) == 5 and len(masks) == 10
    assert len(ball_overlays) == 5 and len(box_overlays) == 5
    assert all(p.shape == (PHOTO_SIZE, PHOTO_SIZE, 3) for p in photos + masks + ball_overlays)
    for i, photo in enumerate(photos):
        ball, box = masks[i][..., 0] > 127, masks[5 + i][..., 0] > 127
        assert 0.005 < ball.mean() < 0.5 and 0.005 < box.mean() < 0.5
        assert (ball & box).mean() < 0.01
        ball_rgb, box_rgb = photo[ball].mean(0), photo[box].mean(0)
        assert min(ball_rgb[0], ball_rgb[2]) > ball_rgb[1] + 60, f"image {i}: mask_1 misses the magenta ball"
        assert min(box_rgb[0], box_rgb[1]) > box_rgb[2] + 60, f"image {i}: mask_2 misses the yellow box"
        # the overlay tints exactly the masked pixels of the yellow box
        changed = np.abs(box_overlays[i].astype(int) - photo.astype(int)).sum(-1) > 30
        assert (changed & box).sum() / box.sum() > 0.9
        assert (changed & ~box).sum() / (~box).sum() < 0.02


@pytest.fixture()
def broken_set(comfy_server: ComfyServer, tmp_path):
    """A copy of the sample set under input/, to be damaged by a test."""

    def make(name: str):
        folder = comfy_server.input_dir / name
        if folder.exists():
            shutil.rmtree(folder)
        shutil.copytree(comfy_server.input_dir / "toy_pair", folder)
        return folder

    return make


def _dataset_prompt(folder: str, token: str = "tl_ball", mask_index: int = 1) -> dict:
    return {
        "1": {"class_type": "TL_LoadMultiConceptDataset",
              "inputs": {"folder": folder, "resolution": 128, "mask_threshold": 0.5}},
        "2": {"class_type": "TL_MaskTarget", "inputs": {
            "dataset": ["1", 0], "mask_index": mask_index, "token": token, "class_word": "ball",
            "init_word": "sks", "grow": 0, "feather": 0}},
        "3": {"class_type": "PreviewImage", "inputs": {"images": ["2", 1]}},
    }


def _error_of(server: ComfyServer, prompt: dict) -> str:
    with pytest.raises(WorkflowError) as caught:
        server.run(prompt, timeout=120)
    return str(caught.value)


def test_missing_mask_error_names_the_file_and_the_fix(comfy_server: ComfyServer, broken_set) -> None:
    folder = broken_set("tl_missing_mask")
    (folder / "mask_2" / "03.png").unlink()
    message = _error_of(comfy_server, _dataset_prompt("tl_missing_mask"))
    assert "03" in message and "mask_2" in message and "Fix:" in message
    assert "Traceback" not in message


def test_bad_token_and_mask_count_errors_reach_the_user(comfy_server: ComfyServer) -> None:
    message = _error_of(comfy_server, _dataset_prompt("toy_pair", token="my doll"))
    assert "token" in message and "Fix:" in message
    message = _error_of(comfy_server, _dataset_prompt("toy_pair", mask_index=3))
    assert "mask_index" in message and "2" in message
    prompt = _dataset_prompt("toy_pair")
    prompt["4"] = {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": 128, "height": 128}}
    prompt["2"]["inputs"]["mask"] = ["4", 0]
    message = _error_of(comfy_server, prompt)
    assert "5" in message and "1" in message and "Fix:" in message


def test_folder_outside_input_is_refused(comfy_server: ComfyServer) -> None:
    with pytest.raises(WorkflowError) as caught:
        comfy_server.run(_dataset_prompt("../models"), timeout=60)
    assert "folder" in str(caught.value)


def test_edited_set_is_read_again_not_served_from_the_cache(comfy_server: ComfyServer, broken_set) -> None:
    """ComfyUI re-runs a node only when its inputs change; the loader's fingerprint covers the files."""
    folder = broken_set("tl_edited_set")
    prompt = _dataset_prompt("tl_edited_set")
    first = _images(comfy_server, comfy_server.run(prompt, timeout=120), "3")
    again = comfy_server.run(prompt, timeout=120)
    assert "1" not in [e["node"] for e in again.events_of("executing") if e.get("node")]  # cached
    mask_file = folder / "mask_1" / "01.png"
    corner = Image.new("L", Image.open(mask_file).size, 0)
    corner.paste(255, (0, 0, corner.width // 3, corner.height // 3))
    corner.save(mask_file)
    edited = comfy_server.run(prompt, timeout=120)
    assert "1" in [e["node"] for e in edited.events_of("executing") if e.get("node")]
    assert not np.array_equal(_images(comfy_server, edited, "3")[0], first[0])
