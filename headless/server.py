"""Start the real ComfyUI server on loopback with this pack, run workflows, collect outputs.

One scratch base directory per server (`--base-directory`): the pack is linked into its
`custom_nodes/`, checkpoints are linked into `models/checkpoints/`, input data is copied into
`input/`. Nothing outside that folder is written, so the user's ComfyUI is never touched.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from .paths import PACK_DIR_NAME, REPO_ROOT, require_comfyui


class WorkflowError(RuntimeError):
    """A prompt was rejected by validation or failed while executing."""

    def __init__(self, message: str, details: dict[str, Any]) -> None:
        super().__init__(message)
        self.details = details


@dataclass
class RunResult:
    """What one prompt produced: its history entry and every websocket event seen for it."""

    prompt_id: str
    history: dict[str, Any]
    events: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def outputs(self) -> dict[str, Any]:
        return self.history.get("outputs", {})

    def events_of(self, event_type: str) -> list[dict[str, Any]]:
        return [e["data"] for e in self.events if e.get("type") == event_type]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cpu_only() -> bool:
    try:
        import torch

        return not torch.cuda.is_available()
    except ImportError:
        return True


class ComfyServer:
    """A ComfyUI server process this object started and will stop."""

    def __init__(
        self,
        base_dir: Path | None = None,
        checkpoints: list[Path] | None = None,
        input_dirs: list[Path] | None = None,
        port: int | None = None,
        extra_args: list[str] | None = None,
        cpu: bool | None = None,
        env: dict[str, str] | None = None,
        link_pack: bool = True,
    ) -> None:
        self.comfy_dir = require_comfyui()
        self._own_base = base_dir is None
        self.base_dir = Path(base_dir or tempfile.mkdtemp(prefix="tl-comfy-"))
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.client_id = uuid.uuid4().hex
        self.cpu = _cpu_only() if cpu is None else cpu
        self.extra_args = extra_args or []
        self.env = env or {}  # extra environment of the server process (e.g. PYTHONPATH for fault injection)
        self.link_pack = link_pack  # False: custom_nodes/ holds only what the caller put there (an installed archive)
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.base_dir / "server.log"
        self._prepare_base(checkpoints or [], input_dirs or [])

    # --- layout -------------------------------------------------------------------------
    def _prepare_base(self, checkpoints: list[Path], input_dirs: list[Path]) -> None:
        for sub in ("custom_nodes", "models/checkpoints", "models/loras", "models/embeddings",
                    "input", "output", "temp", "user"):
            (self.base_dir / sub).mkdir(parents=True, exist_ok=True)
        pack_link = self.base_dir / "custom_nodes" / PACK_DIR_NAME
        if self.link_pack and not pack_link.exists():
            pack_link.symlink_to(REPO_ROOT, target_is_directory=True)
        for ckpt in checkpoints:
            self.add_checkpoint(ckpt)
        for folder in input_dirs:
            self.add_input(folder)

    @property
    def input_dir(self) -> Path:
        return self.base_dir / "input"

    @property
    def output_dir(self) -> Path:
        return self.base_dir / "output"

    def add_checkpoint(self, path: Path, name: str | None = None) -> str:
        """Link a checkpoint file into models/checkpoints; returns the name nodes use."""
        return self.add_model("checkpoints", path, name)

    def add_model(self, folder: str, path: Path, name: str | None = None) -> str:
        """Link a model file into models/<folder> (e.g. clip_vision); returns the name nodes use."""
        name = name or Path(path).name
        link = self.base_dir / "models" / folder / name
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.exists():
            link.symlink_to(Path(path).resolve())
        return name

    def add_input(self, folder: Path, name: str | None = None) -> str:
        """Copy a data folder into input/ (a copy: tests may damage it on purpose)."""
        name = name or Path(folder).name
        dest = self.input_dir / name
        if dest.exists():
            shutil.rmtree(dest)
        shutil.copytree(folder, dest)
        return name

    # --- lifecycle ----------------------------------------------------------------------
    def start(self, timeout: float = 180.0) -> ComfyServer:
        args = [
            sys.executable, "main.py",
            "--listen", "127.0.0.1", "--port", str(self.port),
            "--base-directory", str(self.base_dir),
            "--database-url", f"sqlite:///{self.base_dir / 'comfyui.db'}",
            "--disable-api-nodes", "--disable-auto-launch",
            *self.extra_args,
        ]
        if self.cpu:
            args.append("--cpu")
        env = dict(os.environ, PYTHONUNBUFFERED="1", **self.env)
        log = open(self.log_path, "ab")  # noqa: SIM115  (closed with the process)
        self.proc = subprocess.Popen(args, cwd=self.comfy_dir, stdout=log, stderr=subprocess.STDOUT,
                                     env=env, start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ComfyUI exited with code {self.proc.returncode}:\n{self.log_tail()}")
            try:
                self.get_json("/system_stats", timeout=2)
                return self
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                time.sleep(0.3)
        self.stop()
        raise TimeoutError(f"ComfyUI did not answer within {timeout:.0f} s:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None

    def kill(self) -> None:
        """SIGKILL the server's whole process group, as a crash or the OOM killer would: nothing cleans up."""
        if self.proc is not None:
            if self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGKILL)  # started with start_new_session: pgid == pid
            self.proc.wait(timeout=30)
        self.proc = None

    def cleanup(self) -> None:
        self.stop()
        if self._own_base:
            shutil.rmtree(self.base_dir, ignore_errors=True)

    def __enter__(self) -> ComfyServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def log_tail(self, chars: int = 6000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except FileNotFoundError:
            return ""

    # --- HTTP ---------------------------------------------------------------------------
    def get_json(self, path: str, timeout: float = 30) -> Any:
        with urllib.request.urlopen(self.url + path, timeout=timeout) as resp:  # noqa: S310 (loopback)
            return json.loads(resp.read())

    def get_bytes(self, path: str, timeout: float = 30) -> bytes:
        with urllib.request.urlopen(self.url + path, timeout=timeout) as resp:  # noqa: S310 (loopback)
            return resp.read()

    def object_info(self) -> dict[str, Any]:
        return self.get_json("/object_info")

    def view(self, image: dict[str, str]) -> bytes:
        """Fetch one output file entry ({filename, subfolder, type}) through /view."""
        query = urllib.parse.urlencode({k: image.get(k, "") for k in ("filename", "subfolder", "type")})
        return self.get_bytes(f"/view?{query}")

    # --- running prompts ----------------------------------------------------------------
    def run(self, prompt: dict[str, Any], timeout: float = 600.0, workflow: dict[str, Any] | None = None,
            on_event: Callable[[dict[str, Any]], None] | None = None) -> RunResult:
        """Queue an API-format prompt, follow it on the websocket until it ends.

        `workflow` (the editor-format graph) is sent the way the editor sends it, as
        extra_pnginfo, so nodes that save the workflow beside their outputs receive it.
        `on_event` sees every websocket event of this prompt as it arrives.
        """
        return asyncio.run(self._run(prompt, timeout, workflow, on_event))

    async def _run(self, prompt: dict[str, Any], timeout: float, workflow: dict[str, Any] | None,
                   on_event: Callable[[dict[str, Any]], None] | None) -> RunResult:
        started = time.monotonic()
        events: list[dict[str, Any]] = []
        body: dict[str, Any] = {"prompt": prompt, "client_id": self.client_id}
        if workflow is not None:
            body["extra_data"] = {"extra_pnginfo": {"workflow": workflow}}
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(f"{self.url}/ws?clientId={self.client_id}",
                                          max_msg_size=0) as ws:
                async with session.post(f"{self.url}/prompt", json=body) as resp:
                    answer = await resp.json(content_type=None)
                    if resp.status != 200:
                        raise WorkflowError(_describe_rejection(answer), answer)
                prompt_id = answer["prompt_id"]
                status = await asyncio.wait_for(self._follow(ws, prompt_id, events, on_event), timeout)
            history = await self._history(session, prompt_id)
        result = RunResult(prompt_id, history, events, time.monotonic() - started)
        if status != "success":
            errors = result.events_of("execution_error")
            message = errors[0].get("exception_message", "execution failed") if errors else status
            raise WorkflowError(f"workflow failed: {message}", {"events": events, "history": history})
        return result

    @staticmethod
    async def _follow(ws: aiohttp.ClientWebSocketResponse, prompt_id: str, events: list[dict[str, Any]],
                      on_event: Callable[[dict[str, Any]], None] | None) -> str:
        async for msg in ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue  # binary frames carry preview images
            event = json.loads(msg.data)
            data = event.get("data") or {}
            if data.get("prompt_id") not in (None, prompt_id):
                continue
            events.append(event)
            if on_event is not None:
                on_event(event)
            kind = event.get("type")
            if kind == "execution_success":
                return "success"
            if kind == "execution_error":
                return "error"
            if kind == "execution_interrupted":
                return "interrupted"
        return "disconnected"

    async def _history(self, session: aiohttp.ClientSession, prompt_id: str) -> dict[str, Any]:
        for _ in range(50):
            async with session.get(f"{self.url}/history/{prompt_id}") as resp:
                body = await resp.json(content_type=None)
            if prompt_id in body:
                return body[prompt_id]
            await asyncio.sleep(0.1)
        return {}

    def interrupt(self) -> None:
        req = urllib.request.Request(self.url + "/interrupt", data=b"{}", method="POST",
                                     headers={"Content-Type": "application/json"})
        urllib.request.urlopen(req, timeout=10).read()  # noqa: S310 (loopback)

    def save_images(self, result: RunResult, dest: Path) -> list[Path]:
        """Download every image a prompt's output nodes reported into dest/ as
        node<id>_<index>_<ComfyUI's file name> (scripts/demo.py names and deduplicates its own)."""
        dest.mkdir(parents=True, exist_ok=True)
        saved = []
        for node_id, i, image in output_images(result):
            path = dest / f"node{node_id}_{i:02d}_{image['filename']}"
            path.write_bytes(self.view(image))
            saved.append(path)
        return saved


def output_images(result: RunResult) -> list[tuple[str, int, dict[str, str]]]:
    """(node id, index, image entry) of every image the output nodes reported, in node id order.

    An entry's `type` says where ComfyUI keeps the file: `output` (saved, e.g. by Save Image) or
    `temp` (a preview, e.g. Preview Image or a node's own preview).
    """
    def order(node_id: str) -> tuple[int, str]:
        return (int(node_id), "") if node_id.isdigit() else (1 << 30, node_id)

    return [(node_id, i, image) for node_id in sorted(result.outputs, key=order)
            for i, image in enumerate(result.outputs[node_id].get("images") or [])]


def _describe_rejection(body: dict[str, Any]) -> str:
    """Turn ComfyUI's 400 answer into one readable line per problem."""
    lines = []
    error = body.get("error") or {}
    if error:
        lines.append(f"{error.get('message', '')}: {error.get('details', '')}".strip(": "))
    for node_id, node_error in (body.get("node_errors") or {}).items():
        for err in node_error.get("errors", []):
            lines.append(f"node {node_id} ({node_error.get('class_type')}): {err.get('message')} "
                         f"{err.get('details', '')}".strip())
    return "prompt rejected: " + ("; ".join(lines) or json.dumps(body)[:2000])
