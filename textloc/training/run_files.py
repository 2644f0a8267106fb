"""Where one training run's files go, chosen so that nothing earlier is ever overwritten.

- K/V deltas: `output/loras/textual_localization/<run>.safetensors` (ComfyUI already lists
  output/loras for the stock LoRA loaders);
- token embeddings: `output/embeddings/<run>/<token>.safetensors` (the pack adds output/embeddings to
  the embedding search path, so `embedding:<run>/<token>` works in any prompt). The run's name is part
  of the path because a token name is shared by every run that trains it: two runs of `tl_ball` keep
  two files. Only on request (TL Training Options' `embedding_name`) is the token also written as
  `output/embeddings/<token>.safetensors`, replacing what an earlier run wrote there; older runs
  wrote only that file, and Apply still reads it;
- everything else (checkpoints, loss history, workflow, attention pictures):
  `output/textual_localization/<run>/`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..config import EMBEDDING_SHARED
from ..errors import TLInputError
from ..weights.files import (
    FORMAT_NAME,
    META_FORMAT,
    has_checkpoint_to_resume,
    latest_checkpoint,
    read_metadata,
    repair_checkpoints,
)

# What ComfyUI's embedding lookup (comfy/sd1_clip.py, load_embed) tries after the name itself, in its order.
EMBEDDING_SUFFIXES = (".safetensors", ".pt", ".bin")
PACK_FOLDER = "textual_localization"
EMBEDDINGS_FOLDER = "embeddings"
SAFETENSORS = ".safetensors"
RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,79}$")


@dataclass(frozen=True)
class RunFiles:
    name: str
    output_dir: Path

    @property
    def run_dir(self) -> Path:
        return self.output_dir / PACK_FOLDER / self.name

    @property
    def checkpoints_dir(self) -> Path:
        return self.run_dir / "checkpoints"

    @property
    def kv_path(self) -> Path:
        return self.output_dir / "loras" / PACK_FOLDER / f"{self.name}.safetensors"

    @property
    def kv_lora_name(self) -> str:
        """The name the stock LoraLoaderModelOnly shows for the K/V file."""
        return f"{PACK_FOLDER}/{self.name}.safetensors"

    @property
    def embeddings_root(self) -> Path:
        """output/embeddings: the folder the pack adds to ComfyUI's embedding search path."""
        return self.output_dir / EMBEDDINGS_FOLDER

    @property
    def embeddings_dir(self) -> Path:
        """This run's own token files: no other run writes here."""
        return self.embeddings_root / self.name

    def embedding_path(self, token: str) -> Path:
        return self.embeddings_dir / f"{token}{SAFETENSORS}"

    def embedding_name(self, token: str) -> str:
        """What follows `embedding:` in a prompt for this run's token file, e.g. `tl_ball_run/tl_ball`."""
        return f"{self.name}/{token}"

    def shared_embedding_path(self, token: str) -> Path:
        """`output/embeddings/<token>.safetensors`: `embedding:<token>`, the file any run of the token may own."""
        return self.embeddings_root / f"{token}{SAFETENSORS}"

    @property
    def run_embeddings_dir(self) -> Path:
        return self.run_dir / "embeddings"

    @property
    def loss_path(self) -> Path:
        return self.run_dir / "loss_history.json"

    @property
    def workflow_path(self) -> Path:
        return self.run_dir / "workflow.json"

    @property
    def attention_dir(self) -> Path:
        return self.run_dir / "attention"

    def has_results(self) -> bool:
        return self.kv_path.exists() or self.run_dir.exists() or self.embeddings_dir.exists()


def resumable_runs(output_dir: Path) -> list[str]:
    """Names of the runs under output/textual_localization/ that have a checkpoint to resume from,
    including a run killed between the two renames of a checkpoint (resuming it repairs that first)."""
    root = Path(output_dir) / PACK_FOLDER
    if not root.is_dir():
        return []
    return sorted(child.name for child in root.iterdir()
                  if child.is_dir() and has_checkpoint_to_resume(RunFiles(child.name, output_dir).checkpoints_dir))


