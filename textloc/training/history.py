"""The training history behind the editor's loss chart: step losses per training node.

The browser draws the chart from the "textloc.train.step" websocket events; a page reloaded in
the middle of a run has missed the earlier ones and asks the server for this history instead.
It is kept in memory for the latest prompt that trained: the first step of a new prompt clears it.
"""

from __future__ import annotations

import threading
from typing import Any

from .loop import EVENT_STEP as TRAIN_STEP_EVENT

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
