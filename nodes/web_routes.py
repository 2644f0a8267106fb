"""HTTP route for the training chart: the loss steps of the running (or last) training run.

The browser draws the chart from the "textloc.train.step" websocket events. A page reloaded in
the middle of a run has missed the earlier events, so it asks

    GET /textual_localization/train_history?node=<node id>

and gets {"node", "prompt_id", "run", "max", "eta_seconds", "steps": [{step, total, denoise,
prior, attention}, ...]} ("steps" is empty when that node has not trained yet). Without
`node` the answer maps every node id seen to its entry.

The history is kept in memory for the latest prompt that trained: the first step event of a
new prompt clears it.
"""

from __future__ import annotations

import threading
from typing import Any

TRAIN_STEP_EVENT = "textloc.train.step"
ROUTE = "/textual_localization/train_history"
LOSS_KEYS = ("step", "total", "denoise", "prior", "attention")
MAX_POINTS = 4000  # longer runs keep every second point (the chart has fewer pixels anyway)


class TrainHistory:
    """Step losses per training node of the current prompt. Fed from the worker thread."""

    def __init__(self, max_points: int = MAX_POINTS) -> None:
        self.max_points = max_points
        self.prompt_id: str | None = None
        self.nodes: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()

    def record(self, event: str, data: dict[str, Any], prompt_id: str | None = None) -> None:
        if event != TRAIN_STEP_EVENT or data.get("node") is None:
            return
        node = str(data["node"])
        with self._lock:
            if prompt_id != self.prompt_id:
                self.prompt_id = prompt_id
                self.nodes = {}
            entry = self.nodes.get(node)
            if entry is None or entry["run"] != data.get("run") or _step(entry) >= data.get("step", 0):
                entry = {"node": node, "prompt_id": prompt_id, "run": data.get("run"), "steps": []}
                self.nodes[node] = entry
            entry["max"] = data.get("max")
            entry["eta_seconds"] = data.get("eta_seconds")
            steps = entry["steps"]
            steps.append({key: data.get(key) for key in LOSS_KEYS})
            if len(steps) > self.max_points:
                del steps[1:-1:2]  # drop every second point, keep the first and the newest

    def get(self, node: str | None = None) -> dict[str, Any]:
        with self._lock:
            if node is None:
                return {key: _copy(entry) for key, entry in self.nodes.items()}
            entry = self.nodes.get(node)
            if entry is None:
                return {"node": node, "prompt_id": None, "run": None, "max": None, "eta_seconds": None,
                        "steps": []}
            return _copy(entry)


def _step(entry: dict[str, Any]) -> int:
    return entry["steps"][-1]["step"] if entry["steps"] else 0


def _copy(entry: dict[str, Any]) -> dict[str, Any]:
    return {**entry, "steps": list(entry["steps"])}


TRAIN_HISTORY = TrainHistory()


def _current_prompt_id() -> str | None:
    from server import PromptServer

    return getattr(getattr(PromptServer, "instance", None), "last_prompt_id", None)


def _on_event(event: str, data: dict[str, Any]) -> None:
    if event == TRAIN_STEP_EVENT:
        TRAIN_HISTORY.record(event, data, _current_prompt_id())


def _listen_to_training_events() -> None:
    """Have every event textloc sends pass through _on_event as well."""
    from ..textloc import host

    add_listener = getattr(host, "add_event_listener", None)
    if add_listener is not None:
        add_listener(_on_event)
        return
    send = host.send_event
    if getattr(send, "records_train_history", False):
        return

    def send_event(event: str, data: dict[str, Any]) -> None:
        _on_event(event, data)
        send(event, data)

    send_event.records_train_history = True  # type: ignore[attr-defined]
    host.send_event = send_event


def register() -> None:
    """Add the route to ComfyUI's web server (nothing happens when no server runs)."""
    try:
        from aiohttp import web
        from server import PromptServer
    except ImportError:
        return
    instance = getattr(PromptServer, "instance", None)
    if instance is None:
        return
    _listen_to_training_events()

    @instance.routes.get(ROUTE)
    async def train_history(request: web.Request) -> web.Response:
        node = request.query.get("node")
        return web.json_response(TRAIN_HISTORY.get(node))


register()
