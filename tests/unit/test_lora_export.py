"""LoRA export of the K/V deltas: exact at full rank, the SVD's error by rank, kohya key names, the files."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tl_assertions import expect_user_error

from textloc.weights import apply, lora_export
from textloc.weights import files as weights
from textloc.weights.trained import TrainedWeights

KEY_K = "diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"
KEY_V = "diffusion_model.middle_block.1.transformer_blocks.0.attn2.to_v.weight"
SDXL_KEY = "diffusion_model.output_blocks.2.1.transformer_blocks.9.attn2.to_v.weight"


def _spectrum_matrix(out: int, inp: int, singular: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """out x inp matrix with the given singular values (random orthonormal bases)."""
    gen = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(out, len(singular), generator=gen, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(inp, len(singular), generator=gen, dtype=torch.float64))
    return (u * singular.double()) @ v.T


def _trained(deltas: dict[str, torch.Tensor], run: str = "tl_run", steps: int = 10, seed: int = 0) -> TrainedWeights:
    vectors = {"tl_ball": {"clip_l": torch.linspace(-1, 1, 768).reshape(1, 768)}}
    meta = weights.build_metadata(run_name=run, tokens=["tl_ball"], class_words=["ball"], steps=steps, seed=seed,
                                  base_model_family="SD15", base_hash="abc")
    return TrainedWeights(kv_deltas=deltas, token_vectors=vectors, metadata=meta)


def test_full_rank_gives_the_delta_back_and_a_larger_rank_is_capped() -> None:
    delta = torch.randn(40, 24, generator=torch.Generator().manual_seed(1)) * 0.05
    for rank in (24, 100):
        up, down = lora_export.low_rank_factors(delta, rank)
        assert up.shape == (40, 24) and down.shape == (24, 24)
        assert torch.allclose(up @ down, delta, atol=1e-6)
    tensors, errors = lora_export.kv_lora_tensors({KEY_K: delta.half()}, 768)
    assert errors[KEY_K] < 2e-3  # only fp16 rounding of the factors remains
    name = lora_export.lora_module_name(KEY_K)
    rebuilt = tensors[name + ".lora_up.weight"].float() @ tensors[name + ".lora_down.weight"].float()
    scale = float(tensors[name + ".alpha"]) / tensors[name + ".lora_down.weight"].shape[0]
    assert scale == 1.0  # the loaders' alpha / rank
    assert torch.allclose(rebuilt * scale, delta.half().float(), atol=2e-4)


def test_error_falls_with_rank_as_the_discarded_singular_values_say() -> None:
    singular = 0.5 ** torch.arange(16, dtype=torch.float64)
    delta = _spectrum_matrix(64, 48, singular).float()
    previous = math.inf
    for rank in (1, 2, 4, 8, 16):
        up, down = lora_export.low_rank_factors(delta, rank)
        error = lora_export.relative_error(delta, up, down)
        expected = float(singular[rank:].norm() / singular.norm())
        assert error == pytest.approx(expected, abs=1e-5)
        assert error < previous
        previous = error
    _, errors = lora_export.kv_lora_tensors({KEY_K: delta}, 2)
    assert errors[KEY_K] == pytest.approx(float(singular[2:].norm() / singular.norm()), abs=1e-3)


def test_keys_follow_the_kohya_format_for_sd15_and_sdxl_names() -> None:
    assert lora_export.lora_module_name(KEY_K) == "lora_unet_input_blocks_1_1_transformer_blocks_0_attn2_to_k"
    assert lora_export.lora_module_name(SDXL_KEY) == "lora_unet_output_blocks_2_1_transformer_blocks_9_attn2_to_v"
    gen = torch.Generator().manual_seed(2)
    deltas = {KEY_K: torch.randn(320, 768, generator=gen), KEY_V: torch.randn(1280, 768, generator=gen)}
    tensors, errors = lora_export.kv_lora_tensors(deltas, 8)
    names = [lora_export.lora_module_name(k) for k in deltas]
    assert set(tensors) == {n + s for n in names for s in (".lora_up.weight", ".lora_down.weight", ".alpha")}
    assert set(errors) == set(deltas)
    assert tensors[names[1] + ".lora_up.weight"].shape == (1280, 8)
    assert tensors[names[1] + ".lora_down.weight"].shape == (8, 768)
    assert float(tensors[names[1] + ".alpha"]) == 8.0 and tensors[names[1] + ".alpha"].ndim == 0
    assert {t.dtype for t in tensors.values()} == {torch.float16}
    with pytest.raises(ValueError, match="diffusion_model"):
        lora_export.lora_module_name("input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight")


@pytest.mark.parametrize("rank", [0, -3, 2.5, True])
def test_a_rank_below_one_is_refused_by_name(rank) -> None:
    expect_user_error(lambda: lora_export.kv_lora_tensors({KEY_K: torch.ones(4, 4)}, rank), "rank")
    expect_user_error(lambda: lora_export.low_rank_factors(torch.ones(4, 4), rank), "rank")


def test_empty_or_non_finite_deltas_are_refused(tmp_path: Path) -> None:
    expect_user_error(lambda: lora_export.kv_lora_tensors({}, 4), "tl_result", "no K/V deltas")
    bad = torch.ones(8, 8)
    bad[2, 3] = float("nan")
    path = tmp_path / "bad.safetensors"
    expect_user_error(lambda: lora_export.save_kv_lora(path, _trained({KEY_K: bad}), 4, tmp_path),
                      "tl_result", KEY_K)
    assert list(tmp_path.iterdir()) == []


def test_save_writes_the_lora_its_metadata_and_the_token_where_no_lora_list_looks(tmp_path: Path) -> None:
    gen = torch.Generator().manual_seed(3)
    deltas = {KEY_K: torch.randn(320, 768, generator=gen).half(), KEY_V: torch.randn(1280, 768, generator=gen).half()}
    trained = _trained(deltas)
    path = lora_export.export_path(tmp_path, "tl_run", 4)
    written = lora_export.save_kv_lora(path, trained, 4, tmp_path)
    embedding = tmp_path / "embeddings" / "tl_run" / "tl_ball.safetensors"
    assert written == [path, embedding]
    assert [p.name for p in path.parent.iterdir()] == ["tl_run_lora_r4.safetensors"]  # only the LoRA in loras/
    tensors = load_file(str(path))
    expected, errors = lora_export.kv_lora_tensors(deltas, 4)
    assert set(tensors) == set(expected) and all(torch.equal(tensors[k], expected[k]) for k in tensors)
    meta = weights.read_metadata(path)
    assert meta["kind"] == "kv_lora" and meta["rank"] == "4" and meta["base_hash"] == "abc"
    assert meta["ss_network_dim"] == meta["ss_network_alpha"] == "4"
    assert meta["svd"] == lora_export.SVD_RULE
    recorded = json.loads(meta["relative_errors"])
    assert recorded == {lora_export.lora_module_name(k): pytest.approx(v, abs=1e-6) for k, v in errors.items()}
    assert 0.5 < float(meta["relative_error_mean"]) <= float(meta["relative_error_max"]) < 1.0
    assert json.loads(meta["embeddings"]) == {"tl_ball": "tl_run/tl_ball.safetensors"}
    assert meta["trigger"] == "embedding:tl_run/tl_ball ball"
    vectors, emb_meta = weights.load_embedding(embedding)
    assert torch.equal(vectors["clip_l"], trained.token_vectors["tl_ball"]["clip_l"])
    assert emb_meta["token"] == "tl_ball" and emb_meta["kind"] == "embedding"
    assert not apply.is_weights_file(path)  # a LoRA is not offered as a K/V file by Apply TL Weights
    # Exporting the same run again replaces the LoRA in place and keeps the run's token file as it is.
    stamp = weights.file_stamp(embedding)
    lora_export.save_kv_lora(path, trained, 4, tmp_path)
    assert [p.name for p in path.parent.iterdir()] == ["tl_run_lora_r4.safetensors"]
    assert [p.name for p in embedding.parent.iterdir()] == ["tl_ball.safetensors"]
    assert weights.file_stamp(embedding) == stamp


def test_an_export_never_replaces_another_runs_file(tmp_path: Path) -> None:
    deltas = {KEY_K: torch.randn(320, 768, generator=torch.Generator().manual_seed(4)).half()}
    first, second = _trained(deltas, run="run_a"), _trained(deltas, run="run_b", seed=7)
    path = lora_export.export_path(tmp_path, "shared_name", 4)
    lora_export.save_kv_lora(path, first, 4, tmp_path)
    before = path.read_bytes()
    expect_user_error(lambda: lora_export.save_kv_lora(path, second, 4, tmp_path), str(path), "run 'run_a'",
                      "file_name")
    assert path.read_bytes() == before
    assert not (tmp_path / "embeddings" / "run_b").exists()  # refused before anything was written
    # A run's full K/V file under the export's name (a run called shared_name_lora_r4) is not replaced either.
    kv = lora_export.export_path(tmp_path, "other", 4)
    weights.save_kv_deltas(kv, {KEY_K: torch.zeros(320, 768)}, {**first.metadata, "run_name": "other_lora_r4"})
    expect_user_error(lambda: lora_export.save_kv_lora(kv, first, 4, tmp_path), str(kv), "other_lora_r4")
    # The same run, resumed to more steps, exports over its own earlier file.
    resumed = _trained(deltas, run="run_a", steps=20)
    lora_export.save_kv_lora(path, resumed, 4, tmp_path)
    assert weights.read_metadata(path)["steps"] == "20"


def _trained_like(out: int, inp: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(delta, its singular values): s_i = (i + 1)^-1.32, the spectrum bench/lora_svd.py fits to trained
    deltas (13 % residual at rank 16: not low-rank, the randomized SVD's hard case)."""
    singular = (torch.arange(1, min(out, inp) + 1, dtype=torch.float64) + 1.0) ** -1.32 * 0.05
    return _spectrum_matrix(out, inp, singular, seed).float(), singular


