"""The shapes-world model's settings, applied to the example workflows' API prompts.

The workflow files keep the nodes' defaults (the paper's values, for SD1.5 at 512 px), which is
what an artist with a real checkpoint should start from. The world model is 64 px and tiny: the
demo, the headless runner on the world model and the end-to-end tests apply these instead. With
them, 100 steps at lr 3e-4 train in well under a minute on a CPU (bench/shapes_world.py uses the
same values).
"""

from __future__ import annotations

from typing import Any

from .workflow import OPTIONS_NODE, TRAIN_NODE, ensure_training_options

WORLD_RESOLUTION = 64
WORLD_TRAIN_STEPS = 100
WORLD_SWEEP_STEPS = (50,)  # bench/shapes_world.py also scores the sweep runs at these lengths
WORLD_LEARNING_RATE = 3e-4
WORLD_CLASS_IMAGES = 32  # per concept, drawn by the untrained model from the class word (prior preservation)
WORLD_DEMO_PICTURES = 32  # the demo draws this many pictures (and class images) per generating node
WORLD_CLASS_SEED = 99
WORLD_DENOISE_REGION_MASKED = "concepts and background"  # the masked loss the bench compares
WORLD_SAMPLE_STEPS = 12  # the untrained model reads the same at 12 as at 20 (4 prompts x 48 pictures)
WORLD_SAMPLE_CFG = 5.0
WORLD_SAMPLER = "euler"
WORLD_SCHEDULER = "normal"

# class_type -> input -> value; inputs a prompt links instead of setting are left alone
WORLD_INPUTS: dict[str, dict[str, Any]] = {
    "TL_LoadMultiConceptDataset": {"resolution": WORLD_RESOLUTION},
    TRAIN_NODE: {"steps": WORLD_TRAIN_STEPS},
    OPTIONS_NODE: {"learning_rate": WORLD_LEARNING_RATE},
    "EmptyLatentImage": {"width": WORLD_RESOLUTION, "height": WORLD_RESOLUTION},
    "KSampler": {"steps": WORLD_SAMPLE_STEPS, "cfg": WORLD_SAMPLE_CFG},
    "TL_ShowTokenAttention": {"steps": WORLD_SAMPLE_STEPS, "width": WORLD_RESOLUTION, "height": WORLD_RESOLUTION},
}


def apply_demo_batches(prompt: dict[str, Any]) -> dict[str, Any]:
    """Every Empty Latent Image of `prompt` draws WORLD_DEMO_PICTURES: the class images of the world recipe,
    and enough pictures per run to read a rate with its interval (changed in place)."""
    for node in prompt.values():
        if node["class_type"] == "EmptyLatentImage" and not _is_link(node["inputs"].get("batch_size")):
            node["inputs"]["batch_size"] = max(int(node["inputs"].get("batch_size", 1)), WORLD_DEMO_PICTURES)
    return prompt


def _is_link(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 2


def apply_world_settings(prompt: dict[str, Any], object_info: dict[str, Any]) -> dict[str, Any]:
    """Set the world model's sizes, steps and learning rate on every node of `prompt` (changed in place).

    A training node without TL Training Options gets one, so its learning rate can be set.
    """
    for node_id in [n for n, node in prompt.items() if node["class_type"] == TRAIN_NODE]:
        ensure_training_options(prompt, node_id, object_info)
    for node in prompt.values():
        for name, value in WORLD_INPUTS.get(node["class_type"], {}).items():
            if not _is_link(node["inputs"].get(name)):
                node["inputs"][name] = value
    return prompt
