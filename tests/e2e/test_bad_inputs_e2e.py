"""Bad input through the real server, for all seven nodes: every refusal names the input, file or folder at
fault, the server keeps answering, and output/ holds no half-written file. Should-load cases keep the checks
from creeping into refusing good data (16-bit, palette, grey, RGBA, JPEG + cut-out masks, 1x1, non-ASCII).

Two kinds of refusal reach the user:
- ComfyUI's own validation (a number outside its min/max): the POST /prompt is answered 400 with
  node_errors; the message names the input ("Value 32 smaller than min of 64: resolution") but carries no
  "Fix:" (not the pack's text). ComfyUI 0.3.75 does not check the values of V3 (comfy_api) dropdowns, so
  a folder, weights file or mode missing from a list reaches the node;
- the pack's TLInputError, raised while the node executes: "<input or file>: <problem> Fix: <fix>"; the
  WorkflowError reads "workflow failed: <that text>".

Every data set and model file made here is named tl_e2e_bi_* (the server is shared with the other e2e
tests, which list dropdowns and run the example workflows) and removed when the module ends.
"""

from __future__ import annotations

import io
import json
import pickle
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file

from headless.server import ComfyServer, RunResult, WorkflowError
from headless.tiny_model import TINY_CHECKPOINT_PATH
from textloc.weights.files import (
    KIND_EMBEDDING,
    KIND_KV,
    META_KIND,
    build_metadata,
    kv_file_key,
    save_embedding,
    save_kv_deltas,
)

CKPT = TINY_CHECKPOINT_PATH.name
PREFIX = "tl_e2e_bi_"  # every folder and file this module creates
BASE_SET = "shapes_pair"  # 5 photos of 128 px, mask_1 (ball) and mask_2 (box); in input/ from the session fixture
RES = 64
RUN_TIMEOUT = 180

TOKEN = f"{PREFIX}tok"  # a valid trained-looking token with its embedding in models/embeddings/
INF_TOKEN = f"{PREFIX}inf"  # its embedding holds inf
LOST_TOKEN = f"{PREFIX}lost"  # no embedding file anywhere
USER_TOKEN = f"{PREFIX}own"  # output/embeddings/<it>.safetensors is the user's own file, not a run's
SHADOWED_RUN = f"{PREFIX}shadowed"  # models/embeddings/<it>/tl_ball.safetensors exists
NON_ASCII_SET = f"{PREFIX}bälle_集合"


# ---------------------------------------------------------------------------------------------- prompts


def _loader(folder: str = BASE_SET, resolution: int = RES, mask_threshold: float = 0.5) -> dict:
    return {"class_type": "TL_LoadMultiConceptDataset",
            "inputs": {"folder": folder, "resolution": resolution, "mask_threshold": mask_threshold}}


def _target_inputs(dataset: list, **extra: Any) -> dict:
    return {"class_type": "TL_MaskTarget", "inputs": {
        "dataset": dataset, "mask_index": 1, "token": "tl_ball", "class_word": "ball", "init_word": "sks",
        "grow": 0, "feather": 0, **extra}}


def load_prompt(folder: str = BASE_SET, **loader: Any) -> dict:
    """Load Multi-Concept Dataset -> PreviewImage of its photos."""
    return {"1": _loader(folder, **loader), "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 1]}}}


def target_prompt(folder: str = BASE_SET, **target: Any) -> dict:
    """Load Multi-Concept Dataset -> Mask Target -> PreviewImage of the overlay.

    One output only: ComfyUI runs the outputs that pass validation, so a second output that does not
    depend on Mask Target would turn a refused Mask Target input into a successful partial run.
    """
    return {"1": _loader(folder), "2": _target_inputs(["1", 0], **target),
            "3": {"class_type": "PreviewImage", "inputs": {"images": ["2", 1]}}}


def good_prompt(folder: str, **target: Any) -> dict:
    """target_prompt plus a PreviewImage ("4") of the loaded photos."""
    prompt = target_prompt(folder, **target)
    prompt["4"] = {"class_type": "PreviewImage", "inputs": {"images": ["1", 1]}}
    return prompt


def two_targets_prompt(token: str, class_word: str) -> dict:
    """tl_ball/ball on mask_1, then a second Mask Target on mask_2 with the given token and class word."""
    prompt = target_prompt()
    prompt["5"] = _target_inputs(["2", 0], mask_index=2, token=token, class_word=class_word)
    prompt["3"]["inputs"]["images"] = ["5", 1]
    return prompt


def external_mask_prompt(mask: dict, *extra_nodes: tuple[str, dict], **target: Any) -> dict:
    """Mask Target fed a MASK from node "20" (`mask`); `extra_nodes` feed node "20"."""
    prompt = target_prompt(**target)
    prompt["20"] = mask
    prompt.update(dict(extra_nodes))
    prompt["2"]["inputs"]["mask"] = ["20", 0]
    return prompt


def _empty_image(width: int, height: int, batch: int, color: int = 0) -> dict:
    return {"class_type": "EmptyImage", "inputs": {"width": width, "height": height, "batch_size": batch,
                                                   "color": color}}


def _image_to_mask(image: list) -> dict:
    return {"class_type": "ImageToMask", "inputs": {"image": image, "channel": "red"}}


def train_prompt(from_loader: bool = False, target: dict | None = None, old_layout: dict | None = None,
                 **settings: Any) -> dict:
    """Checkpoint (tiny) + dataset (64 px) + Mask Target + trainer with TL Training Options; every case fails
    before the first step. `old_layout`: inputs set on the training node itself, as older prompts did."""
    train = {"model": ["10", 0], "clip": ["10", 1], "vae": ["10", 2], "dataset": ["1" if from_loader else "2", 0],
             "guidance": "hard", "steps": 1, "output_name": f"{PREFIX}run", "resume": False, "options": ["4", 0]}
    options = {
        "attention_weight": 1.0, "learning_rate": 0.0, "batch_size": 0, "prior_weight": 1.0, "seed": 42,
        "checkpoint_every": 0, "precision": "auto", "gradient_checkpointing": "auto", "train_token": True,
        "train_q": False, "prompt": "photo of {concepts}", "concept_phrase": "a {token} {class}",
        "weight_decay": 0.01, "grad_clip": 1.0, "preview_every": 0, "attention_size": 0, "lora_rank": 0,
        "embedding_name": "run/token", "denoise_region": "whole photo", "prior_empty_prompt": False}
    for name, value in settings.items():
        (train if name in train else options)[name] = value
    train = {k: v for k, v in {**train, **(old_layout or {})}.items() if v is not None}  # None: input left out
    return {"10": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": CKPT}},
            "1": _loader(), "2": _target_inputs(["1", 0], **(target or {})),
            "3": {"class_type": "TL_TrainKV", "inputs": train},
            "4": {"class_type": "TL_TrainingOptions", "inputs": options}}


def apply_prompt(weights: str, **extra: Any) -> dict:
    """Checkpoint (tiny) -> Apply TL Weights -> PreviewAny of its trigger text."""
    return {"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": CKPT}},
            "2": {"class_type": "TL_ApplyWeights", "inputs": {
                "model": ["1", 0], "clip": ["1", 1], "weights": weights, "strength_model": 1.0,
                "strength_token": 1.0, **extra}},
            "3": {"class_type": "PreviewAny", "inputs": {"source": ["2", 2]}}}


