"""workflows/tl_auto_masks.json in the real server: photos, Masks from Word Attention, Mask Target, trainer.

The graph is under test, not the masks' quality (bench/auto_masks.py measures that): the auto masks come out
word-major (ball for every photo, then box), Mask Target's mask_index 1 takes the ball's block with no glue
node between them, and the trainer runs on it and shows its picture.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from headless.server import ComfyServer, RunResult
from headless.workflow import nodes_of_type
from shapes_world.training_sets import TRAIN_SET
from textloc.data.dataset import load_dataset

TRAIN_RESOLUTION = 64  # the example workflows' training size on the world model
RUN_NAME = "e2e_auto_masks"


def _images(server: ComfyServer, result: RunResult, node_id: str) -> list[np.ndarray]:
    entries = result.outputs[node_id]["images"]
    return [np.asarray(Image.open(io.BytesIO(server.view(e))).convert("RGB")) for e in entries]


def _preview_of(prompt: dict, source: str, slot: int) -> str:
    """The workflow's PreviewImage node that shows output `slot` of node `source`."""
    (node_id,) = [n for n in nodes_of_type(prompt, "PreviewImage")
                  if prompt[n]["inputs"]["images"] == [source, slot]]
    return node_id


def test_auto_masks_workflow_chains_into_mask_target_and_trains(comfy_server: ComfyServer,
                                                               workflow_prompt) -> None:
    prompt = workflow_prompt("tl_auto_masks.json")
    (auto,) = nodes_of_type(prompt, "TL_MasksFromWordAttention")
    (target,) = nodes_of_type(prompt, "TL_MaskTarget")
    (trainer,) = nodes_of_type(prompt, "TL_TrainKV")
    assert prompt[target]["inputs"]["mask"] == [auto, 0] and prompt[target]["inputs"]["mask_index"] == 1
    assert prompt[trainer]["inputs"]["dataset"] == [target, 0]
    auto_preview, attention_preview = _preview_of(prompt, auto, 2), _preview_of(prompt, trainer, 4)
    prompt[trainer]["inputs"].update({"steps": 2, "output_name": RUN_NAME})  # the graph, not the quality
    # Test-only views of the masks: every auto mask, and the masks Mask Target took from them.
    prompt["90"] = {"class_type": "MaskToImage", "inputs": {"mask": [auto, 0]}}
    prompt["91"] = {"class_type": "PreviewImage", "inputs": {"images": ["90", 0]}}
    prompt["92"] = {"class_type": "MaskToImage", "inputs": {"mask": [target, 2]}}
    prompt["93"] = {"class_type": "PreviewImage", "inputs": {"images": ["92", 0]}}
    result = comfy_server.run(prompt, timeout=600)

    count = load_dataset(comfy_server.input_dir, TRAIN_SET, resolution=TRAIN_RESOLUTION).num_images
    previews = _images(comfy_server, result, auto_preview)
    assert len(previews) == count and previews[0].shape == (TRAIN_RESOLUTION, TRAIN_RESOLUTION, 3)
    assert len(result.outputs[auto]["images"]) == count  # the node's own preview, shown on it

    masks = [m[..., 0] > 127 for m in _images(comfy_server, result, "91")]
    taken = [m[..., 0] > 127 for m in _images(comfy_server, result, "93")]
    assert len(masks) == 2 * count and len(taken) == count  # ball for every photo, then box
    assert all(m.any() for m in masks)
    assert all(not (ball & box).any() for ball, box in zip(masks[:count], masks[count:], strict=True))
    assert all(np.array_equal(t, m) for t, m in zip(taken, masks[:count], strict=True)), (
        "Mask Target (mask_index 1) did not get the first word's (the ball's) block of the auto masks")

    assert _images(comfy_server, result, attention_preview)  # the token's map | its (auto) mask
    assert result.outputs[trainer]["images"]
    assert (comfy_server.output_dir / "loras" / "textual_localization" / f"{RUN_NAME}.safetensors").is_file()
