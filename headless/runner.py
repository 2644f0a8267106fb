"""Run an editor-format workflow file end to end on a fresh server and keep what it made."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from textloc.data.set_folders import SAMPLE_PREFIX

from .paths import SAMPLE_DATA_DIR
from .server import ComfyServer, RunResult
from .workflow import (
    WorkflowFormatError,
    apply_overrides,
    check_overrides,
    load_workflow,
    nodes_of_type,
    to_api_prompt,
)
from .world_settings import apply_world_settings

CHECKPOINT_LOADERS = ("CheckpointLoaderSimple",)
DATASET_LOADER = "TL_LoadMultiConceptDataset"
IMAGE_FOLDERS = ("resized", "images")  # where a set in the paper's layout keeps its photos
IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"}  # as textloc.data.images reads


class InputDirError(ValueError):
    """--input-dir holds no data set in a layout the dataset node reads."""


def is_data_set(folder: Path) -> bool:
    """Whether a folder is one data set itself (paper's layout or a flat folder of photos and masks)."""
    if any((folder / name).is_dir() for name in IMAGE_FOLDERS):
        return True
    return any(p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")
               for p in folder.iterdir())


def input_sets(input_dir: Path) -> list[Path]:
    """The set folders to copy into input/: the folder itself when it is a set, else its sub-folders.

    Both a folder of sets (like sample_data/) and one set folder are accepted, so pointing
    --input-dir at the set you want to use works as well as pointing it at its parent.
    """
    folder = Path(input_dir).resolve()  # `--input-dir .` too has a name to copy the set under
    if not folder.is_dir():
        raise InputDirError(f"--input-dir {folder} is not a folder.")
    if is_data_set(folder):
        return [folder]
    sets = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not sets:
        raise InputDirError(
            f"--input-dir {folder} holds no data set: expected a folder of sets (like sample_data/, "
            f"{folder}/<set>/resized/*.png with <set>/mask_1/, <set>/mask_2/) or one set "
            f"({folder}/resized/*.png with {folder}/mask_1/..., or {folder}/*.png with *_mask_1.png files).")
    return sets


def _loader_folders(prompt: dict[str, Any]) -> dict[str, str]:
    """{node id: folder} of the prompt's dataset loaders that name their folder (not a link)."""
    folders = {}
    for node_id in nodes_of_type(prompt, DATASET_LOADER):
        folder = prompt[node_id]["inputs"].get("folder")
        if isinstance(folder, str):
            folders[node_id] = folder.strip()
    return folders


def _is_sample(folder: str) -> bool:
    return folder.startswith(SAMPLE_PREFIX.strip())


def _is_input_name(folder: str) -> bool:
    """A folder name that stays inside input/ (the loader refuses the others itself)."""
    path = Path(folder)
    return bool(folder) and not _is_sample(folder) and not path.is_absolute() and ".." not in path.parts


def input_set_names(prompt: dict[str, Any], input_dir: Path | None) -> dict[str, Path]:
    """{name in input/: set folder} for what the dataset loaders ask that --input-dir holds under another name.

    One set given as --input-dir is copied under the one input/ folder name the loaders ask for (the
    pack's `[sample]` sets are no such name). Where that name is not clear, or a folder of sets lacks a
    name a loader asks for, InputDirError says which `--set NODE.folder=NAME` to add, one line each.
    """
    if input_dir is None:
        return {}
    sets = input_sets(input_dir)
    loaders = _loader_folders(prompt)
    names = {folder.name for folder in sets}
    asked = {folder for folder in loaders.values() if _is_input_name(folder)}
    if not is_data_set(Path(input_dir)):  # a folder of sets: each asked name must be one of them
        missing = {node_id: folder for node_id, folder in loaders.items()
                   if folder in asked and Path(folder).parts[0] not in names}
        if missing:
            raise InputDirError("\n".join(
                f"node {node_id} ({DATASET_LOADER}) loads '{folder}', which --input-dir {input_dir} does not hold "
                f"(it holds {', '.join(sorted(names))}); add --set {node_id}.folder=NAME with one of those."
                for node_id, folder in missing.items()))
        return {}
    (given,) = sets
    if not loaders or given.name in loaders.values():
        return {}
    if len(asked) == 1:
        return {asked.pop(): given}
    raise InputDirError("\n".join(
        f"node {node_id} ({DATASET_LOADER}) loads '{folder}'"
        + (" (one of the pack's sample sets)" if _is_sample(folder) else "")
        + f", not the set --input-dir {input_dir} gives; add --set {node_id}.folder={given.name} to load it there."
        for node_id, folder in loaders.items()))


def default_checkpoint() -> Path:
    """The shapes-world model, which the example workflows name."""
    from shapes_world.model import ensure_world_checkpoint

    return ensure_world_checkpoint()


def prepare_server(checkpoint: Path | None = None, input_dir: Path | None = None,
                   base_dir: Path | None = None, more_checkpoints: Sequence[Path] = (),
                   extra_args: Sequence[str] = ()) -> ComfyServer:
    """A not-yet-started server with a checkpoint (and `more_checkpoints`), the random evaluation
    encoders and the input data folders in place; `extra_args` go to ComfyUI's command line."""
    # imported here: they load torch (seconds), which the pre-start checks of a run do not need
    from .random_clip_vision import ensure_random_clip_vision
    from .random_inception import ensure_random_inception

    sets = input_sets(input_dir or SAMPLE_DATA_DIR)  # first: a wrong folder fails before any slow set-up
    server = ComfyServer(base_dir=base_dir, extra_args=list(extra_args))
    for path in (*more_checkpoints, checkpoint or default_checkpoint()):
        server.add_checkpoint(path)
    server.add_model("clip_vision", ensure_random_clip_vision())  # random encoders for tl_evaluate.json
    server.add_model("inception", ensure_random_inception())
    for folder in sets:
        server.add_input(folder)
    return server


def build_prompt(server: ComfyServer, workflow: dict[str, Any], overrides: Sequence[str] = (),
                 checkpoint_name: str | None = None, world_settings: bool = False) -> dict[str, Any]:
    """The API prompt of `workflow`; every override is checked against /object_info before any is set.

    `world_settings` applies the shapes-world model's sizes, steps and learning rate first (the files
    keep the real-model defaults); overrides come after, so they win.
    """
    object_info = server.object_info()
    prompt = to_api_prompt(workflow, object_info)
    if world_settings:
        apply_world_settings(prompt, object_info)
    if checkpoint_name:
        for node_id in (n for kind in CHECKPOINT_LOADERS for n in nodes_of_type(prompt, kind)):
            prompt[node_id]["inputs"]["ckpt_name"] = checkpoint_name
    return apply_overrides(prompt, list(overrides), object_info)


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
                      timeout: float = 1800.0, world_settings: bool | None = None) -> tuple[RunResult, list[Path]]:
    """Run one workflow file; node ids of the overrides are checked from the file before the
    (slow) server start, input names right after it, before anything is queued.

    `world_settings` None: on when the checkpoint is the shapes-world model (the default one).
    """
    workflow = load_workflow(workflow_path)
    problems = check_overrides(workflow, list(overrides))
    if problems:
        raise WorkflowFormatError("\n".join(problems))
    server = prepare_server(checkpoint, input_dir)
    try:
        server.start()
        name = Path(checkpoint).name if checkpoint else None
        if world_settings is None:
            world_settings = name is None or name == default_checkpoint().name
        prompt = build_prompt(server, workflow, overrides, checkpoint_name=name, world_settings=world_settings)
        for set_name, folder in input_set_names(prompt, input_dir).items():  # before anything is queued
            server.add_input(folder, set_name)
        result = server.run(prompt, timeout=timeout, workflow=workflow)
        return result, collect_outputs(server, result, out_dir)
    finally:
        server.cleanup()
