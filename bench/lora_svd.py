"""The SVD behind the LoRA export, per K/V layer shape and rank: exact vs randomized, error and time.

No training run: every K/V layer shape of SD1.5, SD2.x and SDXL (read from ComfyUI's own model classes,
built on the meta device) gets a synthetic delta whose singular values fall like those of trained deltas:
s_i = (i + c)^-a, with a and c fitted to the mean error per rank that bench/lora_export.py measured on a
trained shapes-world run (bench/results/lora_export.json: 13 % residual at rank 16, 5 % at rank 64; such
deltas are not low-rank). The delta is rounded to fp16, as the trainer keeps it.

The baseline is the exact SVD (torch.linalg.svd) of the same delta, timed in alternating rounds with the
others (median of --repeats rounds per rank, so that load from other work hits all alike). Per shape and
rank it prints, for torch.svd_lowrank with 2 power iterations and q = rank + 10, 2 x rank or 2 x rank + 8
(the pack's) random columns: the relative Frobenius error of the rank-r cut against the exact cut's
(ratio, 1 = as good as exact) and the exact SVD's time over its time (speed-up). The "pack" columns time
textloc.weights.lora_export's low_rank_factors, which picks the exact or the randomized SVD by its rule.
Per family, the whole export's SVD time (per layer medians x layer counts) at a few ranks, exact vs the
pack.

    OMP_NUM_THREADS=1 .venv/bin/python bench/lora_svd.py [--repeats 3] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import common  # noqa: E402

FAMILIES = {"SD1.5": common.SD15_UNET_CONFIG, "SD2.x": common.SD2_UNET_CONFIG, "SDXL": common.SDXL_UNET_CONFIG}
FIXED_RANKS = (1, 4, 16, 32, 64, 128, 256)
SHARES = (8, 6, 4, 3, 2)  # also the ranks smaller side / share: where the two SVDs cross over
FAMILY_RANKS = (4, 16, 64, 128)
POWER_ITERATIONS = 2
DELTA_SCALE = 0.05  # the largest singular value; trained deltas' scale does not change relative errors
Triplets = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per measurement (median)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--trained", type=Path, default=common.RESULTS_DIR / "lora_export.json",
                        help="bench/lora_export.py's result file, whose error per rank the spectrum is fitted to")
    parser.add_argument("--name", default="lora_svd")
    return parser.parse_args(argv)


def column_rules() -> dict[str, Callable[[int], int]]:
    """Random columns q per rank r of the randomized variants: a common default, twice the rank, the pack's."""
    from textloc.weights.lora_export import randomized_svd_columns

    return {"q = r + 10": lambda r: r + 10, "q = 2r": lambda r: 2 * r, "q = 2r + 8 (pack)": randomized_svd_columns}


def family_kv_shapes() -> dict[str, Counter[tuple[int, int]]]:
    """{family: Counter of (out, in) over its attn2 K/V layers}, from ComfyUI's full-size models on meta."""
    from textloc.weights.apply import model_kv_shapes

    shapes = {}
    for family, config in FAMILIES.items():
        patcher = common.unet_patcher(config, meta=True)
        shapes[family] = Counter(tuple(s) for k, s in model_kv_shapes(patcher).items()
                                 if ".to_k." in k or ".to_v." in k)
    return shapes


def tail_errors(singular: torch.Tensor, ranks: list[int]) -> list[float]:
    """Relative Frobenius error of the best rank-r cut of a matrix with these singular values."""
    energy = singular.double() ** 2
    kept = energy.cumsum(0) / energy.sum()
    return [float((1 - kept[r - 1]).clamp(min=0).sqrt()) for r in ranks]


def fit_spectrum(trained: dict[str, Any]) -> dict[str, Any]:
    """(a, c) of s_i = (i + c)^-a that best matches the trained run's mean error per rank (log scale)."""
    smaller_side = 320  # the shapes world's K/V layers are 320 x 768
    ranks = sorted(int(r) for r in trained["ranks"] if int(r) < smaller_side)
    target = torch.tensor([trained["ranks"][str(r)]["mean_relative_error"] for r in ranks], dtype=torch.float64)
    index = torch.arange(1, smaller_side + 1, dtype=torch.float64)
    best = (float("inf"), 0.0, 0.0)
    for a in torch.arange(0.8, 2.5, 0.01).tolist():
        for c in torch.arange(0.0, 5.0, 0.05).tolist():
            fitted = torch.tensor(tail_errors((index + c) ** -a, ranks), dtype=torch.float64)
            loss = float(((fitted.log() - target.log()) ** 2).sum())
            if loss < best[0]:
                best = (loss, a, c)
    _, a, c = best
    fitted = tail_errors((index + c) ** -a, ranks)
    return {"a": round(a, 3), "c": round(c, 3), "ranks": ranks, "trained_mean_error": target.tolist(),
            "fitted_error": fitted}


