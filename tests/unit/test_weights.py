"""The trainer's files: key spelling, dtypes, metadata, atomic writes, resume checkpoints, bad files."""

from __future__ import annotations

import json
import os
import pickle
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import textloc
from textloc.errors import TLInputError
from textloc.training.run_files import RunFiles, plan_run, resumable_runs
from textloc.weights import files as weights

KEY_K = "diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"
KEY_V = "diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_v.weight"


def _deltas(seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {KEY_K: torch.randn(320, 768, generator=gen), KEY_V: torch.randn(320, 768, generator=gen)}


def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# ---------------------------------------------------------------------------------------------- K/V files


def test_kv_file_uses_stock_diff_key_spelling_and_fp16(tmp_path: Path) -> None:
    path = tmp_path / "kv.safetensors"
    weights.save_kv_deltas(path, _deltas(), weights.build_metadata(steps=10))
    raw = load_file(str(path))
    assert sorted(raw) == [
        "diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.diff",
        "diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_v.diff",
    ]
    assert all(t.dtype == torch.float16 for t in raw.values())


def test_kv_round_trip_keys_values_and_metadata(tmp_path: Path) -> None:
    path = tmp_path / "kv.safetensors"
    deltas = _deltas()
    weights.save_kv_deltas(path, deltas, weights.build_metadata(base_model_family="sd15"), dtype=torch.float32)
    loaded, meta = weights.load_kv_deltas(path)
    assert set(loaded) == set(deltas)
    assert all(torch.equal(loaded[k], deltas[k]) for k in deltas)
    assert meta[weights.META_FAMILY] == "sd15"
    assert meta[weights.META_KIND] == weights.KIND_KV


def test_kv_key_mapping_rejects_other_keys() -> None:
    assert weights.kv_model_key(weights.kv_file_key(KEY_K)) == KEY_K
    with pytest.raises(ValueError):
        weights.kv_file_key("input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight")
    with pytest.raises(ValueError):
        weights.kv_file_key("diffusion_model.x.bias")


def test_metadata_values_are_strings_with_versions() -> None:
    meta = weights.build_metadata(
        tokens=["<new1>", "<new2>"], class_words=["bucket", "doll"], guidance="soft", attn_weight=1.0,
        steps=250, lr=1e-5, resolution=512, seed=7, base_model_family="sd15", base_hash="ab12",
    )
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items())
    assert meta[weights.META_PACK_VERSION] == textloc.__version__
    assert meta[weights.META_FORMAT_VERSION] == weights.FORMAT_VERSION
    assert meta["guidance"] == "soft"
    assert json.loads(meta["tokens"]) == ["<new1>", "<new2>"]
    assert weights.metadata_value(meta, "lr") == 1e-5
    assert weights.metadata_value(meta, "steps") == 250
    assert weights.metadata_value(meta, "missing", "d") == "d"


def test_non_string_metadata_is_refused(tmp_path: Path) -> None:
    with pytest.raises(TypeError):
        weights.save_kv_deltas(tmp_path / "kv.safetensors", _deltas(), {"steps": 10})  # type: ignore[dict-item]


def test_kv_base_hash_is_order_and_dtype_independent() -> None:
    base = _deltas(1)
    reordered = {KEY_V: base[KEY_V], KEY_K: base[KEY_K]}
    assert weights.kv_base_hash(base) == weights.kv_base_hash(reordered)
    half = {k: v.half() for k, v in base.items()}
    assert weights.kv_base_hash(half) == weights.kv_base_hash({k: v.float() for k, v in half.items()})
    changed = dict(base)
    changed[KEY_K] = base[KEY_K].clone()
    changed[KEY_K][0, 0] += 1
    assert weights.kv_base_hash(changed) != weights.kv_base_hash(base)
    assert len(weights.kv_base_hash(base)) == 64


def test_shape_check_names_both_shapes_and_families() -> None:
    sdxl_like = {KEY_K: torch.zeros(320, 2048)}
    with pytest.raises(TLInputError) as err:
        weights.check_kv_deltas_match(
            sdxl_like, {KEY_K: (320, 768)}, {weights.META_FAMILY: "sdxl"}, "kv.safetensors", model_family="sd15"
        )
    text = str(err.value)
    assert "(320, 2048)" in text and "(320, 768)" in text and "sdxl" in text and "sd15" in text


