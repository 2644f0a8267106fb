"""Write editor-format workflow files from short node specs, using the server's `/object_info`.

The example workflows in workflows/ are generated with this so that widget order, hidden
control values and link tables are exactly what the editor itself stores.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from .workflow import _extra_widget_values, _is_widget, _ordered_inputs, default_value

NOTE_TYPE = "Note"
NOTE_COLOR, NOTE_BGCOLOR = "#432", "#653"  # the editor's "yellow" node colours, as its own notes use


@dataclass
class NodeSpec:
    id: int
    type: str
    widgets: dict[str, Any] = field(default_factory=dict)
    links: dict[str, tuple[int, int]] = field(default_factory=dict)  # input name -> (node id, slot)
    pos: tuple[float, float] = (0.0, 0.0)
    size: tuple[float, float] = (320.0, 160.0)
    title: str | None = None


def build_ui_workflow(specs: list[NodeSpec], object_info: dict[str, Any]) -> dict[str, Any]:
    by_id = {s.id: s for s in specs}
    links: list[list[Any]] = []
    out_links: dict[tuple[int, int], list[int]] = {}
    nodes = []
    for order, spec in enumerate(specs):
        if spec.type == NOTE_TYPE:
            nodes.append(_note_node(spec, order))
            continue
        info = object_info[spec.type]
        unknown = set(spec.widgets) | set(spec.links)
        unknown -= {name for name, _ in _ordered_inputs(info)}
        if unknown:
            raise KeyError(f"{spec.type} has no inputs {sorted(unknown)}")
        inputs, widgets_values = [], []
        for name, input_spec in _ordered_inputs(info):
            is_widget = _is_widget(input_spec)
            if is_widget:
                widgets_values.append(spec.widgets.get(name, default_value(input_spec)))
                if _extra_widget_values(name, input_spec):
                    widgets_values.append("fixed" if input_spec[0] == "INT" else "image")
            link_id = None
            if name in spec.links:
                src, slot = spec.links[name]
                src_type = object_info[by_id[src].type]["output"][slot]
                link_id = len(links) + 1
                links.append([link_id, src, slot, spec.id, len(inputs), src_type])
                out_links.setdefault((src, slot), []).append(link_id)
            if not is_widget or link_id is not None:
                entry: dict[str, Any] = {"name": name, "type": _socket_type(input_spec), "link": link_id}
                if is_widget:
                    entry["widget"] = {"name": name}
                inputs.append(entry)
        nodes.append({
            "id": spec.id, "type": spec.type, "pos": list(spec.pos), "size": list(spec.size),
            "flags": {}, "order": order, "mode": 0, "inputs": inputs, "outputs": [],
            "properties": {"Node name for S&R": spec.type}, "widgets_values": widgets_values,
            **({"title": spec.title} if spec.title else {}),
        })
    for node in nodes:
        if node["type"] == NOTE_TYPE:
            continue
        info = object_info[node["type"]]
        for slot, (out_type, out_name) in enumerate(zip(info["output"], info["output_name"], strict=True)):
            node["outputs"].append({"name": out_name, "type": out_type,
                                    "links": out_links.get((node["id"], slot), []), "slot_index": slot})
    return {
        "id": str(uuid.uuid5(uuid.NAMESPACE_URL, "textual-localization/" + ",".join(s.type for s in specs))),
        "revision": 0, "last_node_id": max(by_id), "last_link_id": len(links),
        "nodes": nodes, "links": links, "groups": [], "config": {},
        "extra": {"ds": {"scale": 0.8, "offset": [0, 0]}}, "version": 0.4,
    }


def _note_node(spec: NodeSpec, order: int) -> dict[str, Any]:
    """The editor's own text note (not a server node): widgets {"text": ...}, drawn in the editor's note colours."""
    return {"id": spec.id, "type": NOTE_TYPE, "pos": list(spec.pos), "size": list(spec.size), "flags": {},
            "order": order, "mode": 0, "inputs": [], "outputs": [], "properties": {"text": ""},
            "widgets_values": [spec.widgets["text"]], "color": NOTE_COLOR, "bgcolor": NOTE_BGCOLOR,
            **({"title": spec.title} if spec.title else {})}


def _socket_type(spec: list[Any]) -> str:
    return "COMBO" if isinstance(spec[0], list) else str(spec[0])