def show_prompt(images: tuple[int, int] | None = None, **extra: Any) -> dict:
    """Checkpoint (tiny) -> Show Token Attention at 64 px, 1 step (optionally on EmptyImage photos of a size)."""
    inputs = {"model": ["1", 0], "clip": ["1", 1], "vae": ["1", 2], "text": "a ball on a table", "negative": "",
              "words": "ball", "seed": 0, "steps": 1, "cfg": 7.0, "sampler_name": "euler", "scheduler": "normal",
              "width": 64, "height": 64, "batch_size": 1, "resolutions": "auto", "start_percent": 0.0,
              "end_percent": 1.0, "normalization": "per word", "denoise": 0.6, **extra}
    prompt = {"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": CKPT}},
              "2": {"class_type": "TL_ShowTokenAttention", "inputs": inputs}}
    if images is not None:
        prompt["3"] = _empty_image(images[0], images[1], 1, 0x808080)
        inputs["images"] = ["3", 0]
    return prompt


def evaluate_prompt(maps: int = 0, masks: int = 0, **extra: Any) -> dict:
    """Evaluate TL Images on 2 grey 64 px images (no CLIP vision, no KID), optionally with attention maps/masks."""
    prompt = {"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": CKPT}},
              "2": _empty_image(64, 64, 2, 0x808080),
              "3": {"class_type": "TL_EvaluateImages", "inputs": {
                  "images": ["2", 0], "reference_images": ["2", 0], "clip": ["1", 1], "clip_vision_name": "none",
                  "prompt": "photo of a embedding:tl_ball ball", "kid": "off", "save_name": "", **extra}}}
    if maps and masks:
        prompt["4"] = _empty_image(64, 64, maps, 0xFFFFFF)
        prompt["5"] = _image_to_mask(["4", 0])
        prompt["6"] = _empty_image(64, 64, masks, 0xFFFFFF)
        prompt["7"] = _image_to_mask(["6", 0])
        prompt["3"]["inputs"].update({"attention_maps": ["5", 0], "object_masks": ["7", 0]})
    return prompt


def auto_masks_prompt(size: int = 64, **extra: Any) -> dict:
    """Checkpoint (tiny) + one grey photo -> Masks from Word Attention."""
    inputs = {"images": ["2", 0], "model": ["1", 0], "clip": ["1", 1], "vae": ["1", 2], "words": "ball, box",
              "prompt": "a photo of a {words}", "timesteps": "250, 500", "seed": 0, "threshold": 0.0,
              "fill_holes": True, "keep_largest": True, "grow": 0, "feather": 0, **extra}
    return {"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": CKPT}},
            "2": _empty_image(size, size, 1, 0x808080),
            "3": {"class_type": "TL_MasksFromWordAttention", "inputs": inputs}}


# ---------------------------------------------------------------------------------------------- cases


@dataclass(frozen=True)
class BadCase:
    """One refusal: the prompt, the node that must refuse it, and the names its message must contain."""

    id: str
    node: str  # class_type of the node that refuses
    prompt: Callable[[], dict]
    names: tuple[str, ...]  # input, file or folder names the message must contain
    validation: bool = False  # refused by ComfyUI's validation (HTTP 400): no "Fix:" in that text


def _case(id: str, node: str, prompt: Callable[[], dict], *names: str, validation: bool = False) -> BadCase:
    return BadCase(id, node, prompt, names, validation)


