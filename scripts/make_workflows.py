#!/usr/bin/env python3
"""Regenerate the example workflows in workflows/ from the node specs below.

The files are what artists load in the editor; generating them through a live server's
/object_info keeps widget order and link tables exactly as the editor stores them.

    python scripts/make_workflows.py            # writes workflows/*.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from headless.paths import WORKFLOWS_DIR  # noqa: E402
from headless.random_clip_vision import CLIP_VISION_PATH  # noqa: E402
from headless.runner import prepare_server  # noqa: E402
from headless.ui_builder import (
    NodeSpec,  # noqa: E402
    build_ui_workflow,  # noqa: E402
)
from shapes_world.model import CHECKPOINT_NAME, ensure_world_checkpoint  # noqa: E402
from shapes_world.training_sets import TRAIN_SET  # noqa: E402
from textloc.data.set_folders import sample_entry  # noqa: E402

# The examples name the shapes world (a tiny SD1.5-format model pretrained on balls and boxes) and the
# pack's bundled photos of a magenta ball beside a yellow box, so they run right after cloning. Every
# other value is the node's default, meant for a real checkpoint (SD1.5 at 512 px); the demo, the tests
# and the headless runner on the world model apply its small sizes themselves (headless/world_settings.py).
CHECKPOINT = CHECKPOINT_NAME
DATASET = sample_entry(TRAIN_SET)
NOTE_WIDTH = 360

# What each workflow's Note says about real checkpoints.
REAL_MODEL_NOTE = (
    "On your own model\n"
    "- Load Checkpoint: pick an SD1.5 checkpoint (the paper's), SD2.x or SDXL. tl_shapes_world is the "
    "pack's tiny test model (64 px); it only exists where the pack's demo or tests built it.\n"
    "- Load Multi-Concept Dataset: your folder under input/ (photos + mask_1, mask_2, ...). resolution: 512 "
    "for SD1.5, 768 for SD2.x-v, 1024 for SDXL.\n"
    "- Empty Latent Image and Show Token Attention width/height: the same size.\n"
)
TRAINING_NOTE = (
    "Training settings\n"
    "- steps 0 = the paper's: 400 per concept (800 for two). A first try: 50-100.\n"
    "- Everything else is on TL Training Options (not connected = the paper's values): learning_rate 0 = "
    "4e-5 for one concept, 6e-5 for two; batch 2 / 3; prior_weight 1 with class images.\n"
    "- Class images (prior preservation): the base model draws them from the class word (the Class images "
    "nodes); the paper uses 200 per concept, more hold the model better than the 8 set here.\n"
    "- 8 GB card, SD1.5 at 512 px: keep gradient_checkpointing on auto. SDXL needs about 16 GB.\n"
    "- lora_rank (on TL Training Options): also write a standard LoRA that other UIs read; 16 is a good size.\n"
    "- The pack's tiny shapes model uses steps 100, learning_rate 3e-4 and 32 class images at 64 px instead.\n"
)
SAMPLING_NOTE = (
    "Sampling\n"
    "- KSampler: the defaults (20 steps, cfg 8) suit SD1.5; the tiny shapes model uses cfg 5 at 64 px.\n"
    "- Write embedding:TOKEN before the class word, e.g. 'a photo of a embedding:tl_ball ball'.\n"
)


EVALUATE_NOTE = (
    "- Evaluate TL Images: pick CLIP ViT-L/14 as clip_vision_name for the paper's CLIP-I/CLIP-T scores "
    "(the demo's encoder is random).\n"
)
AUTO_MASK_NOTE = (
    "- Masks from Word Attention: on SD1.5 a plain caption ('a photo of a ball and a box') works; name what "
    "tells the objects apart (colour, material) when the words alone are ambiguous.\n"
)


def _note(node_id: int, text: str, pos: tuple[float, float], height: float = 260) -> NodeSpec:
    return NodeSpec(node_id, "Note", {"text": text}, pos=pos, size=(NOTE_WIDTH, height))


def dataset_preview() -> list[NodeSpec]:
    """Load the sample photos, define two concepts, preview images, masks and overlays."""
    return [
        NodeSpec(1, "TL_LoadMultiConceptDataset", {"folder": DATASET}, pos=(40, 80), size=(340, 170)),
        NodeSpec(2, "TL_MaskTarget", {"mask_index": 1, "token": "tl_ball", "class_word": "ball"},
                 {"dataset": (1, 0)}, pos=(430, 80), size=(320, 260)),
        NodeSpec(3, "TL_MaskTarget", {"mask_index": 2, "token": "tl_box", "class_word": "box"},
                 {"dataset": (2, 0)}, pos=(800, 80), size=(320, 260)),
        NodeSpec(4, "PreviewImage", {}, {"images": (1, 1)}, pos=(430, 400), size=(320, 300),
                 title="Photos"),
        NodeSpec(5, "MaskToImage", {}, {"mask": (1, 2)}, pos=(40, 400), size=(220, 50)),
        NodeSpec(6, "PreviewImage", {}, {"images": (5, 0)}, pos=(40, 500), size=(320, 300),
                 title="Folder masks (mask_1 then mask_2)"),
        NodeSpec(7, "SaveImage", {"filename_prefix": "tl_overlay_ball"}, {"images": (2, 1)},
                 pos=(800, 400), size=(320, 300)),
        NodeSpec(8, "SaveImage", {"filename_prefix": "tl_overlay_box"}, {"images": (3, 1)},
                 pos=(1170, 80), size=(320, 300)),
        _note(9, "Your own photos\n- Put a folder under ComfyUI's input/: NAME/resized/*.png with masks in "
              "NAME/mask_1/, NAME/mask_2/ (white = the object), then refresh the page.\n- resolution: 512 for "
              "SD1.5 (the paper), 1024 for SDXL.\n- One Mask Target per object to learn; mask_index picks its "
              "mask. The overlays should cover exactly that object.\n", pos=(1170, 420), height=220),
    ]


BALL_PROMPT = "a photo of a embedding:tl_ball ball"
BALL_WEIGHTS = "textual_localization/tl_demo_ball.safetensors"  # written by tl_train_and_generate.json
COMPARE_BATCH = 8
CLIP_VISION = CLIP_VISION_PATH.name  # random weights for the demo; pick CLIP ViT-L/14 for real scores
EVAL_BATCH = 4


def _trainer(node_id: int, dataset: int, output_name: str, pos: tuple[float, float]) -> NodeSpec:
    return NodeSpec(node_id, "TL_TrainKV", {"output_name": output_name},
                    {"model": (1, 0), "clip": (1, 1), "vae": (1, 2), "dataset": (dataset, 0)},
                    pos=pos, size=(340, 330))


def _generate(first_id: int, model: tuple[int, int], clip: tuple[int, int], prompt: str, prefix: str,
              x: float, batch_size: int = 1, y: float = 80) -> list[NodeSpec]:
    """CLIPTextEncode x2 -> KSampler -> VAEDecode -> SaveImage, ids first_id .. first_id + 5."""
    enc, neg, empty, sampler, decode, save = range(first_id, first_id + 6)
    return [
        NodeSpec(enc, "CLIPTextEncode", {"text": prompt}, {"clip": clip}, pos=(x, y), size=(320, 120)),
        NodeSpec(neg, "CLIPTextEncode", {"text": ""}, {"clip": clip}, pos=(x, y + 160), size=(320, 120),
                 title="Negative"),
        NodeSpec(empty, "EmptyLatentImage", {"batch_size": batch_size}, pos=(x, y + 320), size=(320, 110)),
        NodeSpec(sampler, "KSampler", {"seed": 1},
                 {"model": model, "positive": (enc, 0), "negative": (neg, 0), "latent_image": (empty, 0)},
                 pos=(x + 360, y), size=(320, 270)),
        NodeSpec(decode, "VAEDecode", {}, {"samples": (sampler, 0), "vae": (1, 2)}, pos=(x + 360, y + 310),
                 size=(220, 50)),
        NodeSpec(save, "SaveImage", {"filename_prefix": prefix}, {"images": (decode, 0)},
                 pos=(x + 720, y), size=(320, 300)),
    ]


def _show(node_id: int, model: tuple[int, int], clip: tuple[int, int], words: str, pos: tuple[float, float],
          title: str | None = None, images: tuple[int, int] | None = None, prompt: str = BALL_PROMPT,
          seed: int = 1) -> NodeSpec:
    links = {"model": model, "clip": clip, "vae": (1, 2), **({"images": images} if images else {})}
    return NodeSpec(node_id, "TL_ShowTokenAttention",
                    {"text": prompt, "words": words, "seed": seed},
                    links, pos=pos, size=(340, 640), title=title)


CLASS_BATCH = 8  # class images per concept in the files (the paper draws 200; the demo draws 32 on the world)


def _class_images(first_id: int, word: str, x: float, y: float) -> list[NodeSpec]:
    """The base model draws the prior images from the class word alone (the paper's recipe):
    CLIPTextEncode x2 -> EmptyLatentImage -> KSampler -> VAEDecode, ids first_id .. first_id + 4.
    The VAEDecode (first_id + 4) feeds Mask Target's class_images."""
    enc, neg, empty, sampler, decode = range(first_id, first_id + 5)
    return [
        NodeSpec(enc, "CLIPTextEncode", {"text": word}, {"clip": (1, 1)}, pos=(x, y), size=(320, 100),
                 title=f"Class prompt: {word}"),
        NodeSpec(neg, "CLIPTextEncode", {"text": ""}, {"clip": (1, 1)}, pos=(x, y + 140), size=(320, 100),
                 title="Negative"),
        NodeSpec(empty, "EmptyLatentImage", {"batch_size": CLASS_BATCH}, pos=(x, y + 280), size=(320, 110)),
        NodeSpec(sampler, "KSampler", {"seed": 7},
                 {"model": (1, 0), "positive": (enc, 0), "negative": (neg, 0), "latent_image": (empty, 0)},
                 pos=(x + 360, y), size=(320, 270), title=f"Class images of '{word}' (prior)"),
        NodeSpec(decode, "VAEDecode", {}, {"samples": (sampler, 0), "vae": (1, 2)}, pos=(x + 360, y + 310),
                 size=(220, 50)),
    ]


BALL_CLASS_IMAGES = 30  # ids 30-34: the class images of 'ball' (box: 35-39)
BOX_CLASS_IMAGES = 35


def _ball_set(class_images: bool = False) -> list[NodeSpec]:
    """Nodes 1-3 of the ball workflows: the world checkpoint, the world's photos at training size, the ball
    (with class-prior images drawn in the graph when the workflow trains)."""
    prior = {"class_images": (BALL_CLASS_IMAGES + 4, 0)} if class_images else {}
    return [
        NodeSpec(1, "CheckpointLoaderSimple", {"ckpt_name": CHECKPOINT}, pos=(40, 80), size=(320, 100)),
        NodeSpec(2, "TL_LoadMultiConceptDataset", {"folder": DATASET},
                 pos=(40, 240), size=(340, 170)),
        NodeSpec(3, "TL_MaskTarget", {"mask_index": 1, "token": "tl_ball", "class_word": "ball"},
                 {"dataset": (2, 0), **prior}, pos=(40, 420), size=(320, 300)),
        *(_class_images(BALL_CLASS_IMAGES, "ball", x=-1140, y=80) if class_images else []),
    ]


def guidance_compare() -> list[NodeSpec]:
    """The method's point in one graph: the same training without guidance (Custom Diffusion) and
    with hard guidance, then the same prompt and seed through each result."""
    none = {**_trainer(4, 3, "tl_demo_none", pos=(420, 80)).widgets, "guidance": "none"}
    prompt_none = "a photo of a embedding:tl_ball ball"
    return [
        *_ball_set(class_images=True),
        NodeSpec(4, "TL_TrainKV", none, {"model": (1, 0), "clip": (1, 1), "vae": (1, 2), "dataset": (3, 0)},
                 pos=(420, 80), size=(340, 620), title="Train without guidance (Custom Diffusion)"),
        _trainer(5, 3, "tl_demo_hard", pos=(420, 760)),
        NodeSpec(6, "TL_ApplyWeights", {}, {"model": (1, 0), "clip": (1, 1), "tl_result": (4, 2)},
                 pos=(800, 80), size=(320, 170), title="Apply: no guidance"),
        NodeSpec(7, "TL_ApplyWeights", {}, {"model": (1, 0), "clip": (1, 1), "tl_result": (5, 2)},
                 pos=(800, 760), size=(320, 170), title="Apply: hard guidance"),
        *_generate(8, (6, 0), (6, 1), prompt_none, "tl_guidance_none", x=1160, batch_size=COMPARE_BATCH),
        *_generate(14, (7, 0), (7, 1), prompt_none, "tl_guidance_hard", x=1160, batch_size=COMPARE_BATCH,
                   y=760),
        _note(20, REAL_MODEL_NOTE + "\n" + TRAINING_NOTE + "\n" + SAMPLING_NOTE, pos=(-360, 80), height=420),
    ]


def train_and_generate() -> list[NodeSpec]:
    """Train tl_ball on the sample photos, apply the result, generate with it and show its attention."""
    return [
        *_ball_set(class_images=True),
        _trainer(4, 3, "tl_demo_ball", pos=(420, 80)),
        NodeSpec(5, "TL_ApplyWeights", {}, {"model": (1, 0), "clip": (1, 1), "tl_result": (4, 2)},
                 pos=(800, 80), size=(320, 170)),
        NodeSpec(6, "PreviewAny", {}, {"source": (5, 2)}, pos=(800, 300), size=(320, 100),
                 title="Trigger text"),
        *_generate(7, (5, 0), (5, 1), BALL_PROMPT, "tl_demo_ball", x=1160),
        _show(13, (5, 0), (5, 1), "embedding:tl_ball, ball", pos=(1160, 560)),
        _note(14, REAL_MODEL_NOTE + "\n" + TRAINING_NOTE + "\n" + SAMPLING_NOTE, pos=(-360, 80), height=420),
    ]


def before_after_attention() -> list[NodeSpec]:
    """The learned token's attention before training (both strengths 0: the base model and the init
    word) and after, on the same prompt and seed: on new images and on the training photos."""
    before = {"weights": BALL_WEIGHTS, "strength_model": 0.0, "strength_token": 0.0}
    after = {"weights": BALL_WEIGHTS, "strength_model": 1.0, "strength_token": 1.0}
    return [
        NodeSpec(1, "CheckpointLoaderSimple", {"ckpt_name": CHECKPOINT}, pos=(40, 80), size=(320, 100)),
        NodeSpec(2, "TL_LoadMultiConceptDataset", {"folder": DATASET},
                 pos=(40, 240), size=(340, 170)),
        NodeSpec(3, "TL_ApplyWeights", before, {"model": (1, 0), "clip": (1, 1)}, pos=(420, 80),
                 size=(320, 170), title="Before training (strengths 0)"),
        NodeSpec(4, "TL_ApplyWeights", after, {"model": (1, 0), "clip": (1, 1)}, pos=(420, 300),
                 size=(320, 170), title="After training"),
        _show(5, (3, 0), (3, 1), "embedding:tl_ball, ball", pos=(780, 80), title="Before: new image"),
        _show(6, (4, 0), (4, 1), "embedding:tl_ball, ball", pos=(1160, 80), title="After: new image"),
        _show(7, (3, 0), (3, 1), "embedding:tl_ball", pos=(780, 760), title="Before: training photos",
              images=(2, 1)),
        _show(8, (4, 0), (4, 1), "embedding:tl_ball", pos=(1160, 760), title="After: training photos",
              images=(2, 1)),
        NodeSpec(9, "MaskToImage", {}, {"mask": (7, 2)}, pos=(1540, 760), size=(220, 50)),
        NodeSpec(10, "PreviewImage", {}, {"images": (9, 0)}, pos=(1540, 840), size=(320, 300),
                 title="Before: maps on the photos"),
        NodeSpec(11, "MaskToImage", {}, {"mask": (8, 2)}, pos=(1900, 760), size=(220, 50)),
        NodeSpec(12, "PreviewImage", {}, {"images": (11, 0)}, pos=(1900, 840), size=(320, 300),
                 title="After: maps on the photos"),
        _note(13, REAL_MODEL_NOTE + "\n" + SAMPLING_NOTE, pos=(-360, 80), height=420),
    ]


def evaluate() -> list[NodeSpec]:
    """Score images made with the trained ball (tl_train_and_generate.json) the way the paper does:
    CLIP-I against the training photos, CLIP-T against the prompt without its identifier, KID when
    installed, and the token's attention on the ball in the training photos."""
    applied = {"weights": BALL_WEIGHTS, "strength_model": 1.0, "strength_token": 1.0}
    return [
        *_ball_set(),
        NodeSpec(4, "TL_ApplyWeights", applied, {"model": (1, 0), "clip": (1, 1)}, pos=(420, 80),
                 size=(320, 170)),
        *_generate(5, (4, 0), (4, 1), BALL_PROMPT, "tl_eval_ball", x=780, batch_size=EVAL_BATCH),
        _show(11, (4, 0), (4, 1), "embedding:tl_ball", pos=(420, 560), title="Attention on the training photos",
              images=(2, 1)),
        NodeSpec(12, "TL_EvaluateImages",
                 {"clip_vision_name": CLIP_VISION, "prompt": BALL_PROMPT, "save_name": "tl_demo_ball"},
                 {"images": (9, 0), "reference_images": (2, 1), "clip": (1, 1), "attention_maps": (11, 2),
                  "object_masks": (3, 2)}, pos=(1500, 440), size=(400, 560)),
        NodeSpec(13, "PreviewAny", {}, {"source": (12, 0)}, pos=(1940, 440), size=(360, 300),
                 title="Scores"),
        _note(14, REAL_MODEL_NOTE + "\n" + SAMPLING_NOTE + EVALUATE_NOTE, pos=(-360, 80), height=420),
    ]


def two_concepts() -> list[NodeSpec]:
    """Learn the ball and the box together, then generate with both tokens."""
    prompt = "a photo of a embedding:tl_ball ball and a embedding:tl_box box"
    return [
        *_ball_set(class_images=True),
        NodeSpec(4, "TL_MaskTarget", {"mask_index": 2, "token": "tl_box", "class_word": "box"},
                 {"dataset": (3, 0), "class_images": (BOX_CLASS_IMAGES + 4, 0)}, pos=(40, 760), size=(320, 300)),
        *_class_images(BOX_CLASS_IMAGES, "box", x=-1140, y=560),
        _trainer(5, 4, "tl_demo_pair", pos=(420, 80)),
        NodeSpec(6, "TL_ApplyWeights", {}, {"model": (1, 0), "clip": (1, 1), "tl_result": (5, 2)},
                 pos=(800, 80), size=(320, 170)),
        NodeSpec(7, "PreviewAny", {}, {"source": (6, 2)}, pos=(800, 300), size=(320, 100),
                 title="Trigger text"),
        *_generate(8, (6, 0), (6, 1), prompt, "tl_demo_pair", x=1160),
        _show(14, (6, 0), (6, 1), "embedding:tl_ball, embedding:tl_box", pos=(1160, 560), prompt=prompt),
        _note(15, REAL_MODEL_NOTE + "\n" + TRAINING_NOTE + "\n" + SAMPLING_NOTE, pos=(-360, 80), height=420),
    ]


def train() -> list[NodeSpec]:
    """Train tl_ball with hard guidance and class-prior images generated in the same graph.

    The prior images come from the base model prompted with the class word alone (the paper's
    recipe); the trainer saves weights, token, checkpoints, loss history and loss chart, and shows
    the token's attention map over the photo next to its mask. TL Training Options is connected at
    its defaults, to show where the expert settings are.
    """
    return [
        NodeSpec(1, "CheckpointLoaderSimple", {"ckpt_name": CHECKPOINT}, pos=(40, 80), size=(320, 100)),
        NodeSpec(2, "CLIPTextEncode", {"text": "ball"}, {"clip": (1, 1)}, pos=(40, 240), size=(320, 100),
                 title="Class prompt"),
        NodeSpec(3, "CLIPTextEncode", {"text": ""}, {"clip": (1, 1)}, pos=(40, 380), size=(320, 100),
                 title="Negative"),
        NodeSpec(4, "EmptyLatentImage", {"batch_size": CLASS_BATCH}, pos=(40, 520), size=(320, 110)),
        NodeSpec(5, "KSampler", {"seed": 7},
                 {"model": (1, 0), "positive": (2, 0), "negative": (3, 0), "latent_image": (4, 0)},
                 pos=(400, 300), size=(320, 270), title="Class images (prior)"),
        NodeSpec(6, "VAEDecode", {}, {"samples": (5, 0), "vae": (1, 2)}, pos=(400, 610), size=(220, 50)),
        NodeSpec(7, "TL_LoadMultiConceptDataset", {"folder": DATASET}, pos=(400, 80), size=(340, 170)),
        NodeSpec(8, "TL_MaskTarget", {"mask_index": 1, "token": "tl_ball", "class_word": "ball"},
                 {"dataset": (7, 0), "class_images": (6, 0)}, pos=(780, 80), size=(320, 340)),
        NodeSpec(13, "TL_TrainingOptions", {}, pos=(780, 460), size=(340, 560)),
        NodeSpec(9, "TL_TrainKV", {"output_name": "tl_ball"},
                 {"model": (1, 0), "clip": (1, 1), "vae": (1, 2), "dataset": (8, 0), "options": (13, 0)},
                 pos=(1160, 80), size=(340, 330)),
        NodeSpec(10, "SaveImage", {"filename_prefix": "tl_ball_loss_chart"}, {"images": (9, 6)},
                 pos=(1540, 80), size=(420, 300), title="Loss chart"),
        NodeSpec(11, "SaveImage", {"filename_prefix": "tl_ball_attention"}, {"images": (9, 4)},
                 pos=(1540, 420), size=(420, 360), title="Photo | attention | mask"),
        NodeSpec(12, "PreviewAny", {}, {"source": (9, 5)}, pos=(1160, 460), size=(340, 100),
                 title="Trigger text"),
        _note(14, REAL_MODEL_NOTE + "\n" + TRAINING_NOTE, pos=(-360, 80), height=520),
    ]


# Masks from Word Attention on the world's photos. The world model was trained on captions that name each
# object's colour, so the caption does too: with the bare "a photo of a ball and a box" its "ball" mostly
# misses the magenta ball (tests/host/test_auto_masks_host.py; bench/auto_masks.py measures both captions).
AUTO_MASK_WORDS = "ball, box"
AUTO_MASK_PROMPT = "a photo of a magenta ball and a yellow box"


def auto_masks() -> list[NodeSpec]:
    """Photos without masks: Masks from Word Attention draws the ball's and the box's masks from the model's
    own attention, Mask Target picks the ball's (mask_index 1 = the first word) and the trainer learns tl_ball
    from it. The previews show the auto masks and the token's map next to its auto mask after training."""
    return [
        NodeSpec(1, "CheckpointLoaderSimple", {"ckpt_name": CHECKPOINT}, pos=(40, 80), size=(320, 100)),
        NodeSpec(2, "TL_LoadMultiConceptDataset", {"folder": DATASET},
                 pos=(40, 240), size=(340, 170)),
        NodeSpec(3, "TL_MasksFromWordAttention", {"words": AUTO_MASK_WORDS, "prompt": AUTO_MASK_PROMPT},
                 {"images": (2, 1), "model": (1, 0), "clip": (1, 1), "vae": (1, 2)},
                 pos=(420, 80), size=(340, 460)),
        NodeSpec(4, "PreviewImage", {}, {"images": (3, 2)}, pos=(420, 580), size=(340, 300),
                 title="Auto masks (ball red, box blue)"),
        NodeSpec(5, "TL_MaskTarget", {"mask_index": 1, "token": "tl_ball", "class_word": "ball"},
                 {"dataset": (2, 0), "mask": (3, 0), "class_images": (BALL_CLASS_IMAGES + 4, 0)},
                 pos=(800, 80), size=(320, 340), title="Mask Target (mask_index 1 = ball)"),
        *_class_images(BALL_CLASS_IMAGES, "ball", x=-1140, y=80),
        _trainer(6, 5, "tl_demo_auto_ball", pos=(1160, 80)),
        NodeSpec(7, "PreviewImage", {}, {"images": (6, 4)}, pos=(1540, 80), size=(320, 300),
                 title="Attention | auto mask"),
        _note(8, REAL_MODEL_NOTE + "\n" + TRAINING_NOTE + AUTO_MASK_NOTE, pos=(-360, 80), height=420),
    ]


WORKFLOWS = {
    "tl_dataset_preview.json": dataset_preview,
    "tl_train.json": train,
    "tl_train_and_generate.json": train_and_generate,
    "tl_before_after_attention.json": before_after_attention,
    "tl_guidance_compare.json": guidance_compare,
    "tl_two_concepts.json": two_concepts,
    "tl_evaluate.json": evaluate,
    "tl_auto_masks.json": auto_masks,
}


def main() -> int:
    server = prepare_server(ensure_world_checkpoint())
    try:
        server.start()
        info = server.object_info()
        for name, specs in WORKFLOWS.items():
            workflow = build_ui_workflow(specs(), info)
            (WORKFLOWS_DIR / name).write_text(json.dumps(workflow, indent=1) + "\n")
            print(f"wrote {WORKFLOWS_DIR / name}")
    finally:
        server.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
