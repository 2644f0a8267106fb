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

from typing import Any

from ..textloc import host
from ..textloc.training.history import TRAIN_STEP_EVENT, TrainHistory

ROUTE = "/textual_localization/train_history"


TRAIN_HISTORY = TrainHistory()


def _current_prompt_id() -> str | None:
    from server import PromptServer

    return getattr(getattr(PromptServer, "instance", None), "last_prompt_id", None)


def _on_event(event: str, data: dict[str, Any]) -> None:
    if event == TRAIN_STEP_EVENT:
        TRAIN_HISTORY.record(event, data, _current_prompt_id())


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
    host.add_event_listener(_on_event)

    @instance.routes.get(ROUTE)
    async def train_history(request: web.Request) -> web.Response:
        node = request.query.get("node")
        return web.json_response(TRAIN_HISTORY.get(node))


register()
