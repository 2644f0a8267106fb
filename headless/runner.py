"""Run an editor-format workflow file end to end on a fresh server and keep what it made."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .paths import SAMPLE_DATA_DIR
from .random_clip_vision import ensure_random_clip_vision
from .random_inception import ensure_random_inception
from .server import ComfyServer, RunResult
from .workflow import apply_overrides, load_workflow, nodes_of_type, to_api_prompt

CHECKPOINT_LOADERS = ("CheckpointLoaderSimple",)


def default_checkpoint() -> Path:
    from .tiny_model import ensure_tiny_checkpoint

    return ensure_tiny_checkpoint()


def prepare_server(checkpoint: Path | None = None, input_dir: Path | None = None,
                   base_dir: Path | None = None) -> ComfyServer:
    """A not-yet-started server with a checkpoint and the input data folders in place."""
    server = ComfyServer(base_dir=base_dir)
    server.add_checkpoint(checkpoint or default_checkpoint())
    server.add_model("clip_vision", ensure_random_clip_vision())  # random encoders for tl_evaluate.json
    server.add_model("inception", ensure_random_inception())
    source = input_dir or SAMPLE_DATA_DIR
    for folder in sorted(p for p in Path(source).iterdir() if p.is_dir()):
        server.add_input(folder)
    return server


def build_prompt(server: ComfyServer, workflow: dict[str, Any], overrides: Sequence[str] = (),
                 checkpoint_name: str | None = None) -> dict[str, Any]:
    prompt = to_api_prompt(workflow, server.object_info())
    if checkpoint_name:
        for node_id in (n for kind in CHECKPOINT_LOADERS for n in nodes_of_type(prompt, kind)):
            prompt[node_id]["inputs"]["ckpt_name"] = checkpoint_name
    return apply_overrides(prompt, list(overrides))


def copy_output_tree(server: ComfyServer, dest_dir: Path) -> list[Path]:
    """Every file written under the server's output/ folder, copied with its sub-folders."""
    copied = []
    for path in sorted(server.output_dir.rglob("*")):
        if path.is_file():
            dest = dest_dir / path.relative_to(server.output_dir)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, dest)
            copied.append(dest)
    return copied


def collect_outputs(server: ComfyServer, result: RunResult, out_dir: Path) -> list[Path]:
    """Images reported by output nodes, plus every file the run wrote under output/."""
    return server.save_images(result, out_dir / "images") + copy_output_tree(server, out_dir / "files")


def run_workflow_file(workflow_path: Path, out_dir: Path, checkpoint: Path | None = None,
                      input_dir: Path | None = None, overrides: Sequence[str] = (),
                      timeout: float = 1800.0) -> tuple[RunResult, list[Path]]:
    server = prepare_server(checkpoint, input_dir)
    try:
        server.start()
        name = Path(checkpoint).name if checkpoint else None
        workflow = load_workflow(workflow_path)
        prompt = build_prompt(server, workflow, overrides, checkpoint_name=name)
        result = server.run(prompt, timeout=timeout, workflow=workflow)
        return result, collect_outputs(server, result, out_dir)
    finally:
        server.cleanup()