def test_shape_check_refuses_layers_the_model_lacks() -> None:
    with pytest.raises(TLInputError, match="does not have"):
        weights.check_kv_deltas_match(_deltas(), {KEY_K: (320, 768)}, {}, "kv.safetensors")
    weights.check_kv_deltas_match(_deltas(), {KEY_K: (320, 768), KEY_V: (320, 768)}, {}, "kv.safetensors")


# ---------------------------------------------------------------------------------------------- embeddings


def test_embedding_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "tok.safetensors"
    vec = {"clip_l": torch.randn(1, 768), "clip_g": torch.randn(1, 1280)}
    weights.save_embedding(path, vec, weights.build_metadata(token="<new1>"))
    loaded, meta = weights.load_embedding(path)
    assert set(loaded) == {"clip_l", "clip_g"}
    assert all(torch.equal(loaded[k], vec[k]) for k in vec)
    assert loaded["clip_l"].dtype == torch.float32
    assert meta["token"] == "<new1>" and meta[weights.META_KIND] == weights.KIND_EMBEDDING


def test_embedding_vector_is_stored_as_rows(tmp_path: Path) -> None:
    path = tmp_path / "tok.safetensors"
    weights.save_embedding(path, {"clip_l": torch.randn(768)}, {})
    assert load_file(str(path))["clip_l"].shape == (1, 768)


# ---------------------------------------------------------------------------------------------- atomic writes


def test_failed_write_keeps_old_file_and_leaves_no_temp(tmp_path: Path) -> None:
    path = tmp_path / "kv.safetensors"
    weights.save_kv_deltas(path, _deltas(), {})
    before = path.read_bytes()
    bad = {KEY_K: "not a tensor"}
    with pytest.raises(AttributeError):
        weights.save_kv_deltas(path, bad, {})  # type: ignore[arg-type]
    assert path.read_bytes() == before
    assert _files(tmp_path) == ["kv.safetensors"]


def test_atomic_path_discards_a_half_written_file(tmp_path: Path) -> None:
    path = tmp_path / "out.safetensors"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with weights._atomic_path(path) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("cancelled midway")
    assert path.read_bytes() == b"old"
    assert _files(tmp_path) == ["out.safetensors"]


def test_successful_write_leaves_only_the_file(tmp_path: Path) -> None:
    weights.save_embedding(tmp_path / "e.safetensors", {"clip_l": torch.zeros(1, 8)}, {})
    assert _files(tmp_path) == ["e.safetensors"]


def test_writing_a_file_again_removes_its_killed_writes_and_nothing_else(tmp_path: Path) -> None:
    """A SIGKILL skips `_atomic_path`'s clean-up: its half-written temporary must not stay forever."""
    killed = tmp_path / ".kv.safetensors.0123abcd.tmp"
    killed.write_bytes(b"half a file")
    others = [".other.safetensors.0123abcd.tmp", ".kv.safetensors.notes.tmp", "kv.safetensors.0123abcd.tmp"]
    for name in others:
        (tmp_path / name).write_bytes(b"not ours")
    weights.save_kv_deltas(tmp_path / "kv.safetensors", _deltas(), {})
    assert _files(tmp_path) == sorted(["kv.safetensors", *others])
    weights.atomic_write_text(tmp_path / "notes.txt", "x")  # another file's write touches none of them
    assert _files(tmp_path) == sorted(["kv.safetensors", "notes.txt", *others])


# ---------------------------------------------------------------------------------------------- bad files


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(TLInputError, match="does not exist"):
        weights.load_kv_deltas(tmp_path / "nope.safetensors")


def test_pickle_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "weights.pt"
    path.write_bytes(pickle.dumps({"a": [1, 2, 3]}))
    with pytest.raises(TLInputError, match="is not a safetensors file; only safetensors are loaded, never pickle"):
        weights.load_kv_deltas(path)


def test_torch_zip_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "weights.pt"
    torch.save({"a": torch.zeros(3)}, path)
    with pytest.raises(TLInputError, match="never pickle"):
        weights.load_embedding(path)


def test_random_bytes_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "noise.safetensors"
    path.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(TLInputError, match="not a safetensors file"):
        weights.load_kv_deltas(path)


def test_tiny_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "empty.safetensors"
    path.write_bytes(b"")
    with pytest.raises(TLInputError, match="not a safetensors file"):
        weights.load_embedding(path)


