"""Apply TL Weights without ComfyUI: the weights list, name checks, reading files, refusals, token blending."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from textloc.errors import TLInputError
from textloc.training.run_files import RunFiles
from textloc.weights import apply
from textloc.weights.files import build_metadata, checkpoint_dir_name, save_embedding, save_kv_deltas
from textloc.weights.trained import TrainedWeights

KEY_K = "diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"
KEY_V = "diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_v.weight"


def _meta(seed: int = 42, **extra) -> dict[str, str]:
    return build_metadata(tokens=["tl_ball"], class_words=["ball"], init_words=["sks"], steps=30, seed=seed,
                          base_model_family="SD15", base_hash="abc", **extra)


def _write_run(root: Path, name: str = "run", seed: int = 42, embedding_dir: Path | None = None) -> Path:
    """K/V file in loras/textual_localization/, token in embeddings/, as the trainer lays them out."""
    meta = _meta(seed)
    kv = root / "loras" / "textual_localization" / f"{name}.safetensors"
    save_kv_deltas(kv, {KEY_K: torch.ones(320, 768), KEY_V: torch.ones(320, 768)}, meta)
    save_embedding((embedding_dir or root / "embeddings") / "tl_ball.safetensors",
                   {"clip_l": torch.full((1, 768), float(seed))}, {**meta, "token": "tl_ball"})
    return kv


def _write_current_run(root: Path, name: str, seed: int) -> Path:
    """K/V file and token as the trainer writes them now: the token in embeddings/<run>/, the run named."""
    meta = _meta(seed, run_name=name)
    run = RunFiles(name, root)
    save_kv_deltas(run.kv_path, {KEY_K: torch.ones(320, 768), KEY_V: torch.ones(320, 768)}, meta)
    save_embedding(run.embedding_path("tl_ball"), {"clip_l": torch.full((1, 768), float(seed))},
                   {**meta, "token": "tl_ball"})
    return run.kv_path


def _lookup(folder: Path):
    """A folder lookup like folder_paths.get_full_path for one folder."""

    def resolve(name: str) -> Path | None:
        path = folder / name
        return path if path.is_file() else None

    return resolve


# ---------------------------------------------------------------------------------------------- listing


def test_weights_list_shows_only_this_packs_kv_files(tmp_path: Path) -> None:
    loras = tmp_path / "loras"
    _write_run(tmp_path, "run_a")
    save_file({"lora_unet_x.lora_up.weight": torch.zeros(2, 2)}, str(loras / "other_lora.safetensors"))
    (loras / "random.safetensors").write_bytes(b"\x00" * 64)
    (loras / "old.ckpt").write_bytes(b"not looked at")
    save_embedding(loras / "token.safetensors", {"clip_l": torch.zeros(1, 768)}, _meta())  # an embedding, not K/V
    names = sorted(str(p.relative_to(loras)) for p in loras.rglob("*") if p.is_file())
    assert apply.weight_file_options(names, _lookup(loras)) == ["none", "textual_localization/run_a.safetensors"]


def test_weights_list_notices_a_file_replaced_in_place(tmp_path: Path) -> None:
    path = tmp_path / "x.safetensors"
    save_file({"a": torch.zeros(1)}, str(path))
    assert not apply.is_weights_file(path)
    save_kv_deltas(path, {KEY_K: torch.zeros(2, 2)}, _meta())
    assert apply.is_weights_file(path)


# ---------------------------------------------------------------------------------------------- names


@pytest.mark.parametrize("name", ["../secret.safetensors", "textual_localization/../../x.safetensors",
                                  "..\\x.safetensors", "/etc/passwd", "C:\\models\\x.safetensors"])
def test_names_that_leave_the_loras_folders_are_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(TLInputError, match="outside ComfyUI's loras folders") as caught:
        apply.resolve_weights_name(name, _lookup(tmp_path))
    assert caught.value.what == "weights"


def test_missing_and_non_safetensors_names_are_refused(tmp_path: Path) -> None:
    with pytest.raises(TLInputError, match="not found in ComfyUI's loras folders") as caught:
        apply.resolve_weights_name("gone.safetensors", _lookup(tmp_path), [str(tmp_path)])
    assert str(tmp_path) in str(caught.value) and "Fix:" in str(caught.value)
    (tmp_path / "weights.pt").write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(TLInputError, match="never pickle"):
        apply.resolve_weights_name("weights.pt", _lookup(tmp_path))


# ---------------------------------------------------------------------------------------------- reading


def test_a_run_reads_back_with_its_token(tmp_path: Path) -> None:
    kv = _write_run(tmp_path)
    loaded = apply.load_weights_file(kv, _lookup(tmp_path / "embeddings"), tmp_path)
    assert set(loaded.kv_deltas) == {KEY_K, KEY_V}
    assert loaded.tokens == ["tl_ball"]
    assert torch.equal(loaded.token_vectors["tl_ball"]["clip_l"], torch.full((1, 768), 42.0))
    assert loaded.embedding_paths["tl_ball"] == tmp_path / "embeddings" / "tl_ball.safetensors"
    assert apply.trigger_text(loaded) == "embedding:tl_ball ball"


def test_two_runs_of_one_token_and_an_older_run_each_read_their_own_token(tmp_path: Path) -> None:
    old = _write_run(tmp_path, "old_run", seed=1)  # embeddings/tl_ball.safetensors, as runs wrote it before
    first = _write_current_run(tmp_path, "tl_ball_run", seed=2)
    second = _write_current_run(tmp_path, "tl_ball_run_2", seed=3)
    embeddings = _lookup(tmp_path / "embeddings")
    for kv, seed, name in ((old, 1, "tl_ball"), (first, 2, "tl_ball_run/tl_ball"), (second, 3, "tl_ball_run_2/tl_ball")):
        loaded = apply.load_weights_file(kv, embeddings, tmp_path)
        assert torch.equal(loaded.token_vectors["tl_ball"]["clip_l"], torch.full((1, 768), float(seed)))
        assert loaded.embedding_paths["tl_ball"] == tmp_path / "embeddings" / f"{name}.safetensors"
        assert apply.trigger_text(loaded) == f"embedding:{name} ball"
        named = apply.by_prompt_name(loaded, loaded.token_vectors)  # what Apply's CLIP answers from memory
        assert set(named) == {"tl_ball", name} and all(v is loaded.token_vectors["tl_ball"] for v in named.values())
    stamps = apply.weights_fingerprint("textual_localization/tl_ball_run.safetensors", _lookup(tmp_path / "loras"),
                                       embeddings)  # a rewritten token file re-runs Apply
    assert str(tmp_path / "embeddings" / "tl_ball_run" / "tl_ball.safetensors") in [s[0] for s in stamps]


@pytest.mark.parametrize("content", [pickle.dumps({"diffusion_model.x.diff": [1.0, 2.0]}), bytes(range(256)) * 8, b""])
def test_pickle_random_and_empty_files_are_refused_without_unpickling(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "bad.safetensors"
    path.write_bytes(content)
    with pytest.raises(TLInputError, match="not a safetensors file|corrupt|truncated") as caught:
        apply.load_weights_file(path, _lookup(tmp_path))
    assert caught.value.what == str(path)


@pytest.mark.parametrize("which", ["kv", "embedding"])
def test_non_finite_weights_are_refused_naming_the_file(tmp_path: Path, which: str) -> None:
    """NaN or inf in the K/V deltas or the token would sample black images: refused before anything is applied."""
    kv = _write_run(tmp_path)
    path = kv if which == "kv" else tmp_path / "embeddings" / "tl_ball.safetensors"
    meta = _meta() if which == "kv" else {**_meta(), "token": "tl_ball"}
    key = "diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.diff"
    tensors = ({key: torch.full((320, 768), float("nan"))} if which == "kv"
               else {"clip_l": torch.full((1, 768), float("inf"))})
    save_file(tensors, str(path), metadata=meta)  # as another tool (or a broken run) would write it
    with pytest.raises(TLInputError, match="NaN or infinite.*black.*Fix: train the weights again") as caught:
        apply.load_weights_file(kv, _lookup(tmp_path / "embeddings"), tmp_path)
    assert caught.value.what == str(path)


def test_a_foreign_lora_is_refused_with_the_stock_loader_as_fix(tmp_path: Path) -> None:
    path = tmp_path / "foreign.safetensors"
    save_file({"diffusion_model.a.diff": torch.zeros(2, 2)}, str(path))
    with pytest.raises(TLInputError, match="LoraLoaderModelOnly"):
        apply.load_weights_file(path, _lookup(tmp_path))


def test_a_missing_token_file_names_the_token_and_the_fix(tmp_path: Path) -> None:
    kv = _write_run(tmp_path)
    (tmp_path / "embeddings" / "tl_ball.safetensors").unlink()
    with pytest.raises(TLInputError, match="run/tl_ball.safetensors.*embeddings folders.*Fix: copy"):
        apply.load_weights_file(kv, _lookup(tmp_path / "embeddings"), tmp_path)


def test_a_token_retrained_by_a_later_run_comes_from_the_runs_own_checkpoint(tmp_path: Path) -> None:
    kv = _write_run(tmp_path, "first", seed=1, embedding_dir=tmp_path / "ckpt")
    checkpoint = RunFiles("first", tmp_path).checkpoints_dir / checkpoint_dir_name(30) / "embeddings"
    checkpoint.mkdir(parents=True)
    (tmp_path / "ckpt" / "tl_ball.safetensors").rename(checkpoint / "00_tl_ball.safetensors")
    _write_run(tmp_path, "second", seed=2)  # overwrites embeddings/tl_ball.safetensors
    loaded = apply.load_weights_file(kv, _lookup(tmp_path / "embeddings"), tmp_path)
    assert torch.equal(loaded.token_vectors["tl_ball"]["clip_l"], torch.full((1, 768), 1.0))
    assert loaded.embedding_paths["tl_ball"] == checkpoint / "00_tl_ball.safetensors"

    (checkpoint / "00_tl_ball.safetensors").unlink()
    with pytest.raises(TLInputError, match="another training run"):
        apply.load_weights_file(kv, _lookup(tmp_path / "embeddings"), tmp_path)


def test_an_embedding_without_training_metadata_is_accepted(tmp_path: Path) -> None:
    kv = _write_run(tmp_path)
    save_file({"clip_l": torch.zeros(1, 768)}, str(tmp_path / "embeddings" / "tl_ball.safetensors"))
    loaded = apply.load_weights_file(kv, _lookup(tmp_path / "embeddings"), tmp_path)
    assert torch.equal(loaded.token_vectors["tl_ball"]["clip_l"], torch.zeros(1, 768))


def test_trigger_lists_every_concept() -> None:
    weights = TrainedWeights(kv_deltas={}, token_vectors={"tl_ball": {}, "tl_box": {}},
                             metadata=build_metadata(class_words=["ball", "box"]))
    assert apply.trigger_text(weights) == "embedding:tl_ball ball and embedding:tl_box box"


def test_weights_fingerprint_follows_the_files_not_the_name(tmp_path: Path) -> None:
    """Training again under the same run name must re-run Apply (ComfyUI caches by input values)."""
    kv = _write_run(tmp_path)
    loras, embeddings = _lookup(tmp_path / "loras"), _lookup(tmp_path / "embeddings")
    name = "textual_localization/run.safetensors"
    first = apply.weights_fingerprint(name, loras, embeddings)
    assert isinstance(first, tuple) and len(first) == 2  # the K/V file and its token's embedding
    assert apply.weights_fingerprint(name, loras, embeddings) == first
    save_embedding(tmp_path / "embeddings" / "tl_ball.safetensors", {"clip_l": torch.zeros(1, 768)},
                   {**_meta(7), "token": "tl_ball"})
    os.utime(tmp_path / "embeddings" / "tl_ball.safetensors", ns=(5, 5))
    second = apply.weights_fingerprint(name, loras, embeddings)
    assert second != first
    _write_run(tmp_path, seed=43)
    os.utime(kv, ns=(5, 5))
    assert apply.weights_fingerprint(name, loras, embeddings) != second
    assert apply.weights_fingerprint("missing.safetensors", loras, embeddings) == "missing.safetensors"
