"""Convert editor-format (UI) workflow files into the API prompts the server executes.

Workflow files are kept in the editor's format because that is what artists load and share.
The conversion follows the frontend's own rules, driven by the server's `/object_info`:
widget values are matched to inputs in `input_order`; an INT input with
`control_after_generate` (or named seed/noise_seed) carries one extra "control" value; a combo
with an upload button carries one extra value; links are followed through Reroute nodes and
PrimitiveNode values are inlined. Muted nodes are dropped; bypassed nodes pass their input
of the same type straight through, as the editor does.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from textloc.config import TRAIN_NODE_WIDGETS, TRAINING_OPTIONS_WIDGETS

from .workflow_migration import OPTIONS_NODE, TRAIN_NODE, migrate_workflow

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
UPLOAD_FLAGS = ("image_upload", "video_upload", "audio_upload", "animated_image_upload", "upload")
SEED_NAMES = ("seed", "noise_seed")
MODE_MUTED = 2
MODE_BYPASS = 4
VIRTUAL_NODES = {"Reroute", "PrimitiveNode", "Note", "MarkdownNote"}


class WorkflowFormatError(ValueError):
    """The workflow file cannot be converted (names the node and the problem)."""


def load_workflow(path: Path) -> dict[str, Any]:
    with open(path, encoding="utf-8") as f:
        workflow = json.load(f)
    if "nodes" not in workflow or "links" not in workflow:
        raise WorkflowFormatError(f"{path} is not an editor-format workflow (no 'nodes'/'links').")
    return workflow


def _input_type(spec: list[Any]) -> str:
    kind = spec[0]
    return "COMBO" if isinstance(kind, list) else str(kind)


def _options(spec: list[Any]) -> dict[str, Any]:
    return spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}


def _is_widget(spec: list[Any]) -> bool:
    return _input_type(spec) in WIDGET_TYPES and not _options(spec).get("forceInput", False)


def _extra_widget_values(name: str, spec: list[Any]) -> int:
    """How many hidden companion values the editor stores after this widget's value."""
    kind, opts = _input_type(spec), _options(spec)
    if kind in ("INT", "COMBO") and opts.get("control_after_generate",
                                             kind == "INT" and name in SEED_NAMES):
        return 1
    if kind == "COMBO" and any(opts.get(flag) for flag in UPLOAD_FLAGS):
        return 1
    return 0


def _ordered_inputs(info: dict[str, Any]) -> list[tuple[str, list[Any]]]:
    order = info.get("input_order") or {k: list(v) for k, v in info.get("input", {}).items()}
    specs: list[tuple[str, list[Any]]] = []
    for group in ("required", "optional"):
        group_specs = info.get("input", {}).get(group, {})
        for name in order.get(group, []):
            if name in group_specs:
                specs.append((name, group_specs[name]))
    return specs


def _is_executed(node: dict[str, Any]) -> bool:
    """Whether an editor node becomes a node of the API prompt (virtual, muted, bypassed ones do not)."""
    return node["type"] not in VIRTUAL_NODES and node.get("mode") not in (MODE_MUTED, MODE_BYPASS)


class _Graph:
    def __init__(self, workflow: dict[str, Any]) -> None:
        if workflow.get("definitions", {}).get("subgraphs"):
            raise WorkflowFormatError("subgraphs are not supported by the converter; unpack them first.")
        self.nodes = {int(n["id"]): n for n in workflow["nodes"]}
        # link id -> (origin node, origin slot, target node, target slot, type)
        self.links: dict[int, tuple[int, int, int, int, str]] = {}
        for link in workflow["links"]:
            if isinstance(link, dict):
                link = [link["id"], link["origin_id"], link["origin_slot"], link["target_id"],
                        link["target_slot"], link.get("type", "*")]
            self.links[int(link[0])] = (int(link[1]), int(link[2]), int(link[3]), int(link[4]), str(link[5]))

    def resolve(self, link_id: int) -> tuple[str, Any]:
        """Follow a link to its real source: ("link", [node, slot]) or ("value", literal)."""
        seen = set()
        while True:
            if link_id in seen:
                raise WorkflowFormatError(f"link {link_id} forms a cycle through virtual nodes.")
            seen.add(link_id)
            origin, slot, _, _, link_type = self.links[link_id]
            node = self.nodes[origin]
            if node["type"] == "Reroute":
                link_id = self._input_link(node, 0)
                continue
            if node["type"] == "PrimitiveNode":
                return "value", node.get("widgets_values", [None])[0]
            if node.get("mode") == MODE_BYPASS:
                link_id = self._bypass_source(node, link_type)
                continue
            if node.get("mode") == MODE_MUTED:
                raise WorkflowFormatError(f"node {origin} ({node['type']}) is muted but feeds another node.")
            return "link", [str(origin), slot]

    @staticmethod
    def _input_link(node: dict[str, Any], index: int) -> int:
        inputs = node.get("inputs") or []
        if index >= len(inputs) or inputs[index].get("link") is None:
            raise WorkflowFormatError(f"node {node['id']} ({node['type']}) has an unconnected input.")
        return int(inputs[index]["link"])

    def _bypass_source(self, node: dict[str, Any], link_type: str) -> int:
        for inp in node.get("inputs") or []:
            if inp.get("link") is not None and inp.get("type") == link_type:
                return int(inp["link"])
        raise WorkflowFormatError(
            f"node {node['id']} ({node['type']}) is bypassed but has no {link_type} input to pass through.")