def test_truncated_file_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "kv.safetensors"
    weights.save_kv_deltas(path, _deltas(), {})
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(TLInputError, match="truncated"):
        weights.load_kv_deltas(path)
    (header_len,) = struct.unpack("<Q", data[:8])
    path.write_bytes(data[: 8 + header_len // 2])
    with pytest.raises(TLInputError, match="truncated"):
        weights.load_kv_deltas(path)


def test_corrupt_header_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "kv.safetensors"
    header = b"{not json!"
    path.write_bytes(struct.pack("<Q", len(header)) + header)
    with pytest.raises(TLInputError, match="corrupt"):
        weights.load_kv_deltas(path)


def test_kv_loader_refuses_an_embedding_file(tmp_path: Path) -> None:
    path = tmp_path / "tok.safetensors"
    weights.save_embedding(path, {"clip_l": torch.zeros(1, 768)}, {})
    with pytest.raises(TLInputError, match="not a K/V delta"):
        weights.load_kv_deltas(path)


def test_folder_instead_of_file(tmp_path: Path) -> None:
    with pytest.raises(TLInputError, match="folder"):
        weights.load_embedding(tmp_path)


def _with(value: float) -> torch.Tensor:
    tensor = torch.zeros(320, 768)
    tensor[3, 5] = value
    return tensor


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_kv_and_embedding_files_are_refused_naming_the_file(tmp_path: Path, value: float) -> None:
    kv = tmp_path / "kv.safetensors"
    save_file({"diffusion_model.a.diff": _with(value).half()}, str(kv))  # written by someone else
    with pytest.raises(TLInputError) as caught:
        weights.load_kv_deltas(kv)
    assert caught.value.what == str(kv)
    assert "tensor 'diffusion_model.a.diff' holds 1 NaN or infinite value(s)" in str(caught.value)
    assert "train the weights again" in caught.value.fix and "pick another file" in caught.value.fix
    embedding = tmp_path / "tl_ball.safetensors"
    save_file({"clip_l": _with(value)[3:4]}, str(embedding))
    with pytest.raises(TLInputError, match="NaN or infinite.*Fix: train the weights again") as caught:
        weights.load_embedding(embedding)
    assert caught.value.what == str(embedding)


def test_the_writers_never_write_non_finite_weights(tmp_path: Path) -> None:
    path = tmp_path / "kv.safetensors"
    with pytest.raises(ValueError, match="NaN or infinite"):
        weights.save_kv_deltas(path, {KEY_K: _with(float("nan"))}, {})
    with pytest.raises(ValueError, match="NaN or infinite"):  # finite in fp32, inf in the fp16 file
        weights.save_kv_deltas(path, {KEY_K: _with(1e6)}, {}, dtype=torch.float16)
    with pytest.raises(ValueError, match="NaN or infinite"):
        weights.save_embedding(tmp_path / "e.safetensors", {"clip_l": _with(float("inf"))[3:4]}, {})
    assert _files(tmp_path) == []


# ---------------------------------------------------------------------------------------------- checkpoints


class _Run:
    """A small training run: two Linear weights stand in for K/V deltas, one vector for a token."""

    def __init__(self) -> None:
        torch.manual_seed(0)
        self.gen = torch.Generator().manual_seed(123)
        self.k = torch.nn.Parameter(torch.zeros(4, 3))
        self.v = torch.nn.Parameter(torch.zeros(4, 3))
        self.token = torch.nn.Parameter(torch.randn(1, 3))
        self.names = [KEY_K, KEY_V, "token.<new1>.clip_l"]
        self.opt = torch.optim.AdamW(
            [{"params": [self.k, self.v], "lr": 1e-2}, {"params": [self.token], "lr": 5e-3, "weight_decay": 0.0}]
        )
        self.linear = torch.nn.Linear(3, 4)
        self.history: list[dict] = []

    def step(self) -> None:
        x = torch.randn(8, 3, generator=self.gen) + torch.randn(8, 3)  # both RNG streams matter
        w = self.linear.weight + self.k + self.v * 0.5
        loss = (x @ w.T + self.token @ w.T).square().mean()
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        self.history.append({"step": len(self.history), "loss": float(loss.detach())})

    def params(self) -> list[torch.Tensor]:
        return [self.k.detach().clone(), self.v.detach().clone(), self.token.detach().clone()]

    def save(self, folder: Path, step: int) -> Path:
        return weights.save_training_checkpoint(
            folder, step, {KEY_K: self.k, KEY_V: self.v}, {"<new1>": {"clip_l": self.token}}, self.opt,
            self.names, weights.capture_rng({"noise": self.gen}), weights.build_metadata(steps=10), self.history,
        )


def test_resume_is_bit_identical(tmp_path: Path) -> None:
    straight = _Run()
    for _ in range(6):
        straight.step()

    first = _Run()
    for _ in range(3):
        first.step()
    folder = first.save(tmp_path, 3)

    torch.manual_seed(999)  # a fresh process would start from other RNG states
    resumed = _Run()
    resumed.gen.manual_seed(5)
    ckpt = weights.load_training_checkpoint(folder)
    with torch.no_grad():
        resumed.k.copy_(ckpt.kv_deltas[KEY_K])
        resumed.v.copy_(ckpt.kv_deltas[KEY_V])
        resumed.token.copy_(ckpt.token_vectors["<new1>"]["clip_l"])
    weights.restore_optimizer(resumed.opt, ckpt, resumed.names)
    weights.restore_rng(ckpt.rng, {"noise": resumed.gen})
    resumed.history = list(ckpt.loss_history)
    for _ in range(3):
        resumed.step()

    for a, b in zip(straight.params(), resumed.params(), strict=True):
        assert torch.equal(a, b)
    assert resumed.history == straight.history


def test_checkpoint_folder_layout_and_contents(tmp_path: Path) -> None:
    run = _Run()
    run.step()
    folder = run.save(tmp_path, 1)
    assert folder.name == "checkpoint-000001"
    assert _files(tmp_path) == ["checkpoint-000001"]
    assert _files(folder) == ["embeddings", "kv_deltas.safetensors", "trainer_state.safetensors"]
    ckpt = weights.load_training_checkpoint(folder)
    assert ckpt.step == 1
    assert ckpt.param_names == run.names
    assert ckpt.kv_deltas[KEY_K].dtype == torch.float32
    assert torch.equal(ckpt.kv_deltas[KEY_K], run.k.detach())
    assert ckpt.metadata["steps"] == "10"
    assert ckpt.loss_history == run.history
    assert set(ckpt.optimizer_state[KEY_K]) == {"step", "exp_avg", "exp_avg_sq"}
    assert ckpt.param_groups[1]["params"] == ["token.<new1>.clip_l"]
    assert "torch_cpu" in ckpt.rng and "generator.noise" in ckpt.rng
    # the token's vectors are also a normal embedding file
    (emb_file,) = (folder / "embeddings").iterdir()
    assert set(weights.load_embedding(emb_file)[0]) == {"clip_l"}


def test_resaving_a_step_replaces_it(tmp_path: Path) -> None:
    run = _Run()
    run.step()
    run.save(tmp_path, 1)
    run.step()
    folder = run.save(tmp_path, 1)
    assert _files(tmp_path) == ["checkpoint-000001"]
    assert torch.equal(weights.load_training_checkpoint(folder).kv_deltas[KEY_K], run.k.detach())


def test_failed_checkpoint_leaves_no_folder(tmp_path: Path) -> None:
    run = _Run()
    run.step()
    with pytest.raises(ValueError):
        weights.save_training_checkpoint(
            tmp_path, 2, {KEY_K: run.k}, {}, run.opt, ["only-one-name"], {}, {}, []
        )
    assert _files(tmp_path) == []


def test_latest_checkpoint_ignores_unfinished_folders(tmp_path: Path) -> None:
    assert weights.latest_checkpoint(tmp_path / "missing") is None
    assert weights.latest_checkpoint(tmp_path) is None
    run = _Run()
    run.step()
    run.save(tmp_path, 5)
    run.save(tmp_path, 20)
    (tmp_path / "checkpoint-000030.tmp").mkdir()
    (tmp_path / "checkpoint-000040").mkdir()  # no trainer state: incomplete
    (tmp_path / "notes.txt").write_text("x")
    assert weights.latest_checkpoint(tmp_path) == tmp_path / "checkpoint-000020"


def _killed_between_the_renames(folder: Path, new_is_complete: bool) -> tuple[_Run, torch.Tensor, torch.Tensor]:
    """What a kill while re-saving step 5 leaves: the old folder moved aside, the new one not yet in place."""
    run = _Run()
    run.step()
    run.save(folder, 5)
    old_k = run.k.detach().clone()
    run.step()
    new_folder = run.save(folder / "elsewhere", 5)
    new_k = run.k.detach().clone()
    os.replace(folder / "checkpoint-000005", folder / "checkpoint-000005.old.tmp")
    os.replace(new_folder, folder / "checkpoint-000005.tmp")
    (folder / "elsewhere").rmdir()
    if not new_is_complete:
        (folder / "checkpoint-000005.tmp" / weights.STATE_FILE).unlink()
    return run, old_k, new_k


@pytest.mark.parametrize("new_is_complete", [True, False])
def test_a_kill_between_the_renames_of_a_resaved_step_is_repaired(tmp_path: Path, new_is_complete: bool) -> None:
    _, old_k, new_k = _killed_between_the_renames(tmp_path, new_is_complete)
    assert weights.latest_checkpoint(tmp_path) is None  # neither folder under the step's name
    weights.repair_checkpoints(tmp_path)
    assert _files(tmp_path) == ["checkpoint-000005"]
    kept = weights.load_training_checkpoint(tmp_path / "checkpoint-000005").kv_deltas[KEY_K]
    assert torch.equal(kept, new_k if new_is_complete else old_k)


def test_saving_a_checkpoint_removes_the_unfinished_folders_of_a_killed_save(tmp_path: Path) -> None:
    run = _Run()
    run.step()
    run.save(tmp_path, 2)
    (tmp_path / "checkpoint-000004.tmp" / "embeddings").mkdir(parents=True)  # killed mid-save
    (tmp_path / "checkpoint-000004.tmp" / ".trainer_state.safetensors.0123abcd.tmp").write_bytes(b"half")
    run.save(tmp_path, 6)
    assert _files(tmp_path) == ["checkpoint-000002", "checkpoint-000006"]


def test_resume_repairs_its_own_run_only(tmp_path: Path) -> None:
    """plan_run(resume=True) picks the last complete checkpoint after cleaning up its run's killed save."""
    folders = {}
    for name in ("killed", "other"):
        folders[name] = RunFiles(name, tmp_path).checkpoints_dir
        folders[name].mkdir(parents=True)
        _killed_between_the_renames(folders[name], new_is_complete=False)
        (folders[name] / "checkpoint-000009.tmp").mkdir()  # killed before its trainer state
    run, checkpoint = plan_run(tmp_path, "killed", resume=True)
    assert run.name == "killed" and checkpoint == folders["killed"] / "checkpoint-000005"
    assert _files(folders["killed"]) == ["checkpoint-000005"]
    assert _files(folders["other"]) == ["checkpoint-000005.old.tmp", "checkpoint-000005.tmp",
                                        "checkpoint-000009.tmp"]


@pytest.mark.parametrize("new_is_complete", [True, False])
def test_a_run_killed_between_the_renames_is_listed_as_resumable_before_it_is_resumed(
        tmp_path: Path, new_is_complete: bool) -> None:
    """Its step has no folder under its own name until resume repairs it, yet resuming it works."""
    killed = RunFiles("killed", tmp_path).checkpoints_dir
    killed.mkdir(parents=True)
    _killed_between_the_renames(killed, new_is_complete)
    unfinished = RunFiles("unfinished", tmp_path).checkpoints_dir
    (unfinished / "checkpoint-000003.tmp").mkdir(parents=True)  # killed in its first save: nothing to resume
    before = _files(killed)
    assert resumable_runs(tmp_path) == ["killed"]
    assert _files(killed) == before  # listing moves nothing (a training may be writing that folder)
    with pytest.raises(TLInputError, match="runs that exist: killed "):
        plan_run(tmp_path, "kiled", resume=True)
    assert plan_run(tmp_path, "killed", resume=True)[1] == killed / "checkpoint-000005"


@pytest.fixture()
def disk_log(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, tuple[int, int], Path | None]]:
    """Every fsync and os.replace, in order, with the inode each one concerns (the real calls still run).

    Inodes survive renames, so a flush of a temporary file or folder can be matched to its final name.
    """
    log: list[tuple[str, tuple[int, int], Path | None]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        stat = os.fstat(fd)
        log.append(("fsync", (stat.st_dev, stat.st_ino), None))
        real_fsync(fd)

    def replace(src: str | os.PathLike[str], dst: str | os.PathLike[str], **kwargs: object) -> None:
        stat = os.stat(src)
        log.append(("replace", (stat.st_dev, stat.st_ino), Path(dst)))
        real_replace(src, dst, **kwargs)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    return log


def _inode(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_dev, stat.st_ino


def _final_rename(log: list[tuple[str, tuple[int, int], Path | None]], final: Path) -> int:
    (index,) = [i for i, (kind, _, dst) in enumerate(log) if kind == "replace" and dst == final]
    return index


def _flushed(log: list[tuple[str, tuple[int, int], Path | None]], start: int, stop: int) -> set[tuple[int, int]]:
    return {inode for kind, inode, _ in log[start:stop] if kind == "fsync"}


@pytest.mark.skipif(os.name == "nt", reason="folders are not flushed on Windows (NTFS journals renames)")
def test_a_weights_file_is_on_the_disk_before_its_final_name_and_the_name_after(
        tmp_path: Path, disk_log: list) -> None:
    """A power cut then leaves the old file or the complete new one, never a name without its data."""
    path = tmp_path / "loras" / "run.safetensors"
    for _ in range(2):  # the first write, then a replacement
        disk_log.clear()
        weights.save_kv_deltas(path, _deltas(), weights.build_metadata(steps=1))
        rename = _final_rename(disk_log, path)
        assert _inode(path) in _flushed(disk_log, 0, rename)
        assert _inode(path.parent) in _flushed(disk_log, rename + 1, len(disk_log))


@pytest.mark.skipif(os.name == "nt", reason="folders are not flushed on Windows (NTFS journals renames)")
def test_a_checkpoint_is_on_the_disk_before_its_final_name_and_the_name_after(
        tmp_path: Path, disk_log: list) -> None:
    run = _Run()
    run.step()
    for _ in range(2):  # a new step, then the same step saved again (the old folder is moved aside)
        disk_log.clear()
        folder = run.save(tmp_path, 1)
        rename = _final_rename(disk_log, folder)
        written = [folder, *folder.rglob("*")]  # every file and folder of the checkpoint, itself included
        assert len(written) == 5
        assert {_inode(p) for p in written} <= _flushed(disk_log, 0, rename)
        assert _inode(tmp_path) in _flushed(disk_log, rename + 1, len(disk_log))


def test_restore_optimizer_refuses_other_parameters(tmp_path: Path) -> None:
    run = _Run()
    run.step()
    ckpt = weights.load_training_checkpoint(run.save(tmp_path, 1))
    other = _Run()
    with pytest.raises(TLInputError, match="other trainable weights"):
        weights.restore_optimizer(other.opt, ckpt, [KEY_K, KEY_V, "token.<new2>.clip_l"])


def test_a_checkpoint_holding_nan_is_refused_with_the_resume_fix(tmp_path: Path) -> None:
    run = _Run()
    run.step()
    folder = run.save(tmp_path, 1)
    (emb_file,) = (folder / "embeddings").iterdir()
    clean = emb_file.read_bytes()
    save_file({"clip_l": torch.full((1, 3), float("nan"))}, str(emb_file))
    with pytest.raises(TLInputError, match="NaN or infinite.*Fix: delete this checkpoint folder") as caught:
        weights.load_training_checkpoint(folder)
    assert caught.value.what == str(emb_file)
    emb_file.write_bytes(clean)
    state = load_file(str(folder / weights.STATE_FILE))
    metadata = weights.read_metadata(folder / weights.STATE_FILE)
    state[f"optimizer.{KEY_K}.exp_avg"][0, 0] = float("inf")
    save_file(state, str(folder / weights.STATE_FILE), metadata=metadata)
    with pytest.raises(TLInputError, match="trainer_state.safetensors: tensor 'optimizer.*NaN or infinite"):
        weights.load_training_checkpoint(folder)


def test_not_a_checkpoint_folder(tmp_path: Path) -> None:
    with pytest.raises(TLInputError, match="not a training checkpoint"):
        weights.load_training_checkpoint(tmp_path)


def test_reference_file_format_is_plain_safetensors(tmp_path: Path) -> None:
    """A file written by safetensors itself loads too (no pack-specific framing)."""
    path = tmp_path / "plain.safetensors"
    save_file({"diffusion_model.a.diff": torch.ones(2, 2)}, str(path))
    deltas, meta = weights.load_kv_deltas(path)
    assert list(deltas) == ["diffusion_model.a.weight"] and meta == {}