def _best_seconds(fn, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def test_a_small_rank_takes_the_randomized_svd_at_the_exact_error_in_a_fraction_of_the_time() -> None:
    delta, singular = _trained_like(1280, 768)  # SD1.5's widest K/V layer
    rank = 16
    assert lora_export.uses_randomized_svd(tuple(delta.shape), rank, delta.device)
    up, down = lora_export.low_rank_factors(delta, rank)
    assert up.shape == (1280, rank) and down.shape == (rank, 768)
    best = float(singular[rank:].norm() / singular.norm())  # the exact cut's error (Eckart-Young)
    assert best <= lora_export.relative_error(delta, up, down) <= best * 1.001
    exact = _best_seconds(lambda: torch.linalg.svd(delta, full_matrices=False))
    randomized = _best_seconds(lambda: lora_export.low_rank_factors(delta, rank))
    assert randomized * 5 < exact, (randomized, exact)  # measured 26x on one CPU thread (bench/lora_svd.py)


def test_the_randomized_svd_repeats_itself_and_leaves_the_random_state_alone() -> None:
    delta, _ = _trained_like(640, 768, seed=4)
    torch.manual_seed(123)
    state = torch.get_rng_state()
    first = lora_export.low_rank_factors(delta, 8)
    assert torch.equal(torch.get_rng_state(), state)
    torch.rand(5)  # the caller's draws move on; the export's do not
    second = lora_export.low_rank_factors(delta, 8)
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))