def _widget_inputs(node: dict[str, Any], info: dict[str, Any]) -> dict[str, Any]:
    """Match the node's stored widget values to its widget inputs, in the editor's order."""
    specs = [(name, spec) for name, spec in _ordered_inputs(info) if _is_widget(spec)]
    values = node.get("widgets_values") or []
    if isinstance(values, dict):  # newer editors may store widget values by name
        return {name: values[name] for name, _ in specs if name in values}
    inputs: dict[str, Any] = {}
    cursor = 0
    for name, spec in specs:
        if cursor >= len(values):  # a widget added after the file was saved: the editor uses its default
            inputs[name] = default_value(spec)
            continue
        inputs[name] = values[cursor]
        cursor += 1 + _extra_widget_values(name, spec)
    return inputs


def default_value(spec: list[Any]) -> Any:
    """The value the editor gives a widget that the saved file does not mention."""
    kind, opts = spec[0], _options(spec)
    if "default" in opts:
        return opts["default"]
    if isinstance(kind, list):
        return kind[0] if kind else ""
    if kind == "COMBO":
        return (opts.get("options") or [""])[0]
    return {"INT": 0, "FLOAT": 0.0, "STRING": "", "BOOLEAN": False}.get(kind)


def to_api_prompt(workflow: dict[str, Any], object_info: dict[str, Any]) -> dict[str, Any]:
    """Build the API prompt {node_id: {class_type, inputs}} the editor's Queue button sends.

    Workflows of the first training-node layout are mapped over first, as the editor does on load.
    """
    graph = _Graph(migrate_workflow(workflow))
    prompt: dict[str, Any] = {}
    for node_id, node in sorted(graph.nodes.items()):
        kind = node["type"]
        if not _is_executed(node):
            continue
        info = object_info.get(kind)
        if info is None:
            raise WorkflowFormatError(f"node {node_id} uses '{kind}', which this server does not have "
                                      "(a missing custom node pack?).")
        inputs = _widget_inputs(node, info)
        for inp in node.get("inputs") or []:
            if inp.get("link") is None:
                continue
            _, source = graph.resolve(int(inp["link"]))
            name = inp.get("widget", {}).get("name") or inp["name"]
            inputs[name] = source
        prompt[str(node_id)] = {"class_type": kind, "inputs": inputs,
                                "_meta": {"title": node.get("title") or info.get("display_name", kind)}}
    return prompt


def parse_override(text: str) -> tuple[str, str, Any]:
    """Parse `NODE_ID.INPUT=VALUE`; VALUE is JSON when it parses, else a plain string."""
    target, sep, raw = text.partition("=")
    node_id, dot, name = target.partition(".")
    if not sep or not dot or not node_id or not name:
        raise WorkflowFormatError(f"override '{text}' must look like NODE_ID.INPUT=VALUE, e.g. 3.steps=20")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return node_id, name, value


def _is_workflow(prompt_or_workflow: dict[str, Any]) -> bool:
    return isinstance(prompt_or_workflow.get("nodes"), list)


def _node_classes(prompt_or_workflow: dict[str, Any]) -> tuple[dict[str, str], dict[str, str]]:
    """({node id: class type} of the nodes the server runs, {node id: class type} of editor-only nodes).

    Accepts an API prompt or an editor-format workflow, so node ids can be checked from the file
    alone, before a server exists.
    """
    if _is_workflow(prompt_or_workflow):
        nodes = prompt_or_workflow["nodes"]
        run = {str(n["id"]): str(n["type"]) for n in nodes if _is_executed(n)}
        skipped = {str(n["id"]): str(n["type"]) for n in nodes if not _is_executed(n)}
        return run, skipped
    return {nid: str(node["class_type"]) for nid, node in prompt_or_workflow.items()}, {}


def _sorted_ids(ids: list[str]) -> list[str]:
    """Numeric order for the editor's integer ids ("2" before "10") without failing on other ids."""
    return sorted(ids, key=lambda nid: (len(nid), nid))