def plan_run(output_dir: Path, name: str, resume: bool) -> tuple[RunFiles, Path | None]:
    """The run to write, and the checkpoint to resume from (None for a fresh start).

    resume=True continues `name` from its latest complete checkpoint (after repairing what a kill
    while saving one left) and refuses a name without one (a typo would otherwise silently start a
    fresh run); resume=False never touches an existing run: it picks `name_2`, `name_3`, ...
    """
    if not RUN_NAME.match(name):
        raise TLInputError("output_name", f"'{name}' is not a usable run name.",
                           "use letters, digits, '_', '-' or '.', e.g. tl_ball_run.")
    run = RunFiles(name, output_dir)
    if resume:
        repair_checkpoints(run.checkpoints_dir)  # a run killed while saving a checkpoint
        checkpoint = latest_checkpoint(run.checkpoints_dir)
        if checkpoint is None:
            runs = resumable_runs(output_dir)
            listed = ", ".join(runs) if runs else "none"
            problem = (f"run '{name}' has no checkpoint to resume (it stopped before its first one)"
                       if run.run_dir.is_dir() else f"no run named '{name}' to resume")
            raise TLInputError(
                "output_name",
                f"{problem}; runs that exist: {listed} (in {run.run_dir.parent}).",
                "turn resume off to start a new run"
                + (", or set output_name to one of those names." if runs else "."),
            )
        return run, checkpoint
    counter = 2
    while run.has_results():
        run = RunFiles(f"{name}_{counter}", output_dir)
        counter += 1
    return run, None


def prompt_embedding_name(run: RunFiles, token: str, embedding_name: str) -> str:
    """What follows `embedding:` in prompts for `token` of `run`, per TL Training Options' embedding_name."""
    return token if embedding_name == EMBEDDING_SHARED else run.embedding_name(token)


def _same_folder(a: Path, b: Path) -> bool:
    return os.path.normcase(os.path.abspath(a)) == os.path.normcase(os.path.abspath(b))


def _file_found_before(name: str, search_folders: Sequence[Path], own_folder: Path) -> Path | None:
    """The file ComfyUI would read for `embedding:<name>` from a folder it searches before `own_folder`."""
    for folder in search_folders:
        if _same_folder(folder, own_folder):
            return None
        for candidate in (name, *(name + suffix for suffix in EMBEDDING_SUFFIXES)):
            path = Path(folder) / candidate
            if path.is_file():
                return path
    return None


def _written_by_this_pack(path: Path) -> bool:
    try:
        return read_metadata(path).get(META_FORMAT) == FORMAT_NAME
    except (OSError, ValueError):  # TLInputError is a ValueError: unreadable means not ours
        return False


def check_embedding_names(run: RunFiles, tokens: Sequence[str], embedding_name: str,
                          search_folders: Sequence[Path]) -> None:
    """Refuse, before training, a token name that would not mean this run's token in a prompt.

    `search_folders` are ComfyUI's embeddings folders in search order: a file under the same name in a
    folder searched before output/embeddings (e.g. models/embeddings/tl_ball.safetensors) is what
    `embedding:tl_ball` would read. With "token (overwrite)", output/embeddings/<token>.safetensors is
    replaced only when an earlier run of this pack wrote it: any other file there is the user's own.
    """
    for token in tokens:
        name = prompt_embedding_name(run, token, embedding_name)
        shadow = _file_found_before(name, search_folders, run.embeddings_root)
        if shadow is not None:
            shared = embedding_name == EMBEDDING_SHARED
            raise TLInputError(
                "embedding_name" if shared else "output_name",
                f"{shadow} comes before {run.embeddings_root} in ComfyUI's embedding folders, so "
                f"'embedding:{name}' would read that file instead of this run's token.",
                (f"set embedding_name to run/token (type embedding:{run.embedding_name(token)}), or rename "
                 "the token or that file." if shared else "choose another output_name, or move that folder."),
            )
        if embedding_name == EMBEDDING_SHARED:
            shared_path = run.shared_embedding_path(token)
            if shared_path.exists() and not _written_by_this_pack(shared_path):
                raise TLInputError(
                    "embedding_name",
                    f"{shared_path} was not written by a training run of this pack (or cannot be read), so "
                    "it is never overwritten.",
                    f"set embedding_name to run/token (type embedding:{run.embedding_name(token)}), or move "
                    "that file away.",
                )
