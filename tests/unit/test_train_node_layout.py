"""Workflows saved with the first training-node layout map onto the node and TL Training Options.

The fixtures are the example workflows as released with the first layout (every setting on the
training node). The editor's extension and the headless converter must split them the same way,
keeping every value.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from dataclasses import fields
from pathlib import Path

import pytest
from tl_assertions import expect_user_error

from headless.paths import REPO_ROOT
from headless.workflow_migration import OPTIONS_NODE, TRAIN_NODE, migrate_workflow
from textloc.config import (
    LEGACY_TRAIN_NODE_WIDGETS,
    TRAIN_NODE_WIDGETS,
    TRAINING_OPTIONS_WIDGETS,
    TrainConfig,
    WidgetRule,
    legacy_settings,
)

FIXTURES = sorted((REPO_ROOT / "tests" / "fixtures" / "first_layout_workflows").glob("*.json"))
LAYOUT_JS = REPO_ROOT / "web" / "js" / "train_node_layout.js"
# The options added after the first layout, at the defaults an old file's new options node gets.
NOT_IN_FIRST_LAYOUT = {"lora_rank": 0, "embedding_name": "run/token", "denoise_region": "whole photo",
                       "prior_empty_prompt": False}


def _load(path: Path) -> dict:
    return json.loads(path.read_text())


def _link(workflow: dict, link_id: int) -> list:
    return next(link for link in workflow["links"] if link[0] == link_id)


def test_the_two_nodes_hold_every_training_setting_once() -> None:
    config_fields = {f.name for f in fields(TrainConfig)}
    node_only = {"output_name", "resume"}  # where files go, not how to train
    assert set(TRAIN_NODE_WIDGETS) | set(TRAINING_OPTIONS_WIDGETS) == config_fields | node_only
    assert not set(TRAIN_NODE_WIDGETS) & set(TRAINING_OPTIONS_WIDGETS)
    assert set(LEGACY_TRAIN_NODE_WIDGETS) == (set(TRAIN_NODE_WIDGETS) | set(TRAINING_OPTIONS_WIDGETS)) - set(
        NOT_IN_FIRST_LAYOUT)


def test_the_editor_extension_uses_the_same_layouts() -> None:
    source = LAYOUT_JS.read_text()
    for name, python in (("TRAIN_NODE_WIDGETS", TRAIN_NODE_WIDGETS),
                         ("TRAINING_OPTIONS_WIDGETS", TRAINING_OPTIONS_WIDGETS),
                         ("LEGACY_TRAIN_NODE_WIDGETS", LEGACY_TRAIN_NODE_WIDGETS)):
        block = re.search(rf"const {name} = \[(.*?)\];", source, re.S)
        assert block, f"{name} not found in {LAYOUT_JS.name}"
        assert tuple(re.findall(r'"([a-z_]+)"', block.group(1))) == python, name


@pytest.mark.parametrize("path", FIXTURES, ids=lambda p: p.stem)
def test_an_old_training_node_keeps_every_value(path: Path) -> None:
    old = _load(path)
    new = migrate_workflow(old)
    old_nodes = [n for n in old["nodes"] if n["type"] == TRAIN_NODE]
    assert old_nodes and all(len(n["widgets_values"]) == len(LEGACY_TRAIN_NODE_WIDGETS) for n in old_nodes)
    by_id = {n["id"]: n for n in new["nodes"]}
    assert len(new["nodes"]) == len(old["nodes"]) + len(old_nodes)
    for old_node in old_nodes:
        values = dict(zip(LEGACY_TRAIN_NODE_WIDGETS, old_node["widgets_values"], strict=True))
        node = by_id[old_node["id"]]
        assert node["widgets_values"] == [values[n] for n in TRAIN_NODE_WIDGETS]
        options_input = node["inputs"][-1]
        assert options_input["name"] == "options"
        link = _link(new, options_input["link"])
        options = by_id[link[1]]
        assert options["type"] == OPTIONS_NODE and link[3:5] == [node["id"], len(node["inputs"]) - 1]
        moved = dict(zip(TRAINING_OPTIONS_WIDGETS, options["widgets_values"], strict=True))
        assert moved == {**{k: values[k] for k in TRAINING_OPTIONS_WIDGETS if k in values}, **NOT_IN_FIRST_LAYOUT}
        for slot, inp in enumerate(node["inputs"][:-1]):  # the data links still arrive where they did
            assert _link(new, inp["link"])[3:5] == [node["id"], slot]
    assert migrate_workflow(new) == new  # a mapped-over file is left alone
    assert old == _load(path)  # the input is not changed


def test_a_moved_widget_that_was_turned_into_an_input_keeps_its_link() -> None:
    old = _load(REPO_ROOT / "tests" / "fixtures" / "first_layout_workflows" / "tl_train.json")
    train = next(n for n in old["nodes"] if n["type"] == TRAIN_NODE)
    link_id = old["last_link_id"] + 1
    old["last_link_id"] = link_id
    old["links"].append([link_id, 1, 0, train["id"], len(train["inputs"]), "FLOAT"])
    train["inputs"].append({"name": "learning_rate", "type": "FLOAT", "link": link_id,
                            "widget": {"name": "learning_rate"}})
    train["inputs"].append({"name": "seed", "type": "INT", "link": None, "widget": {"name": "seed"}})
    new = migrate_workflow(old)
    node = next(n for n in new["nodes"] if n["id"] == train["id"])
    assert [i["name"] for i in node["inputs"]] == ["model", "clip", "vae", "dataset", "options"]
    options = next(n for n in new["nodes"] if n["type"] == OPTIONS_NODE)
    assert [i["name"] for i in options["inputs"]] == ["learning_rate"]
    assert _link(new, link_id)[3:5] == [options["id"], 0]


@pytest.mark.skipif(shutil.which("node") is None, reason="Node.js is not installed: the editor's copy is "
                    "checked by tests/e2e/test_browser.py only")
@pytest.mark.parametrize("path", FIXTURES, ids=lambda p: p.stem)
def test_the_editor_extension_maps_a_file_exactly_like_the_converter(path: Path, tmp_path: Path) -> None:
    assert _run_editor_migration(_load(path), tmp_path) == migrate_workflow(_load(path))


# A few of TL Training Options' widgets as its schema declares them (the node reads them from the schema).
RULES = {
    "learning_rate": WidgetRule("FLOAT", 0.0, 0.1),
    "batch_size": WidgetRule("INT", 0, 64),
    "train_q": WidgetRule("BOOLEAN"),
    "prompt": WidgetRule("STRING"),
    "precision": WidgetRule("COMBO", options=("auto", "fp32", "bf16", "fp16")),
}


def test_old_prompt_inputs_are_typed_like_the_settings() -> None:
    settings = legacy_settings({"learning_rate": "0.0003", "train_q": 1, "prompt": "photo of {concepts}",
                                "batch_size": 2.0, "precision": "fp32", "model": ["1", 0], "unknown": 3}, RULES)
    assert settings == {"learning_rate": 3e-4, "train_q": True, "prompt": "photo of {concepts}", "batch_size": 2,
                        "precision": "fp32"}
    assert type(settings["batch_size"]) is int
    expect_user_error(lambda: legacy_settings({"batch_size": "two"}, RULES), "batch_size", "'two'", "whole number")


@pytest.mark.parametrize(("inputs", "names"), [
    ({"learning_rate": 1000}, ("learning_rate", "1000", "maximum of 0.1", "from 0.0 to 0.1")),
    ({"learning_rate": float("nan")}, ("learning_rate", "nan")),
    ({"batch_size": -1}, ("batch_size", "-1", "minimum of 0", "from 0 to 64")),
    ({"batch_size": 65}, ("batch_size", "65", "maximum of 64")),
    ({"precision": "fp64"}, ("precision", "'fp64'", "auto, fp32, bf16, fp16")),
])
def test_old_prompt_inputs_get_the_widgets_range_and_list_checks(inputs: dict, names: tuple[str, ...]) -> None:
    """ComfyUI checks only the inputs a node declares: the old names on the training node pass unchecked."""
    message = expect_user_error(lambda: legacy_settings(inputs, RULES), *names)
    assert message.startswith(f"{next(iter(inputs))}: ") and "TL Training Options" in message


def _run_editor_migration(workflow: dict, tmp_path: Path) -> dict:
    body = re.sub(r"^import .*$", "", LAYOUT_JS.read_text(), flags=re.M).split("app.registerExtension(")[0]
    script = tmp_path / "migrate.mjs"
    script.write_text("import fs from 'node:fs';\n" + body
                      + "\nprocess.stdout.write(JSON.stringify(migrateTrainNodes(JSON.parse(fs.readFileSync(0, 'utf8')))));\n")
    out = subprocess.run(["node", str(script)], input=json.dumps(workflow), capture_output=True, text=True,
                         timeout=60, check=True)
    return json.loads(out.stdout)


@pytest.mark.skipif(shutil.which("node") is None, reason="Node.js is not installed")
def test_new_ids_stay_above_the_counters_of_later_file_formats(tmp_path: Path) -> None:
    """Later formats keep the id counters in `state`: the options node and its link must not reuse an id."""
    workflow = _load(FIXTURES[0])
    del workflow["last_node_id"], workflow["last_link_id"]
    workflow["state"] = {"lastNodeId": 50, "lastLinkId": 70, "lastGroupId": 0}
    for new in (migrate_workflow(workflow), _run_editor_migration(workflow, tmp_path)):
        options = next(n for n in new["nodes"] if n["type"] == OPTIONS_NODE)
        assert options["id"] == 51 and new["links"][-1][0] == 71
        assert new["state"]["lastNodeId"] == 51 and new["state"]["lastLinkId"] == 71