def test_the_switch_between_randomized_and_exact_svd_follows_the_measured_rule() -> None:
    cpu = torch.device("cpu")
    assert lora_export.uses_randomized_svd((1280, 2048), 320, cpu)  # a quarter of the smaller side
    assert not lora_export.uses_randomized_svd((1280, 2048), 321, cpu)
    assert not lora_export.uses_randomized_svd((2048, 1280), 321, cpu)
    assert not lora_export.uses_randomized_svd((16, 16), 4, cpu)  # 2r + 8 columns would be the whole matrix
    assert not lora_export.uses_randomized_svd((1280, 2048), 16, torch.device("meta"))  # unseeded generators
    assert lora_export.randomized_svd_columns(16) == 40


@pytest.mark.parametrize("shape", [(1280, 2048), (1280, 1024)])  # SDXL's and SD2.x's widest K/V layers
def test_every_layer_of_every_family_can_be_exported_at_its_full_rank(shape: tuple[int, int]) -> None:
    delta = torch.randn(*shape, generator=torch.Generator().manual_seed(5)) * 0.05
    full = min(shape)
    assert lora_export.MAX_RANK >= full  # the rank inputs' limit (nodes/lora_nodes.py, TL Training Options)
    up, down = lora_export.low_rank_factors(delta, lora_export.MAX_RANK)
    assert up.shape == (shape[0], full) and down.shape == (full, shape[1])
    assert lora_export.relative_error(delta, up, down) < 1e-5