def check_overrides(prompt_or_workflow: dict[str, Any], overrides: list[str],
                    object_info: dict[str, Any] | None = None) -> list[str]:
    """One problem line per `NODE_ID.INPUT=VALUE` override that does not fit; empty when all fit.

    The server ignores inputs a node does not declare, so a misspelled name would run silently
    with the saved value; checking first turns that into an error that lists the valid names.
    Without `object_info` only the format and the node ids are checked (enough before the server
    starts); with it, input names are checked against the node's required and optional inputs.
    """
    classes, skipped = _node_classes(prompt_or_workflow)
    valid_nodes = ", ".join(f"{nid} ({classes[nid]})" for nid in _sorted_ids(list(classes)))
    problems: list[str] = []
    for text in overrides:
        try:
            node_id, name, _ = parse_override(text)
        except WorkflowFormatError as err:
            problems.append(str(err))
            continue
        if node_id in skipped:
            problems.append(f"override '{text}': node {node_id} ({skipped[node_id]}) is not run by the server "
                            f"(virtual, muted or bypassed); nodes: {valid_nodes}")
            continue
        if node_id not in classes:
            problems.append(f"override '{text}': the workflow has no node {node_id}; nodes: {valid_nodes}")
            continue
        if object_info is None:
            continue
        kind = classes[node_id]
        info = object_info.get(kind)
        if info is None:
            problems.append(f"override '{text}': node {node_id} uses '{kind}', which this server does not have")
            continue
        declared = info.get("input", {})
        valid_inputs = [*declared.get("required", {}), *declared.get("optional", {})]
        if kind == TRAIN_NODE:  # its expert settings go to its TL Training Options (see set_training_inputs)
            valid_inputs += [n for n in TRAINING_OPTIONS_WIDGETS if n not in valid_inputs]
        if not _is_workflow(prompt_or_workflow):  # inputs the editor created (e.g. dynamic ones) are valid too
            valid_inputs += [n for n in prompt_or_workflow[node_id].get("inputs", {}) if n not in valid_inputs]
        if name not in valid_inputs:
            problems.append(f"override '{text}': node {node_id} ({kind}) has no input '{name}'; "
                            f"inputs: {', '.join(valid_inputs) or '(none)'}")
    return problems


def apply_overrides(prompt: dict[str, Any], overrides: list[str],
                    object_info: dict[str, Any] | None = None) -> dict[str, Any]:
    """Set input values of an API prompt; refuses unknown node ids (and, given object_info, unknown
    input names) so typos do not pass silently. Nothing is changed when any override is refused."""
    problems = check_overrides(prompt, overrides, object_info)
    if problems:
        raise WorkflowFormatError("\n".join(problems))
    for text in overrides:
        node_id, name, value = parse_override(text)
        if prompt[node_id]["class_type"] == TRAIN_NODE:
            set_training_inputs(prompt, node_id, object_info, **{name: value})
        else:
            prompt[node_id]["inputs"][name] = value
    return prompt


def nodes_of_type(prompt: dict[str, Any], class_type: str) -> list[str]:
    return [nid for nid, node in prompt.items() if node["class_type"] == class_type]


def ensure_training_options(prompt: dict[str, Any], train_node_id: str, object_info: dict[str, Any]) -> str:
    """The id of the TL Training Options linked to a training node of an API prompt; links a new one at its
    defaults when there is none (the paper's values, so the run does not change)."""
    options = prompt[train_node_id]["inputs"].get("options")
    if isinstance(options, list) and len(options) == 2:
        return str(options[0])
    spec = object_info[OPTIONS_NODE]["input"]
    inputs = {name: default_value(s) for group in ("required", "optional") for name, s in spec.get(group, {}).items()}
    node_id = str(max((int(n) for n in prompt if str(n).isdigit()), default=0) + 1)
    prompt[node_id] = {"class_type": OPTIONS_NODE, "inputs": inputs, "_meta": {"title": "TL Training Options"}}
    prompt[train_node_id]["inputs"]["options"] = [node_id, 0]
    return node_id


def set_training_inputs(prompt: dict[str, Any], train_node_id: str, object_info: dict[str, Any] | None = None,
                        **values: Any) -> dict[str, Any]:
    """Set settings of a training node in an API prompt on the node that holds each one: the training
    node itself (guidance, steps, output_name, resume) or its TL Training Options (linked first, given
    `object_info`, when there is none)."""
    node = prompt[train_node_id]["inputs"]
    for name, value in values.items():
        if name in TRAIN_NODE_WIDGETS or name in node:
            node[name] = value
        elif name in TRAINING_OPTIONS_WIDGETS and (object_info is not None or isinstance(node.get("options"), list)):
            options_id = (ensure_training_options(prompt, train_node_id, object_info) if object_info is not None
                          else str(node["options"][0]))
            prompt[options_id]["inputs"][name] = value
        else:
            raise WorkflowFormatError(f"training node {train_node_id} has no input '{name}' and no TL Training "
                                      "Options linked to hold it.")
    return prompt
