"""Map workflows saved with the first training-node layout onto the current one.

The first release kept every setting on Train Textual Localization (K/V); the expert ones now live
on TL Training Options. ComfyUI restores widgets by position, so an old file would put its
attention_weight into `steps`. This does what the editor extension (web/js/train_node_layout.js)
does before a graph loads: keep the four artist settings on the node, move the others to a new TL
Training Options node linked to its `options` input. Same values, so the same run.
"""

from __future__ import annotations

import copy
from typing import Any

from textloc.config import (
    LEGACY_TRAIN_NODE_WIDGETS,
    TRAIN_NODE_WIDGETS,
    TRAINING_OPTIONS_WIDGETS,
    TrainConfig,
)

TRAIN_NODE = "TL_TrainKV"
OPTIONS_NODE = "TL_TrainingOptions"
OPTIONS_TYPE = "TL_TRAIN_OPTIONS"
DEFAULTS = TrainConfig()  # the value of each option the first layout did not have (the options added since)
OPTIONS_NODE_SIZE = (340, 560)


def is_legacy_train_node(node: dict[str, Any]) -> bool:
    values = node.get("widgets_values")
    return (node.get("type") == TRAIN_NODE and isinstance(values, list)
            and len(values) == len(LEGACY_TRAIN_NODE_WIDGETS))


def migrate_workflow(workflow: dict[str, Any]) -> dict[str, Any]:
    """A copy of an editor-format workflow with every old-layout training node mapped over."""
    migrated = copy.deepcopy(workflow)
    for node in list(migrated.get("nodes") or []):
        if is_legacy_train_node(node):
            _split_train_node(migrated, node)
    return migrated


def _split_train_node(workflow: dict[str, Any], node: dict[str, Any]) -> None:
    old = dict(zip(LEGACY_TRAIN_NODE_WIDGETS, node["widgets_values"], strict=True))
    node["widgets_values"] = [old[name] for name in TRAIN_NODE_WIDGETS]
    # new ids above every id in use and every counter the file keeps (`state` in later formats)
    state = workflow.get("state") or {}
    options_id = max(int(workflow.get("last_node_id") or 0), int(state.get("lastNodeId") or 0),
                     *(int(n["id"]) for n in workflow["nodes"])) + 1
    link_id = max(int(workflow.get("last_link_id") or 0), int(state.get("lastLinkId") or 0),
                  *(int(link[0]) for link in workflow.get("links") or []), 0) + 1
    workflow["last_node_id"], workflow["last_link_id"] = options_id, link_id
    if "state" in workflow:
        workflow["state"] = {**state, "lastNodeId": options_id, "lastLinkId": link_id}
    # Inputs the editor made for moved widgets (newer frontends list them): unlinked ones go,
    # linked ones (a widget turned into an input) follow their widget to the options node.
    options_inputs: list[dict[str, Any]] = []
    kept_inputs: list[dict[str, Any]] = []
    for inp in node.get("inputs") or []:
        widget = (inp.get("widget") or {}).get("name")
        if widget in TRAINING_OPTIONS_WIDGETS:
            if inp.get("link") is not None:
                options_inputs.append(inp)
            continue
        kept_inputs.append(inp)
    kept_inputs.append({"name": "options", "type": OPTIONS_TYPE, "link": link_id})
    node["inputs"] = kept_inputs
    for slot, inp in enumerate(options_inputs):
        for link in workflow.get("links") or []:
            if link[0] == inp["link"]:
                link[3], link[4] = options_id, slot
    for slot, inp in enumerate(kept_inputs):  # links into the training node by their new slot
        for link in workflow.get("links") or []:
            if inp.get("link") is not None and link[0] == inp["link"]:
                link[4] = slot
    x, y = node.get("pos", [0, 0])[:2]
    height = (node.get("size") or [0, 0])[1]
    workflow.setdefault("nodes", []).append({
        "id": options_id, "type": OPTIONS_NODE, "pos": [x, y + height + 60], "size": list(OPTIONS_NODE_SIZE),
        "flags": {}, "order": node.get("order", 0), "mode": node.get("mode", 0), "inputs": options_inputs,
        "outputs": [{"name": "options", "type": OPTIONS_TYPE, "links": [link_id], "slot_index": 0}],
        "properties": {"Node name for S&R": OPTIONS_NODE},
        "widgets_values": [old.get(name, getattr(DEFAULTS, name)) for name in TRAINING_OPTIONS_WIDGETS],
    })
    workflow.setdefault("links", []).append([link_id, options_id, 0, node["id"], len(kept_inputs) - 1, OPTIONS_TYPE])
