"""Masks from Word Attention on the shapes-world model through ComfyUI's own sampler: the masks come out in
Mask Target's order, land on their objects far above chance, and leave the model untouched.

Thresholds sit well below the values measured on the committed weights (in the comments), so they catch a
broken pipeline (wrong word order, wrong token columns, maps of the wrong photo), not seed-to-seed noise.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from headless.paths import SAMPLE_DATA_DIR
from shapes_world import model as world_model
from shapes_world.scenes import scene_batch
from shapes_world.training_sets import HELDOUT_SET
from textloc.data.auto_masks import masks_from_word_attention
from textloc.data.dataset import build_concept, load_dataset

pytestmark = pytest.mark.host

SCENES = 12
RES = world_model.RESOLUTION


@pytest.fixture(scope="module")
def world() -> tuple[Any, Any, Any]:
    import comfy.sd

    path = world_model.ensure_world_checkpoint()
    with torch.inference_mode():
        return tuple(comfy.sd.load_checkpoint_guess_config(str(path), output_vae=True, output_clip=True)[:3])


def _iou(masks: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """Per mask [N, H, W]: IoU of mask > 0.5 with truth > 0.5."""
    a, b = masks > 0.5, truth > 0.5
    return (a & b).sum((-2, -1)).float() / (a | b).sum((-2, -1)).clamp_min(1).float()


def _ball_and_box_scenes(count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`count` unseen world scenes with one ball and one box: photos [N,64,64,3] and masks [2, N, 64, 64]
    (ball, box)."""
    scenes, images, masks = scene_batch(777, 12 * count, RES)
    keep = [i for i, s in enumerate(scenes) if sorted(o.shape for o in s.objects) == ["ball", "box"]][:count]
    assert len(keep) == count
    truth = [[masks[i][[o.shape for o in scenes[i].objects].index(shape)] for i in keep] for shape in ("ball", "box")]
    return torch.from_numpy(images[keep]).float() / 255.0, torch.from_numpy(np.array(truth)).float()


def test_word_masks_land_on_their_objects_in_mask_target_order(world: tuple[Any, Any, Any]) -> None:
    model, clip, vae = world
    images, truth = _ball_and_box_scenes(SCENES)
    options_before = repr(model.model_options)
    with torch.inference_mode():
        result = masks_from_word_attention(model, clip, vae, images, "ball, box")
    assert result.caption == "a photo of a ball and a box"
    assert result.mask_batch.shape == result.soft_batch.shape == (2 * SCENES, RES, RES)
    assert result.preview.shape == (SCENES, RES, RES, 3)
    assert (result.masks.sum(1) <= 1).all()  # the two words never share a pixel
    assert repr(model.model_options) == options_before  # the recorder sat on a clone

    ball, box = result.mask_batch[:SCENES], result.mask_batch[SCENES:]  # word 1 for every photo, then word 2
    own = torch.cat([_iou(ball, truth[0]), _iou(box, truth[1])]).mean().item()
    swapped = torch.cat([_iou(ball, truth[1]), _iou(box, truth[0])]).mean().item()
    print(f"auto-mask IoU with its own object {own:.3f}, with the other object {swapped:.3f}")
    assert own >= OWN_IOU_FLOOR
    assert own >= swapped + OWN_MARGIN


def test_masks_of_the_sample_set_chain_into_mask_target(world: tuple[Any, Any, Any]) -> None:
    """The node's intended use: Load Multi-Concept Dataset's images in, Mask Target's mask_index picks the word.

    The held-out pair set shows a magenta ball (a colour the world never saw) beside a yellow box. The caption
    names the colours, as every caption the world model was trained on did: with the bare default caption
    'a photo of a ball and a box' its 'ball' mostly misses the magenta ball (IoU 0.14 to 0.17 when measured,
    the box 0.56 to 0.58), the help page's case of a model that does not know the word as asked.
    """
    model, clip, vae = world
    dataset = load_dataset(SAMPLE_DATA_DIR, HELDOUT_SET, resolution=RES)
    with torch.inference_mode():
        result = masks_from_word_attention(model, clip, vae, dataset.images, "ball, box", seed=3,
                                           template="a photo of a magenta ball and a yellow box")
    ball = build_concept(dataset, token="tl_ball", class_word="ball", mask=result.mask_batch, mask_index=1)
    box = build_concept(dataset, token="tl_box", class_word="box", mask=result.mask_batch, mask_index=2)
    ball_iou = _iou(ball.masks, dataset.folder_mask(1)).mean().item()
    box_iou = _iou(box.masks, dataset.folder_mask(2)).mean().item()
    print(f"sample set IoU: ball {ball_iou:.3f}, box {box_iou:.3f}")
    assert min(ball_iou, box_iou) >= SAMPLE_IOU_FLOOR


# Measured on the committed weights (CPU): own-object IoU 0.582 (noise seeds 1, 2, 5: 0.562, 0.557, 0.668),
# other-object IoU 0.052 (0.017 to 0.092); sample set ball 0.452, box 0.760 (seeds 0, 1: 0.486/0.758,
# 0.441/0.749).
OWN_IOU_FLOOR = 0.4
OWN_MARGIN = 0.3
SAMPLE_IOU_FLOOR = 0.3
