"""Workflows and API prompts saved with the first training-node layout give the same run as the current one.

The fixtures are the example workflows as released with every setting on the training node. The
same training, written three ways, must give the same losses step for step: the old workflow file
(mapped over on load), an old-layout API prompt (settings as the training node's own inputs) and
the current layout (TL Training Options linked).
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from headless.paths import REPO_ROOT, WORKFLOWS_DIR
from headless.server import ComfyServer
from headless.workflow import load_workflow, nodes_of_type, set_training_inputs, to_api_prompt
from headless.world_settings import apply_world_settings
from textloc.config import LEGACY_TRAIN_NODE_WIDGETS

FIXTURES = REPO_ROOT / "tests" / "fixtures" / "first_layout_workflows"
WORKFLOW = "tl_train_and_generate.json"
STEPS = 3


def _history(server: ComfyServer, run: str) -> list[dict[str, float]]:
    path = server.output_dir / "textual_localization" / run / "loss_history.json"
    return json.loads(path.read_text())["history"]


def _training_only(prompt: dict[str, Any], trainer: str) -> dict[str, Any]:
    """The training node and what feeds it (the pictures after it are not under test here)."""
    keep, todo = set(), [trainer]
    while todo:
        node_id = todo.pop()
        if node_id in keep:
            continue
        keep.add(node_id)
        todo += [v[0] for v in prompt[node_id]["inputs"].values() if isinstance(v, list) and len(v) == 2]
    return {k: v for k, v in prompt.items() if k in keep}


@pytest.mark.parametrize("path", sorted(FIXTURES.glob("*.json")), ids=lambda p: p.stem)
def test_an_old_workflow_file_converts_to_its_old_settings(object_info: dict, path) -> None:
    old = load_workflow(path)
    prompt = to_api_prompt(old, object_info)
    old_nodes = {str(n["id"]): n for n in old["nodes"] if n["type"] == "TL_TrainKV"}
    for node_id, node in old_nodes.items():
        values = dict(zip(LEGACY_TRAIN_NODE_WIDGETS, node["widgets_values"], strict=True))
        inputs = prompt[node_id]["inputs"]
        options = prompt[inputs["options"][0]]
        assert options["class_type"] == "TL_TrainingOptions"
        settings = {**inputs, **options["inputs"]}
        assert {k: settings[k] for k in values} == values
        assert settings["lora_rank"] == 0 and settings["embedding_name"] == "run/token"  # options added since


def test_old_file_old_prompt_and_new_layout_train_the_same(comfy_server: ComfyServer, object_info: dict) -> None:
    old_file = to_api_prompt(load_workflow(FIXTURES / WORKFLOW), object_info)
    (trainer,) = nodes_of_type(old_file, "TL_TrainKV")
    old_file = _training_only(old_file, trainer)
    set_training_inputs(old_file, trainer, steps=STEPS, output_name="layout_old_file")
    options_id = old_file[trainer]["inputs"]["options"][0]

    old_prompt = json.loads(json.dumps(old_file))  # the trainer's settings as its own inputs, no options node
    old_prompt[trainer]["inputs"].update({k: v for k, v in old_prompt.pop(options_id)["inputs"].items()
                                          if k in LEGACY_TRAIN_NODE_WIDGETS})
    del old_prompt[trainer]["inputs"]["options"]
    old_prompt[trainer]["inputs"]["output_name"] = "layout_old_prompt"

    current = to_api_prompt(load_workflow(WORKFLOWS_DIR / WORKFLOW), object_info)
    (current_trainer,) = nodes_of_type(current, "TL_TrainKV")
    current = _training_only(apply_world_settings(current, object_info), current_trainer)
    old_values = dict(zip(LEGACY_TRAIN_NODE_WIDGETS, next(
        n for n in load_workflow(FIXTURES / WORKFLOW)["nodes"] if n["type"] == "TL_TrainKV")["widgets_values"],
        strict=True))
    set_training_inputs(current, current_trainer, steps=STEPS, output_name="layout_current",
                        prior_weight=old_values["prior_weight"], learning_rate=old_values["learning_rate"])

    histories = {}
    for name, prompt in (("layout_old_file", old_file), ("layout_old_prompt", old_prompt),
                         ("layout_current", current)):
        comfy_server.run(prompt, timeout=600)
        histories[name] = _history(comfy_server, name)
    reference = histories["layout_current"]
    assert [h["step"] for h in reference] == list(range(1, STEPS + 1))
    for name, history in histories.items():
        assert len(history) == len(reference), name
        for got, want in zip(history, reference, strict=True):
            assert got == pytest.approx(want, rel=1e-6), f"{name} trained differently: {history} vs {reference}"


ADDED_SINCE_RELEASE = {"embedding_name": "run/token", "denoise_region": "whole photo", "prior_empty_prompt": False}


def test_options_saved_before_the_newer_inputs_existed_load_with_their_defaults(object_info: dict) -> None:
    """A TL Training Options node saved with the widget values of the released layout (before `embedding_name`,
    `denoise_region` and `prior_empty_prompt`) keeps every value and gets each newer input's default, the
    paper's recipe and run/token; an API prompt without those inputs runs with them too."""
    workflow = load_workflow(WORKFLOWS_DIR / "tl_train.json")
    (options,) = [n for n in workflow["nodes"] if n["type"] == "TL_TrainingOptions"]
    assert options["widgets_values"][-len(ADDED_SINCE_RELEASE):] == list(ADDED_SINCE_RELEASE.values())
    options["widgets_values"] = options["widgets_values"][:-len(ADDED_SINCE_RELEASE)]
    current = to_api_prompt(load_workflow(WORKFLOWS_DIR / "tl_train.json"), object_info)
    older = to_api_prompt(workflow, object_info)
    assert older[str(options["id"])]["inputs"] == current[str(options["id"])]["inputs"]
    for name, default in ADDED_SINCE_RELEASE.items():
        assert older[str(options["id"])]["inputs"][name] == default
        assert name in object_info["TL_TrainingOptions"]["input"]["optional"]  # old API prompts lack it