LOAD, TARGET, TRAIN, OPTIONS = "TL_LoadMultiConceptDataset", "TL_MaskTarget", "TL_TrainKV", "TL_TrainingOptions"
APPLY, SHOW, EVAL, AUTO = "TL_ApplyWeights", "TL_ShowTokenAttention", "TL_EvaluateImages", "TL_MasksFromWordAttention"

BAD_CASES: list[BadCase] = [
    # --- Load Multi-Concept Dataset. ComfyUI 0.3.75 checks numbers against min/max but not the values of
    # V3 (comfy_api) dropdowns, so a folder or mode missing from a list reaches the node, which refuses it.
    _case("load_missing_folder", LOAD, lambda: load_prompt(f"{PREFIX}nowhere"), f"folder '{PREFIX}nowhere'",
          "does not exist"),
    _case("load_folder_outside_input", LOAD, lambda: load_prompt("../models"), "folder '../models'", "outside"),
    _case("load_image_without_mask", LOAD, lambda: load_prompt(f"{PREFIX}no_mask"), f"{PREFIX}no_mask", "03.png",
          "mask_2"),
    _case("load_mask_without_image", LOAD, lambda: load_prompt(f"{PREFIX}orphan_mask"), "99.png", "mask_1"),
    _case("load_mask_of_another_size", LOAD, lambda: load_prompt(f"{PREFIX}mask_size"), "02.png", "mask_1", "64x64"),
    _case("load_empty_black_mask", LOAD, lambda: load_prompt(f"{PREFIX}empty_mask"), "04.png", "mask_1", "empty"),
    _case("load_full_white_mask", LOAD, lambda: load_prompt(f"{PREFIX}full_mask"), "05.png", "mask_2", "full"),
    _case("load_truncated_png", LOAD, lambda: load_prompt(f"{PREFIX}truncated"), "02.png", "truncated"),
    _case("load_text_file_named_png", LOAD, lambda: load_prompt(f"{PREFIX}not_png"), "03.png", "not an image"),
    _case("load_both_resized_and_images", LOAD, lambda: load_prompt(f"{PREFIX}two_photo_folders"),
          f"{PREFIX}two_photo_folders", "images/"),
    _case("load_gap_in_mask_folders", LOAD, lambda: load_prompt(f"{PREFIX}mask_gap"), f"{PREFIX}mask_gap", "mask_2"),
    _case("load_mask_folder_zero", LOAD, lambda: load_prompt(f"{PREFIX}mask_zero"), "mask_0"),
    _case("load_no_photos", LOAD, lambda: load_prompt(f"{PREFIX}no_photos"), f"{PREFIX}no_photos", "resized",
          "no photos"),
    _case("load_two_photos_one_stem", LOAD, lambda: load_prompt(f"{PREFIX}same_stem"), "01.jpg", "01.png"),
    _case("load_flat_mask_without_photo", LOAD, lambda: load_prompt(f"{PREFIX}flat_orphan"), "b_mask_1.png"),
    _case("load_photo_linked_outside_input", LOAD, lambda: load_prompt(f"{PREFIX}symlink"), "06.png", "outside"),
    # A 1x1 photo is upscaled and accepted (see the should-load cases), but a 1x1 mask is all object or all
    # background: the coverage rule (README: "empty or full masks") refuses it, which is right for the loss.
    _case("load_1x1_photo_with_1x1_mask", LOAD, lambda: load_prompt(f"{PREFIX}one_pixel_masked"), "01.png", "full"),
    _case("load_resolution_not_multiple_of_8", LOAD, lambda: load_prompt(resolution=100), "resolution", "100"),
    _case("load_resolution_too_small", LOAD, lambda: load_prompt(resolution=32), "resolution", validation=True),
    _case("load_threshold_zero", LOAD, lambda: load_prompt(mask_threshold=0.0), "mask_threshold", validation=True),
    _case("load_threshold_above_one", LOAD, lambda: load_prompt(mask_threshold=1.5), "mask_threshold",
          validation=True),
    # --- Mask Target
    _case("target_token_with_space", TARGET, lambda: target_prompt(token="my ball"), "token", "my ball"),
    _case("target_token_starts_with_digit", TARGET, lambda: target_prompt(token="1ball"), "token", "1ball"),
    _case("target_token_equals_class_word", TARGET, lambda: target_prompt(token="ball"), "token", "ball"),
    _case("target_same_token_twice", TARGET, lambda: two_targets_prompt("tl_ball", "box"), "token", "tl_ball",
          "already used"),
    _case("target_token_equals_other_class_word", TARGET, lambda: two_targets_prompt("ball", "box"), "token",
          "class word 'ball'"),
    _case("target_mask_index_beyond_folders", TARGET, lambda: target_prompt(mask_index=3), "mask_index", "3"),
    _case("target_mask_index_zero", TARGET, lambda: target_prompt(mask_index=0), "mask_index", validation=True),
    _case("target_mask_input_wrong_count", TARGET, lambda: external_mask_prompt(
        {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": RES, "height": RES}}), "mask", "1 mask", "5"),
    _case("target_mask_input_wrong_size", TARGET, lambda: external_mask_prompt(
        _image_to_mask(["21", 0]), ("21", _empty_image(100, 100, 5))), "mask", "100x100"),
    _case("target_class_images_folder_missing", TARGET,
          lambda: target_prompt(class_images_folder=f"{PREFIX}no_prior"), f"{PREFIX}no_prior", "does not exist"),
    _case("target_class_images_folder_empty", TARGET,
          lambda: target_prompt(class_images_folder=f"{PREFIX}empty_prior"), f"{PREFIX}empty_prior", "no images"),
    _case("target_class_images_folder_outside_input", TARGET,
          lambda: target_prompt(class_images_folder="../models"), "../models", "outside"),
    _case("target_init_word_two_words", TARGET, lambda: target_prompt(init_word="two words"), "init_word"),
    _case("target_class_word_punctuation", TARGET, lambda: target_prompt(class_word="ball!"), "class_word"),
    _case("target_grow_empties_the_mask", TARGET, lambda: target_prompt(grow=-64), "grow -64", "empty"),
    _case("target_grow_out_of_range", TARGET, lambda: target_prompt(grow=100), "grow", validation=True),
    # --- Train Textual Localization (K/V): all refused before the model is touched
    _case("train_token_spelled_by_prompt", TRAIN, lambda: train_prompt(target={"token": "photo"}), "token", "photo"),
    _case("train_token_inside_prompt_word", TRAIN, lambda: train_prompt(target={"token": "pho"}), "token", "pho"),
    _case("train_token_spelled_by_options_prompt", TRAIN,
          lambda: train_prompt(target={"token": "picture"}, prompt="picture of {concepts}"), "token", "picture"),
    _case("options_prompt_without_concepts", OPTIONS, lambda: train_prompt(prompt="photo of a ball"), "prompt",
          "{concepts}"),
    _case("options_concept_phrase_without_token", OPTIONS, lambda: train_prompt(concept_phrase="a {class}"),
          "concept_phrase", "{token}"),
    _case("options_concept_phrase_without_class", OPTIONS, lambda: train_prompt(concept_phrase="a {token}"),
          "concept_phrase", "{class}"),
    _case("train_old_layout_inputs_beside_options", TRAIN,
          lambda: train_prompt(old_layout={"learning_rate": 1e-3}), "options", "learning_rate"),
    _case("train_old_layout_input_of_wrong_type", TRAIN,
          lambda: train_prompt(old_layout={"batch_size": "two", "options": None}), "batch_size", "two"),
    # ComfyUI checks only the inputs a node declares, so the old names get TL Training Options' checks from the node
    _case("train_old_layout_learning_rate_above_max", TRAIN,
          lambda: train_prompt(old_layout={"learning_rate": 1000, "options": None}), "learning_rate", "1000",
          "maximum of 0.1"),
    _case("train_old_layout_batch_size_below_min", TRAIN,
          lambda: train_prompt(old_layout={"batch_size": -1, "options": None}), "batch_size", "-1", "minimum of 0"),
    _case("train_old_layout_precision_not_in_list", TRAIN,
          lambda: train_prompt(old_layout={"precision": "fp64", "options": None}), "precision", "fp64"),
    _case("train_resume_unknown_run", TRAIN, lambda: train_prompt(output_name=f"{PREFIX}never_ran", resume=True),
          "output_name", f"{PREFIX}never_ran"),
    _case("train_output_name_parent", TRAIN, lambda: train_prompt(output_name="../x"), "output_name", "../x"),
    _case("train_output_name_empty", TRAIN, lambda: train_prompt(output_name=""), "output_name"),
    _case("train_dataset_without_mask_target", TRAIN, lambda: train_prompt(from_loader=True), "dataset",
          "Mask Target"),
    _case("train_guidance_not_in_list", TRAIN, lambda: train_prompt(guidance="medium"), "guidance", "medium"),
    _case("options_learning_rate_negative", OPTIONS, lambda: train_prompt(learning_rate=-1e-4), "learning_rate",
          validation=True),
    _case("options_lora_rank_negative", OPTIONS, lambda: train_prompt(lora_rank=-1), "lora_rank", validation=True),
    _case("options_embedding_name_not_in_list", OPTIONS, lambda: train_prompt(embedding_name="token"),
          "embedding_name", "'token'"),
    # The overwrite choice replaces only a file an earlier run wrote, and only a name the prompt would reach.
    _case("train_overwrite_of_a_token_models_embeddings_answers_first", TRAIN,
          lambda: train_prompt(target={"token": TOKEN}, embedding_name="token (overwrite)"), "embedding_name",
          f"{TOKEN}.safetensors", "run/token"),
    _case("train_overwrite_of_a_file_no_run_wrote", TRAIN,
          lambda: train_prompt(target={"token": USER_TOKEN}, embedding_name="token (overwrite)"), "embedding_name",
          f"{USER_TOKEN}.safetensors", "never overwritten"),
    _case("train_run_token_name_models_embeddings_answers_first", TRAIN,
          lambda: train_prompt(output_name=SHADOWED_RUN), "output_name", f"{SHADOWED_RUN}/tl_ball.safetensors"),
    _case("train_steps_above_max", TRAIN, lambda: train_prompt(steps=200000), "steps", validation=True),
    _case("train_steps_negative", TRAIN, lambda: train_prompt(steps=-1), "steps", validation=True),
    # --- Apply TL Weights (files under models/loras/, made by the module fixture)
    _case("apply_weights_missing", APPLY, lambda: apply_prompt(f"{PREFIX}missing.safetensors"), "weights",
          f"{PREFIX}missing.safetensors"),
    _case("apply_weights_none", APPLY, lambda: apply_prompt("none"), "weights"),
    _case("apply_weights_outside_loras", APPLY, lambda: apply_prompt("../checkpoints/" + CKPT), "weights",
          "outside"),
    _case("apply_pickled_safetensors", APPLY, lambda: apply_prompt(f"{PREFIX}pickled.safetensors"),
          f"{PREFIX}pickled.safetensors", "never pickle"),
    _case("apply_pt_file", APPLY, lambda: apply_prompt(f"{PREFIX}weights.pt"), f"{PREFIX}weights.pt",
          "not a .safetensors file"),
    _case("apply_truncated_safetensors", APPLY, lambda: apply_prompt(f"{PREFIX}truncated.safetensors"),
          f"{PREFIX}truncated.safetensors", "truncated"),
    _case("apply_kv_holding_nan", APPLY, lambda: apply_prompt(f"{PREFIX}nan.safetensors"),
          f"{PREFIX}nan.safetensors", "NaN"),
    _case("apply_embedding_holding_inf", APPLY, lambda: apply_prompt(f"{PREFIX}inf_kv.safetensors"),
          f"{INF_TOKEN}.safetensors", "infinite"),
    _case("apply_embedding_missing", APPLY, lambda: apply_prompt(f"{PREFIX}lost_kv.safetensors"), LOST_TOKEN,
          "embeddings"),
    _case("apply_weights_of_another_shape", APPLY, lambda: apply_prompt(f"{PREFIX}sdxl_shaped.safetensors"),
          f"{PREFIX}sdxl_shaped.safetensors", "(320, 2048)", "SDXL"),
    _case("apply_foreign_lora", APPLY, lambda: apply_prompt(f"{PREFIX}foreign.safetensors"),
          f"{PREFIX}foreign.safetensors", "not a Textual Localization K/V file"),
    _case("apply_strength_token_above_one", APPLY,
          lambda: apply_prompt(f"{PREFIX}good.safetensors", strength_token=2.0), "strength_token", validation=True),
    # --- Show Token Attention
    _case("show_word_not_in_prompt", SHOW, lambda: show_prompt(words="dog"), "words", "'dog' does not occur"),
    _case("show_words_empty", SHOW, lambda: show_prompt(words=""), "words", "empty"),
    _case("show_words_only_commas", SHOW, lambda: show_prompt(words=" , ,"), "words", "empty"),
    _case("show_unknown_embedding", SHOW, lambda: show_prompt(words=f"embedding:{PREFIX}ghost"), "words",
          f"{PREFIX}ghost"),
    _case("show_start_after_end", SHOW, lambda: show_prompt(start_percent=0.8, end_percent=0.2),
          "start_percent/end_percent"),
    _case("show_resolutions_not_recorded", SHOW, lambda: show_prompt(resolutions="7"), "resolutions", "'7'"),
    _case("show_images_too_small", SHOW, lambda: show_prompt(images=(4, 4)), "images"),
    _case("show_steps_zero", SHOW, lambda: show_prompt(steps=0), "steps", validation=True),
    _case("show_normalization_not_in_list", SHOW, lambda: show_prompt(normalization="loud"), "normalization",
          "loud"),
    # --- Evaluate TL Images
    _case("evaluate_clip_vision_missing", EVAL, lambda: evaluate_prompt(clip_vision_name=f"{PREFIX}clip.safetensors"),
          "clip_vision_name", f"{PREFIX}clip.safetensors"),
    _case("evaluate_maps_and_masks_count_differ", EVAL, lambda: evaluate_prompt(maps=3, masks=2), "object_masks",
          "2 masks for 3"),
    _case("evaluate_save_name_parent", EVAL, lambda: evaluate_prompt(save_name="../x"), "save_name", "../x"),
    _case("evaluate_kid_not_in_list", EVAL, lambda: evaluate_prompt(kid="maybe"), "kid", "maybe"),
    # --- Masks from Word Attention
    _case("auto_words_empty", AUTO, lambda: auto_masks_prompt(words=""), "words", "empty"),
    _case("auto_word_not_in_prompt", AUTO, lambda: auto_masks_prompt(words="ball", prompt="a photo of a cat"),
          "words", "'ball' does not occur"),
    _case("auto_prompt_empty", AUTO, lambda: auto_masks_prompt(prompt=""), "prompt", "empty"),
    _case("auto_timesteps_not_numbers", AUTO, lambda: auto_masks_prompt(timesteps="abc"), "timesteps", "abc"),
    _case("auto_timesteps_empty", AUTO, lambda: auto_masks_prompt(timesteps=" , "), "timesteps", "empty"),
    _case("auto_timestep_zero", AUTO, lambda: auto_masks_prompt(timesteps="0"), "timesteps", "1..999"),
    _case("auto_timestep_1000", AUTO, lambda: auto_masks_prompt(timesteps="250, 1000"), "timesteps", "1..999"),
    _case("auto_images_too_small", AUTO, lambda: auto_masks_prompt(size=4), "images"),
    _case("auto_threshold_above_one", AUTO, lambda: auto_masks_prompt(threshold=1.5), "threshold", validation=True),
    _case("auto_grow_out_of_range", AUTO, lambda: auto_masks_prompt(grow=100), "grow", validation=True),
]

def _bad_params() -> list[Any]:
    return [pytest.param(case, id=case.id) for case in BAD_CASES]


# ---------------------------------------------------------------------------------------------- files


def _damaged_copy(server: ComfyServer, name: str) -> Path:
    folder = server.input_dir / f"{PREFIX}{name}"
    if folder.exists():
        shutil.rmtree(folder)
    shutil.copytree(server.input_dir / BASE_SET, folder)
    return folder


def _make_bad_sets(server: ComfyServer, outside: Path) -> None:
    """The damaged copies of shapes_pair the dataset cases load."""
    folder = _damaged_copy(server, "no_mask")
    (folder / "mask_2" / "03.png").unlink()

    folder = _damaged_copy(server, "orphan_mask")
    shutil.copy(folder / "mask_1" / "01.png", folder / "mask_1" / "99.png")

    folder = _damaged_copy(server, "mask_size")
    Image.open(folder / "mask_1" / "02.png").resize((64, 64)).save(folder / "mask_1" / "02.png")

    folder = _damaged_copy(server, "empty_mask")
    Image.new("L", (128, 128), 0).save(folder / "mask_1" / "04.png")

    folder = _damaged_copy(server, "full_mask")
    Image.new("L", (128, 128), 255).save(folder / "mask_2" / "05.png")

    folder = _damaged_copy(server, "truncated")
    data = (folder / "resized" / "02.png").read_bytes()
    (folder / "resized" / "02.png").write_bytes(data[: len(data) // 2])

    folder = _damaged_copy(server, "not_png")
    (folder / "resized" / "03.png").write_text("this is a text file, not a picture\n")

    folder = _damaged_copy(server, "two_photo_folders")
    shutil.copytree(folder / "resized", folder / "images")

    folder = _damaged_copy(server, "mask_gap")
    (folder / "mask_2").rename(folder / "mask_3")

    folder = _damaged_copy(server, "mask_zero")
    shutil.copytree(folder / "mask_1", folder / "mask_0")

    folder = _damaged_copy(server, "no_photos")
    for photo in (folder / "resized").iterdir():
        photo.unlink()

    folder = _damaged_copy(server, "same_stem")
    Image.open(folder / "resized" / "01.png").convert("RGB").save(folder / "resized" / "01.jpg")

    folder = server.input_dir / f"{PREFIX}flat_orphan"
    folder.mkdir()
    Image.open(server.input_dir / BASE_SET / "resized" / "01.png").save(folder / "a.png")
    Image.open(server.input_dir / BASE_SET / "mask_1" / "01.png").save(folder / "a_mask_1.png")
    Image.open(server.input_dir / BASE_SET / "mask_1" / "02.png").save(folder / "b_mask_1.png")

    folder = _damaged_copy(server, "symlink")
    target = outside / "06.png"
    shutil.copy(folder / "resized" / "01.png", target)
    (folder / "resized" / "06.png").symlink_to(target)
    for mask in ("mask_1", "mask_2"):
        shutil.copy(folder / mask / "01.png", folder / mask / "06.png")

    folder = server.input_dir / f"{PREFIX}one_pixel_masked"
    (folder / "resized").mkdir(parents=True)
    (folder / "mask_1").mkdir()
    Image.new("RGB", (1, 1), (200, 30, 30)).save(folder / "resized" / "01.png")
    Image.new("L", (1, 1), 255).save(folder / "mask_1" / "01.png")

    (server.input_dir / f"{PREFIX}empty_prior").mkdir()


def _kv_shapes(checkpoint: Path) -> dict[str, list[int]]:
    """attn2 K/V weight shapes of the tiny checkpoint, as model keys (read from the file header)."""
    prefix = "model."
    with safe_open(str(checkpoint), framework="pt") as f:
        return {k[len(prefix):]: f.get_slice(k).get_shape() for k in f.keys()
                if k.startswith(prefix + "diffusion_model.")
                and k.endswith((".attn2.to_k.weight", ".attn2.to_v.weight"))}


def _meta(token: str, **extra: Any) -> dict[str, str]:
    return build_metadata(tokens=[token], class_words=["ball"], init_words=["sks"], steps=1, seed=0,
                          base_model_family="SD15", base_hash=f"{PREFIX}{token}", **extra)


def _make_bad_weights(server: ComfyServer, checkpoint: Path) -> None:
    """K/V and embedding files under models/ for the Apply cases (the pack's writer refuses NaN/inf, so those
    two are written with safetensors directly and the pack's metadata), and the token files the token-name
    cases of the trainer meet."""
    loras, embeddings = server.base_dir / "models" / "loras", server.base_dir / "models" / "embeddings"
    gen = torch.Generator().manual_seed(0)
    shapes = _kv_shapes(checkpoint)
    deltas = {k: torch.randn(s, generator=gen) * 0.01 for k, s in shapes.items()}

    save_kv_deltas(loras / f"{PREFIX}good.safetensors", deltas, _meta(TOKEN))
    save_embedding(embeddings / f"{TOKEN}.safetensors", {"clip_l": torch.randn(1, 768, generator=gen) * 0.02},
                   {**_meta(TOKEN), "token": TOKEN})

    (loras / f"{PREFIX}pickled.safetensors").write_bytes(pickle.dumps({next(iter(shapes)): [0.0] * 8}))
    (loras / f"{PREFIX}weights.pt").write_bytes(pickle.dumps({"x": [0.0]}))
    good = (loras / f"{PREFIX}good.safetensors").read_bytes()
    (loras / f"{PREFIX}truncated.safetensors").write_bytes(good[: len(good) // 2])

    nan = {kv_file_key(k): v.to(torch.float16) for k, v in deltas.items()}
    first = next(iter(nan))
    nan[first] = nan[first].clone()
    nan[first][0, 0] = float("nan")
    save_file(nan, str(loras / f"{PREFIX}nan.safetensors"), metadata={**_meta(TOKEN), META_KIND: KIND_KV})

    save_kv_deltas(loras / f"{PREFIX}inf_kv.safetensors", deltas, _meta(INF_TOKEN))
    inf = torch.zeros(1, 768)
    inf[0, 3] = float("inf")
    save_file({"clip_l": inf}, str(embeddings / f"{INF_TOKEN}.safetensors"),
              metadata={**_meta(INF_TOKEN), META_KIND: KIND_EMBEDDING, "token": INF_TOKEN})

    save_kv_deltas(loras / f"{PREFIX}lost_kv.safetensors", deltas, _meta(LOST_TOKEN))

    key = next(iter(shapes))
    save_kv_deltas(loras / f"{PREFIX}sdxl_shaped.safetensors", {key: torch.zeros(320, 2048)},
                   {**_meta(TOKEN), "base_model_family": "SDXL"})

    save_file({"diffusion_model.x.diff": torch.zeros(2)}, str(loras / f"{PREFIX}foreign.safetensors"))

    # For the token-name cases: a user's own embedding where the overwrite choice would write, and a file
    # in models/embeddings/ (searched first) under the name a run's token would have.
    (server.output_dir / "embeddings").mkdir(exist_ok=True)
    save_file({"clip_l": torch.zeros(1, 768)}, str(server.output_dir / "embeddings" / f"{USER_TOKEN}.safetensors"))
    save_embedding(embeddings / SHADOWED_RUN / "tl_ball.safetensors", {"clip_l": torch.zeros(1, 768)},
                   {**_meta("tl_ball"), "token": "tl_ball"})


# ---------------------------------------------------------------------------------------------- should-load sets


def _good_set(server: ComfyServer, name: str, photo: Callable[[Image.Image], Image.Image],
              mask: Callable[[Image.Image], Image.Image] = lambda m: m, photo_ext: str = ".png",
              rename: Callable[[str], str] = lambda stem: stem) -> None:
    """A converted copy of shapes_pair: every photo through `photo`, every mask through `mask`."""
    source, folder = server.input_dir / BASE_SET, server.input_dir / name
    for sub in ("resized", "mask_1", "mask_2"):
        (folder / sub).mkdir(parents=True)
        for path in sorted((source / sub).glob("*.png")):
            image = Image.open(path)
            image.load()
            if sub == "resized":
                photo(image).save(folder / sub / f"{rename(path.stem)}{photo_ext}")
            else:
                mask(image).save(folder / sub / f"{rename(path.stem)}.png")


def _sixteen_bit(image: Image.Image) -> Image.Image:
    values = np.asarray(image.convert("L")).astype(np.uint16) * 257
    return Image.fromarray(values)  # mode I;16: saved as a 16-bit grey PNG


def _translucent(image: Image.Image) -> Image.Image:
    rgba = image.convert("RGBA")
    rgba.putalpha(128)
    return rgba


def _cutout(mask: Image.Image) -> Image.Image:
    """A cut-out mask: flat white colour, the object in the alpha channel."""
    out = Image.new("RGBA", mask.size, (255, 255, 255, 0))
    out.putalpha(mask.convert("L"))
    return out


def _make_good_sets(server: ComfyServer) -> None:
    _good_set(server, f"{PREFIX}good_16bit", _sixteen_bit, _sixteen_bit)
    _good_set(server, f"{PREFIX}good_palette", lambda im: im.convert("P", palette=Image.Palette.ADAPTIVE, colors=64))
    _good_set(server, f"{PREFIX}good_grey", lambda im: im.convert("L"), lambda m: m.convert("L"))
    _good_set(server, f"{PREFIX}good_rgba", _translucent)
    _good_set(server, f"{PREFIX}good_jpeg_cutout", lambda im: im.convert("RGB"), _cutout, photo_ext=".jpg")
    _good_set(server, NON_ASCII_SET, lambda im: im, rename=lambda stem: f"bälle_集合_{stem}")
    flat, source = server.input_dir / f"{PREFIX}good_flat", server.input_dir / BASE_SET
    flat.mkdir()
    for path in sorted((source / "resized").glob("*.png")):
        shutil.copy(path, flat / f"{path.stem}.png")
        shutil.copy(source / "mask_1" / path.name, flat / f"{path.stem}_mask.png")  # NAME_mask = NAME_mask_1
        shutil.copy(source / "mask_2" / path.name, flat / f"{path.stem}_mask_2.png")
    one = server.input_dir / f"{PREFIX}good_1x1" / "resized"
    one.mkdir(parents=True)
    Image.new("RGB", (1, 1), (200, 30, 30)).save(one / "01.png")


def one_pixel_prompt() -> dict:
    """A set of one 1x1 photo and no masks: the loader upscales it; Mask Target takes a drawn 64 px MASK."""
    prompt = good_prompt(f"{PREFIX}good_1x1")
    prompt["20"] = {"class_type": "SolidMask", "inputs": {"value": 0.0, "width": RES, "height": RES}}
    prompt["21"] = {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": RES // 2, "height": RES // 2}}
    prompt["22"] = {"class_type": "MaskComposite", "inputs": {
        "destination": ["20", 0], "source": ["21", 0], "x": 0, "y": 0, "operation": "add"}}
    prompt["2"]["inputs"]["mask"] = ["22", 0]
    return prompt


@dataclass(frozen=True)
class GoodCase:
    """A set that must load: its prompt and how many photos it holds."""

    id: str
    prompt: Callable[[], dict]
    photos: int


GOOD_CASES: list[GoodCase] = [
    GoodCase("good_16bit_png_photos_and_masks", lambda: good_prompt(f"{PREFIX}good_16bit"), 5),
    GoodCase("good_palette_photos", lambda: good_prompt(f"{PREFIX}good_palette"), 5),
    GoodCase("good_grey_photos_and_masks", lambda: good_prompt(f"{PREFIX}good_grey"), 5),
    GoodCase("good_rgba_photos", lambda: good_prompt(f"{PREFIX}good_rgba"), 5),
    GoodCase("good_jpeg_photos_cutout_masks", lambda: good_prompt(f"{PREFIX}good_jpeg_cutout"), 5),
    GoodCase("good_non_ascii_names", lambda: good_prompt(NON_ASCII_SET), 5),
    GoodCase("good_flat_layout", lambda: good_prompt(f"{PREFIX}good_flat", mask_index=2, token="tl_box",
                                                       class_word="box"), 5),
    GoodCase("good_1x1_photo_upscaled", one_pixel_prompt, 1),
]


# ---------------------------------------------------------------------------------------------- fixtures and checks


@pytest.fixture(scope="module")
def prepared(comfy_server: ComfyServer, tiny_checkpoint: Path,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[ComfyServer]:
    """Every set and model file the cases use, removed again when the module ends."""
    outside = tmp_path_factory.mktemp("outside_input")
    try:
        _make_bad_sets(comfy_server, outside)
        _make_bad_weights(comfy_server, tiny_checkpoint)
        _make_good_sets(comfy_server)
        yield comfy_server
    finally:
        models = comfy_server.base_dir / "models"
        for folder in (comfy_server.input_dir, models / "loras", models / "embeddings",
                       comfy_server.output_dir / "embeddings"):
            for path in folder.glob(f"{PREFIX}*"):
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path)
                else:
                    path.unlink()


def _assert_server_alive(server: ComfyServer) -> None:
    stats = server.get_json("/system_stats", timeout=10)
    assert "system" in stats, stats


def _output_files(server: ComfyServer) -> set[str]:
    return {p.relative_to(server.output_dir).as_posix() for p in server.output_dir.rglob("*") if p.is_file()}


def _assert_output_intact(server: ComfyServer) -> None:
    """No temporary or half-written file anywhere under output/."""
    for path in sorted(p for p in server.output_dir.rglob("*") if p.is_file()):
        relative = path.relative_to(server.output_dir).as_posix()
        assert ".tmp" not in relative, f"left-over temporary file in output/: {relative}"
        if path.suffix == ".safetensors":
            with safe_open(str(path), framework="pt") as f:
                list(f.keys())
        elif path.suffix == ".json":
            json.loads(path.read_text(encoding="utf-8"))


def _refusing_nodes(error: WorkflowError) -> tuple[set[str], bool]:
    """(class types of the nodes that refused, whether ComfyUI's validation refused the prompt)."""
    details = error.details
    if "events" not in details:  # the 400 answer to POST /prompt
        return {e.get("class_type") for e in (details.get("node_errors") or {}).values()}, True
    return {e["data"].get("node_type") for e in details["events"] if e.get("type") == "execution_error"}, False


def _images(server: ComfyServer, result: RunResult, node_id: str) -> list[np.ndarray]:
    entries = result.outputs[node_id]["images"]
    return [np.asarray(Image.open(io.BytesIO(server.view(e))).convert("RGB")) for e in entries]


# ---------------------------------------------------------------------------------------------- tests


@pytest.mark.parametrize("case", _bad_params())
def test_bad_input_is_refused_with_its_name(prepared: ComfyServer, case: BadCase) -> None:
    """The run fails naming the input/file, the server answers afterwards and output/ stays whole."""
    server = prepared
    before = _output_files(server)
    with pytest.raises(WorkflowError) as caught:
        server.run(case.prompt(), timeout=RUN_TIMEOUT)
    message = str(caught.value)
    nodes, by_validation = _refusing_nodes(caught.value)
    expected = "a validation" if case.validation else "an execution"
    assert by_validation == case.validation, f"expected {expected} error, got: {message}"
    assert case.node in nodes, f"refused by {nodes}, expected {case.node}: {message}"
    for name in case.names:
        assert name in message, f"{name!r} not named in: {message}"
    if case.validation:
        assert message.startswith("prompt rejected:"), message
    else:
        assert "Fix:" in message, f"not the pack's error: {message}"
        assert "Traceback" not in message
    _assert_server_alive(server)
    _assert_output_intact(server)
    assert _output_files(server) == before, "a refused run wrote to output/"


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in GOOD_CASES])
def test_good_data_loads(prepared: ComfyServer, case: GoodCase) -> None:
    """16-bit, palette, grey, RGBA, JPEG + cut-out, flat, non-ASCII and 1x1 sets load: photos at 64 px, not
    clipped to black or white, and Mask Target shows one overlay per photo."""
    server = prepared
    result = server.run(case.prompt(), timeout=RUN_TIMEOUT)
    overlays, photos = _images(server, result, "3"), _images(server, result, "4")
    assert len(overlays) == len(photos) == case.photos
    for photo in photos:
        assert photo.shape == (RES, RES, 3)
        assert 5 < photo.mean() < 250 and photo.std() > 1, f"photo clipped or blank: mean {photo.mean():.1f}"
    _assert_server_alive(server)
    _assert_output_intact(server)
