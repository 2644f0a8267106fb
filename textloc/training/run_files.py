"""Where one training run's files go, chosen so that nothing earlier is ever overwritten.

- K/V deltas: `output/loras/textual_localization/<run>.safetensors` (ComfyUI already lists
  output/loras for the stock LoRA loaders);
- token embeddings: `output/embeddings/<token>.safetensors` (the pack adds that folder to the
  embedding search path, so `embedding:<token>` works in any prompt);
- everything else (checkpoints, loss history, workflow, attention pictures):
  `output/textual_localization/<run>/`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import TLInputError
from ..weights.files import has_checkpoint_to_resume, latest_checkpoint, repair_checkpoints

PACK_FOLDER = "textual_localization"
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
    def embeddings_dir(self) -> Path:
        return self.output_dir / "embeddings"

    def embedding_path(self, token: str) -> Path:
        return self.embeddings_dir / f"{token}.safetensors"

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
        return self.kv_path.exists() or self.run_dir.exists()


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