def trained_like_delta(shape: tuple[int, int], a: float, c: float, device: torch.device, seed: int = 0
                       ) -> torch.Tensor:
    """out x in delta with singular values DELTA_SCALE (i + c)^-a / (1 + c)^-a, random bases, fp16-rounded."""
    gen = torch.Generator().manual_seed(seed)
    out, inp = shape
    n = min(shape)
    singular = (torch.arange(1, n + 1, dtype=torch.float64) + c) ** -a
    u, _ = torch.linalg.qr(torch.randn(out, n, generator=gen, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(inp, n, generator=gen, dtype=torch.float64))
    delta = (u * (singular * DELTA_SCALE / singular[0])) @ v.T
    return delta.half().to(device).float()


def cut_error(delta: torch.Tensor, triplets: Triplets, rank: int) -> float:
    """||delta - U_r S_r V_r^T|| / ||delta|| in float64."""
    u, s, vh = (t.double() for t in triplets)
    target = delta.double()
    approx = (u[:, :rank] * s[:rank]) @ vh[:rank]
    return float(torch.linalg.matrix_norm(target - approx) / torch.linalg.matrix_norm(target))


def bench_shape(delta: torch.Tensor, ranks: list[int], repeats: int, sync: Callable[[], None]
                ) -> dict[str, Any]:
    """Per rank: the exact SVD (the baseline), each randomized variant and the pack's factors, timed in
    alternating rounds (common.time_interleaved) so that load from other work hits all of them alike."""
    from textloc.weights.lora_export import low_rank_factors, uses_randomized_svd

    exact = torch.linalg.svd(delta, full_matrices=False)
    n = min(delta.shape)
    per_rank, exact_times = {}, []
    for rank in ranks:
        columns = {label: min(rule(rank), n) for label, rule in column_rules().items()}
        calls: dict[str, Callable[[], Any]] = {"exact": lambda: torch.linalg.svd(delta, full_matrices=False)}
        calls |= {label: (lambda q=q: torch.svd_lowrank(delta, q=q, niter=POWER_ITERATIONS))
                  for label, q in columns.items()}
        calls["pack"] = lambda rank=rank: low_rank_factors(delta, rank)
        times = {name: common.median(t) for name, t in common.time_interleaved(calls, repeats, sync=sync).items()}
        exact_times.append(times["exact"])
        exact_error = cut_error(delta, exact, rank)
        row: dict[str, Any] = {"exact_error": exact_error, "exact_seconds": times["exact"]}
        for label, q in columns.items():
            torch.manual_seed(0)
            u, s, v = torch.svd_lowrank(delta, q=q, niter=POWER_ITERATIONS)
            error = cut_error(delta, (u, s, v.T), rank)
            row[label] = {"q": q, "seconds": times[label], "error": error,
                          "error_ratio": common.ratio(error, exact_error),
                          "speedup": common.ratio(times["exact"], times[label])}
        up, down = low_rank_factors(delta, rank)
        error = float(torch.linalg.matrix_norm(delta.double() - up.double() @ down.double())
                      / torch.linalg.matrix_norm(delta.double()))
        row["pack"] = {"randomized": uses_randomized_svd(tuple(delta.shape), rank, delta.device),
                       "seconds": times["pack"], "error": error, "error_ratio": common.ratio(error, exact_error),
                       "speedup": common.ratio(times["exact"], times["pack"])}
        per_rank[rank] = row
    return {"exact_seconds": common.median(exact_times), "ranks": per_rank}


def ranks_for(shape: tuple[int, int]) -> list[int]:
    n = min(shape)
    return sorted({r for r in FIXED_RANKS if r < n} | {n // share for share in SHARES} | set(FAMILY_RANKS))


def shape_rows(shape: tuple[int, int], result: dict[str, Any]) -> list[list[Any]]:
    rows = []
    for rank, row in result["ranks"].items():
        cells: list[Any] = [f"{shape[0]} x {shape[1]}", rank, f"{row['exact_error']:.4f}"]
        for label in column_rules():
            cells += [f"{row[label]['error_ratio']:.5f}", common.fmt_ratio(row[label]["speedup"])]
        pack = row["pack"]
        cells += ["randomized" if pack["randomized"] else "exact", f"{pack['error_ratio']:.5f}",
                  common.fmt_ratio(pack["speedup"])]
        rows.append(cells)
    return rows


def family_totals(shapes: dict[str, Counter], results: dict[tuple[int, int], dict[str, Any]]) -> dict[str, Any]:
    """Per family and rank: the SVD time of a whole export (per layer medians x counts), exact vs the pack,
    each from the rank's own interleaved rounds."""
    totals: dict[str, Any] = {}
    for family, counts in shapes.items():
        totals[family] = {}
        for rank in FAMILY_RANKS:
            exact = sum(n * results[s]["ranks"][rank]["exact_seconds"] for s, n in counts.items())
            pack = sum(n * results[s]["ranks"][rank]["pack"]["seconds"] for s, n in counts.items())
            totals[family][rank] = {"layers": sum(counts.values()), "exact_seconds": exact, "pack_seconds": pack,
                                    "speedup": common.ratio(exact, pack)}
    return totals


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    common.set_threads()
    device = torch.device(args.device)
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    spectrum = fit_spectrum(json.loads(args.trained.read_text()))
    print(f"spectrum s_i = (i + {spectrum['c']})^-{spectrum['a']}, fitted to {args.trained.name}: mean error per "
          f"rank {spectrum['ranks']} trained {[round(e, 4) for e in spectrum['trained_mean_error']]}, "
          f"fitted {[round(e, 4) for e in spectrum['fitted_error']]}")
    shapes = family_kv_shapes()
    for family, counts in shapes.items():
        print(f"{family}: " + ", ".join(f"{n} x {s[0]} x {s[1]}" for s, n in sorted(counts.items())))
    unique = sorted({s for counts in shapes.values() for s in counts}, key=lambda s: (s[1], s[0]))
    results, rows = {}, []
    for shape in unique:
        delta = trained_like_delta(shape, spectrum["a"], spectrum["c"], device)
        results[shape] = bench_shape(delta, ranks_for(shape), args.repeats, sync)
        rows += shape_rows(shape, results[shape])
        print(f"  {shape}: exact SVD {results[shape]['exact_seconds']:.3f} s (median over its ranks)", flush=True)

    headers = ["layer", "rank", "exact error"]
    for label in column_rules():
        headers += [f"{label}: error vs exact", f"{label}: speed-up"]
    headers += ["pack uses", "pack: error vs exact", "pack: speed-up"]
    print(f"\nPer layer shape and rank ({device}, median of {args.repeats} alternating rounds; error: relative Frobenius error of the "
          f"rank-r cut / the exact cut's; speed-up: exact SVD time / this time)")
    table = common.print_table(headers, rows)
    totals = family_totals(shapes, results)
    family_rows = [[family, rank, t["layers"], f"{t['exact_seconds']:.2f}", f"{t['pack_seconds']:.2f}",
                    common.fmt_ratio(t["speedup"])] for family, by_rank in totals.items() for rank, t in by_rank.items()]
    print("\nSVD time of a whole export (per layer medians x layer counts)")
    family_table = common.print_table(["family", "rank", "K/V layers", "exact s", "pack s", "speed-up"], family_rows)
    data = {"device": str(device), "repeats": args.repeats, "spectrum": spectrum, "power_iterations": POWER_ITERATIONS,
            "family_shapes": {f: {f"{s[0]}x{s[1]}": n for s, n in c.items()} for f, c in shapes.items()},
            "shapes": {f"{s[0]}x{s[1]}": r for s, r in results.items()}, "family_totals": totals,
            "table": table, "family_table": family_table, "settings": {k: str(v) for k, v in vars(args).items()}}
    path = common.write_result(args.name, data, device=device)
    print(f"wrote {path}")
    return data


if __name__ == "__main__":
    main()
