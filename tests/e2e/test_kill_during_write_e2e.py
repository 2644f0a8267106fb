"""A kill at the worst moment: SIGKILL the real server halfway through writing a checkpoint, then the final weights.

The moment is made exact, not raced: the servers that get killed start with `kill_hook/` on PYTHONPATH,
whose sitecustomize makes the first `safetensors.torch.save_file` to a chosen path write half its bytes,
drop a marker and sleep. The test waits for the marker, checks that the half-written `.tmp` is really
there, and SIGKILLs the server's process group. Then a fresh server on the same folders must show that
every finished-looking file loads, that no partial file reaches Apply's list or passes for a checkpoint,
and that resume continues from the last complete checkpoint and writes the final files.

Three server starts: A is killed saving a checkpoint; B checks scenario 1, resumes it, and is killed
writing the final K/V file of a second run; C checks scenario 2, resumes it and applies its weights.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from test_training_e2e import _picture, _sample, _train_prompt  # the training prompt the other e2e tests use

from headless.paths import WORKFLOWS_DIR
from headless.server import ComfyServer
from headless.workflow import load_workflow, nodes_of_type, to_api_prompt
from headless.world_settings import apply_world_settings
from shapes_world.model import CHECKPOINT_NAME
from textloc.errors import TLInputError
from textloc.training.run_files import RunFiles
from textloc.weights.files import (
    KIND_EMBEDDING,
    KIND_KV,
    KIND_TRAINER_STATE,
    META_KIND,
    STATE_FILE,
    TMP_SUFFIX,
    checkpoint_dir_name,
    latest_checkpoint,
    load_embedding,
    load_kv_deltas,
    load_training_checkpoint,
    read_metadata,
)

HOOK_DIR = Path(__file__).parent / "kill_hook"
STEPS, EVERY = 4, 2  # checkpoints at steps 2 and 4
STEP_EVENT = "textloc.train.step"
NONE = "none"


# ---------------------------------------------------------------------------------------------- servers


@pytest.fixture()
def start_server(world_checkpoint: Path, tmp_path: Path) -> Iterator[Callable[..., ComfyServer]]:
    """Starts servers on one base folder (so each sees the files of the one before); kills them all at the end."""
    started: list[ComfyServer] = []

    def start(kill_at: str = "", marker: Path | None = None) -> ComfyServer:
        env: dict[str, str] = {}
        if kill_at:
            assert marker is not None
            env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(HOOK_DIR), os.environ.get("PYTHONPATH")])),
                   "TL_KILL_HOOK_GLOB": kill_at, "TL_KILL_HOOK_MARKER": str(marker)}
        server = ComfyServer(base_dir=tmp_path / "base", env=env)
        server.add_checkpoint(world_checkpoint)  # the photos are the pack's sample set "[sample] shapes_pair"
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.kill()


def _training(server: ComfyServer, name: str, token: str, resume: bool = False,
              steps: int = STEPS) -> dict[str, Any]:
    """tl_train.json as the other e2e tests run it, without class images: STEPS steps, a checkpoint every EVERY."""
    info = server.object_info()

    def workflow_prompt(file: str) -> dict[str, Any]:  # as conftest's fixture builds it, for this server
        return apply_world_settings(to_api_prompt(load_workflow(WORKFLOWS_DIR / file), info), info)

    prompt, _ = _train_prompt(workflow_prompt, name, steps=steps, checkpoint_every=EVERY, resume=resume)
    (target,) = nodes_of_type(prompt, "TL_MaskTarget")
    prompt[target]["inputs"]["token"] = token
    prompt[target]["inputs"].pop("class_images", None)  # no prior images: half the work per step, no sampler run
    return prompt


def _train_until_killed(server: ComfyServer, prompt: dict[str, Any], marker: Path) -> tuple[Path, list[dict]]:
    """Queue a training, wait until the hook froze the server halfway through its write, SIGKILL it.

    Returns the half-written file and the training's step events up to then.
    """
    steps: list[dict] = []
    outcome: list[str] = []

    def follow() -> None:
        try:
            server.run(prompt, timeout=600, on_event=lambda e: steps.append(e["data"])
                       if e["type"] == STEP_EVENT else None)
            outcome.append("the training finished")
        except Exception as err:  # the connection dies with the server
            outcome.append(f"{type(err).__name__}: {err}")

    thread = threading.Thread(target=follow, daemon=True)
    thread.start()
    deadline = time.monotonic() + 300
    while not marker.exists():
        assert not outcome, f"the write to kill in was never reached ({outcome[0]}):\n{server.log_tail()}"
        assert time.monotonic() < deadline, f"no write reached within 300 s:\n{server.log_tail()}"
        time.sleep(0.2)
    note = json.loads(marker.read_text())
    half = Path(note["path"])
    # Proof that the kill lands mid-write: the partial temporary is on disk, half its final size.
    assert half.name.endswith(TMP_SUFFIX) and half.stat().st_size == note["written"] < note["full_size"]
    with pytest.raises(TLInputError, match="truncated or corrupt"):
        read_metadata(half)
    server.kill()
    thread.join(30)
    return half, steps


# ---------------------------------------------------------------------------------------------- checks


def _has_tmp_part(path: Path, root: Path) -> bool:
    """True for a temporary file and for anything inside a temporary folder (an unfinished checkpoint)."""
    return any(part.endswith(TMP_SUFFIX) for part in path.relative_to(root).parts)


def _finished_files_load(output: Path) -> list[str]:
    """Loads every safetensors file under output/ that is not (inside) a temporary, with this pack's loaders.

    Returns their paths relative to output/.
    """
    checked = []
    for path in sorted(output.rglob("*.safetensors")):
        if _has_tmp_part(path, output):
            continue
        kind = read_metadata(path).get(META_KIND)
        if kind == KIND_KV:
            tensors = load_kv_deltas(path)[0]
        elif kind == KIND_EMBEDDING:
            tensors = load_embedding(path)[0]
        elif kind == KIND_TRAINER_STATE:
            tensors = load_training_checkpoint(path.parent).kv_deltas
        else:  # a file kind this test does not know (e.g. a LoRA export): plain safetensors
            tensors = load_file(str(path))
        assert tensors and all(bool(torch.isfinite(t).all()) for t in tensors.values()), path
        checked.append(path.relative_to(output).as_posix())
    return checked


def _weights_lists(server: ComfyServer) -> tuple[list[str], list[str]]:
    """Apply TL Weights' dropdown and the stock LoRA loader's list, as the editor gets them."""
    info = server.object_info()

    def options(node: str, name: str) -> list[str]:
        spec = info[node]["input"]["required"][name]
        return list(spec[1]["options"] if spec[0] == "COMBO" else spec[0])

    return options("TL_ApplyWeights", "weights"), options("LoraLoaderModelOnly", "lora_name")


def _no_partial_listed(server: ComfyServer, expected_runs: list[str]) -> None:
    dropdown, stock = _weights_lists(server)
    assert dropdown == [NONE, *(RunFiles(name, server.output_dir).kv_lora_name for name in expected_runs)]
    assert not [name for name in stock if TMP_SUFFIX in name]


def _leftovers(output: Path) -> list[str]:
    return sorted(p.relative_to(output).as_posix() for p in output.rglob(f"*{TMP_SUFFIX}"))


# ---------------------------------------------------------------------------------------------- the test


def test_a_kill_while_writing_a_checkpoint_or_the_final_weights_loses_nothing(start_server, tmp_path: Path) -> None:
    base = tmp_path / "base"
    output = base / "output"
    first, second = RunFiles("kill_ckpt", output), RunFiles("kill_final", output)

    checkpoint_1, checkpoint_2 = checkpoint_dir_name(EVERY), checkpoint_dir_name(2 * EVERY)

    # Scenario 1: server A dies halfway through the trainer state, the last file of the 2nd checkpoint.
    marker_a = base / "killed_a.json"
    server = start_server(str(first.checkpoints_dir / f"{checkpoint_2}{TMP_SUFFIX}" / f".{STATE_FILE}.*{TMP_SUFFIX}"),
                          marker_a)
    half, killed_steps = _train_until_killed(server, _training(server, first.name, "tl_ball"), marker_a)
    assert [s["step"] for s in killed_steps] == list(range(1, 2 * EVERY))  # the last step was being saved
    assert half.parent.name == f"{checkpoint_2}{TMP_SUFFIX}"

    marker_b = base / "killed_b.json"
    server = start_server(str(second.kv_path.with_name(f".{second.kv_path.name}.*{TMP_SUFFIX}")), marker_b)
    assert _finished_files_load(output) == [
        f"textual_localization/{first.name}/checkpoints/{checkpoint_1}/{name}"
        for name in ("embeddings/00_tl_ball.safetensors", "kv_deltas.safetensors", STATE_FILE)]
    _no_partial_listed(server, [])
    assert latest_checkpoint(first.checkpoints_dir) == first.checkpoints_dir / checkpoint_1
    saved = load_training_checkpoint(first.checkpoints_dir / checkpoint_1).loss_history

    server.run(_training(server, first.name, "tl_ball", resume=True), timeout=600)
    history = json.loads(first.loss_path.read_text())["history"]
    assert [h["step"] for h in history] == list(range(1, STEPS + 1))
    assert history[:EVERY] == saved  # continued from the 1st checkpoint, not from scratch or the partial one
    for resumed, killed in zip(history[EVERY:len(killed_steps)], killed_steps[EVERY:], strict=True):
        assert resumed["total"] == pytest.approx(killed["total"], rel=1e-4)  # same weights, optimizer, RNG
    assert sorted(p.name for p in first.checkpoints_dir.iterdir()) == [
        checkpoint_dir_name(step) for step in range(EVERY, STEPS + 1, EVERY)]
    assert _leftovers(output) == []  # resuming removed the killed run's partial checkpoint

    # Scenario 2: server B dies halfway through the final K/V file of another run (its last checkpoint is saved).
    half, _ = _train_until_killed(server, _training(server, second.name, "tl_orb", steps=EVERY), marker_b)
    assert half.parent == second.kv_path.parent
    assert not second.kv_path.exists() and not second.embedding_path("tl_orb").exists()
    final_checkpoint = second.checkpoints_dir / checkpoint_dir_name(EVERY)
    assert latest_checkpoint(second.checkpoints_dir) == final_checkpoint

    server = start_server()
    finished = _finished_files_load(output)
    assert f"loras/{first.kv_lora_name}" in finished and f"loras/{second.kv_lora_name}" not in finished
    _no_partial_listed(server, [first.name])

    result = server.run(_training(server, second.name, "tl_orb", resume=True, steps=EVERY), timeout=600)
    assert not [e for e in result.events if e["type"] == STEP_EVENT]  # nothing left to train
    state = load_training_checkpoint(final_checkpoint)
    kv = load_file(str(second.kv_path))
    assert kv and all(torch.equal(kv[key.replace(".weight", ".diff")], value.half())
                      for key, value in state.kv_deltas.items())
    assert torch.equal(load_embedding(second.embedding_path("tl_orb"))[0]["clip_l"],
                       state.token_vectors["tl_orb"]["clip_l"])
    assert json.loads(second.loss_path.read_text())["history"] == state.loss_history
    assert _leftovers(output) == []  # writing the K/V file again removed the killed write's half
    _finished_files_load(output)
    _no_partial_listed(server, [first.name, second.name])

    apply = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": CHECKPOINT_NAME}},
        "2": {"class_type": "TL_ApplyWeights", "inputs": {
            "model": ["1", 0], "clip": ["1", 1], "weights": second.kv_lora_name,
            "strength_model": 1.0, "strength_token": 1.0}},
        **_sample(["2", 0], "applied", "photo of a embedding:tl_orb ball"),
    }
    apply["93"]["inputs"]["steps"] = 1
    picture = _picture(server, server.run(apply, timeout=300))
    assert picture.shape[:2] == (64, 64) and picture.std() > 0
