"""Training step time and peak memory: hard guidance vs none vs naive capture, and how they scale.

Variants, all through the pack's own trainer on the same model, data and seed:
- hard:  the attention loss on (guidance hard, lambda 1);
- none:  the same K/V training with guidance none (lambda 0, Custom Diffusion plus the capture);
- plain: guidance none with no capture at all (SDPA in every layer), Custom Diffusion as such;
- naive: hard guidance with explicit softmax attention in every layer, all maps kept
  (bench/capture_variants.py).

Sections: (1) the variants on the tiny checkpoint at small sizes; (2) a reduced-depth SD1.5-width
UNet at random init (SD1.5's widths, heads and attention levels, one res block per level) over
several resolutions, with every variant at the comparison resolution; (3) 1, 2, 3 concepts.
Prior preservation is off everywhere (instance rows only), which is the worst case for the
attention loss's share of the step.

    OMP_NUM_THREADS=1 .venv/bin/python bench/train_step.py
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import common  # noqa: E402
from bench.capture_variants import use_naive_capture, use_no_capture  # noqa: E402

VARIANTS: dict[str, tuple[str, Any]] = {
    "hard": ("hard", None),
    "none": ("none", None),
    "plain": ("none", use_no_capture),
    "naive": ("hard", use_naive_capture),
}
TARGETS = {"hard/none time": "<= 1.10", "naive/hard time": ">= 1.3", "naive/hard memory": ">= 1.3"}


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny-resolutions", type=_ints, default=[64, 128, 256],
                        help="pixel sizes for the variants on the tiny checkpoint (default 64,128,256)")
    parser.add_argument("--reduced-resolutions", type=_ints, default=[256, 384, 512],
                        help="pixel sizes for the reduced SD1.5-width UNet; empty skips it (default 256,384,512)")
    parser.add_argument("--compare-resolution", type=int, default=512,
                        help="resolution where the reduced UNet runs every variant (default 512)")
    parser.add_argument("--compare-variants", default=",".join(VARIANTS),
                        help="variants at the comparison resolution (default hard,none,plain,naive)")
    parser.add_argument("--reduced-batch", type=int, default=1, help="instance batch of the reduced UNet runs")
    parser.add_argument("--concepts", type=_ints, default=[1, 2, 3], help="concept counts (default 1,2,3)")
    parser.add_argument("--concepts-resolution", type=int, default=128, help="tiny-model size for the concept runs")
    parser.add_argument("--repeats", type=int, default=3, help="timed steps per variant (median is reported)")
    parser.add_argument("--reduced-repeats", type=int, default=1, help="timed steps per reduced-UNet variant")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per variant first")
    parser.add_argument("--attention", choices=common.ATTENTION_CHOICES, default="pytorch",
                        help="ComfyUI's attention for layers nobody captures (default pytorch = SDPA, as on GPUs)")
    parser.add_argument("--name", default="train_step", help="result file name under bench/results/")
    return parser.parse_args(argv)


def _config(guidance: str, batch: int = 0) -> Any:
    from textloc.config import TrainConfig

    return TrainConfig(guidance=guidance, attention_weight=1.0, prior_weight=0.0, steps=10_000,
                       learning_rate=1e-5, batch_size=batch)


def run_variants(models: tuple[Any, Any, Any], dataset: Any, names: list[str], work: Path, repeats: int,
                 warmup: int, batch: int = 0) -> dict[str, common.StepStats]:
    model, clip, vae = models
    runners = {}
    for name in names:
        guidance, variant = VARIANTS[name]
        runners[name] = common.prepare_trainer(model, clip, vae, dataset, _config(guidance, batch), work,
                                               variant=variant)
    stats = common.measure_steps(runners, repeats=repeats, warmup=warmup)
    del runners
    return stats


def _rows(section: str, size: int, stats: dict[str, common.StepStats], extra: dict[str, Any] | None = None
          ) -> list[dict[str, Any]]:
    return [{"section": section, "resolution": size, "variant": name, **(extra or {}), **s.as_dict()}
            for name, s in stats.items()]


def _ratios(stats: dict[str, common.StepStats]) -> dict[str, float]:
    out: dict[str, float] = {}
    hard = stats.get("hard")
    for name, s in stats.items():
        if hard is None or name == "hard":
            continue
        if name == "naive":
            out["naive/hard time"] = common.ratio(s.median_s, hard.median_s)
            out["naive/hard memory"] = common.ratio(s.peak_bytes, hard.peak_bytes)
        else:
            out[f"hard/{name} time"] = common.ratio(hard.median_s, s.median_s)
            out[f"hard/{name} memory"] = common.ratio(hard.peak_bytes, s.peak_bytes)
    return {k: round(v, 3) for k, v in out.items()}


def _print_stats(title: str, stats: dict[str, common.StepStats]) -> None:
    print(f"\n{title}")
    common.print_table(["variant", "step s (median)", "peak MiB"],
                       [[n, f"{s.median_s:.3f}", f"{common.mib(s.peak_bytes):.0f}"] for n, s in stats.items()])
    for key, value in _ratios(stats).items():
        target = TARGETS.get(key)
        print(f"  {key}: {common.fmt_ratio(value)}" + (f"  (target {target}: {common.verdict(value, target)})"
                                                        if target else ""))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    common.set_threads()
    attention = common.boot(args.attention)
    tiny = common.load_checkpoint()
    rows: list[dict[str, Any]] = []
    ratios: dict[str, dict[str, float]] = {}
    memory_method = ""
    work = Path(tempfile.mkdtemp(prefix="tl_bench_"))
    print(f"ComfyUI attention for uncaptured layers: {attention}; torch threads: {torch.get_num_threads()}")

    for size in args.tiny_resolutions:
        stats = run_variants(tiny, common.toy_dataset(size, 1), list(VARIANTS), work, args.repeats, args.warmup)
        _print_stats(f"tiny checkpoint, {size} px, 1 concept, batch 2", stats)
        rows += _rows("tiny variants", size, stats, {"model": "tiny", "batch": 2})
        ratios[f"tiny {size}px"] = _ratios(stats)
        memory_method = next(iter(stats.values())).memory_method

    if args.reduced_resolutions:
        unet = common.unet_patcher(common.SD15_REDUCED_UNET_CONFIG)
        params = common.param_count(unet.model.diffusion_model)
        reduced = (unet, tiny[1], tiny[2])
        for size in args.reduced_resolutions:
            compare = [v.strip() for v in args.compare_variants.split(",") if v.strip() in VARIANTS]
            names = compare if size == args.compare_resolution else ["hard", "naive"]
            stats = run_variants(reduced, common.toy_dataset(size, 1), names, work, args.reduced_repeats,
                                 args.warmup, batch=args.reduced_batch)
            _print_stats(f"reduced SD1.5-width UNet ({params / 1e6:.0f}M params), {size} px, "
                         f"batch {args.reduced_batch}", stats)
            rows += _rows("reduced UNet", size, stats, {"model": "sd15-reduced", "batch": args.reduced_batch,
                                                        "unet_params": params})
            ratios[f"reduced {size}px"] = _ratios(stats)
        del unet, reduced

    for count in args.concepts:
        stats = run_variants(tiny, common.toy_dataset(args.concepts_resolution, count), ["hard", "none"], work,
                             args.repeats, args.warmup)
        _print_stats(f"tiny checkpoint, {args.concepts_resolution} px, {count} concept(s), batch {count + 1}", stats)
        rows += _rows("concepts", args.concepts_resolution, stats, {"model": "tiny", "concepts": count,
                                                                    "batch": count + 1})
        ratios[f"tiny {count} concepts"] = _ratios(stats)

    print("\nHow it grows (hard guidance):")
    growth = _growth(rows)
    for line in growth:
        print("  " + line)
    targets = _target_verdicts(ratios, args.compare_resolution)
    print("\nTargets:")
    for key, value in targets.items():
        print(f"  {key}: {value}")
    data = {"attention_kernel": attention, "memory_method": memory_method, "rows": rows, "ratios": ratios,
            "growth": growth, "targets": targets, "settings": vars(args)}
    path = common.write_result(args.name, data)
    print(f"\nwrote {path}")
    return data


def _growth(rows: list[dict[str, Any]]) -> list[str]:
    """One line per series: time and memory relative to its first point."""
    lines = []
    series = [("reduced UNet", "resolution", "px"), ("concepts", "concepts", "concepts")]
    for section, key, unit in series:
        for variant in ("hard", "naive"):
            points = [r for r in rows if r["section"] == section and r["variant"] == variant]
            if len(points) < 2:
                continue
            first = points[0]
            parts = [f"{p[key]} {unit}: time x{common.ratio(p['median_s'], first['median_s']):.2f}, "
                     f"memory x{common.ratio(p['peak_mib'], first['peak_mib']):.2f}" for p in points[1:]]
            lines.append(f"{section} {variant} vs {first[key]} {unit}: " + "; ".join(parts))
    return lines


def _target_verdicts(ratios: dict[str, dict[str, float]], compare: int) -> dict[str, str]:
    out = {}
    for where, values in ratios.items():
        for key, target in TARGETS.items():
            if key in values and (key.startswith("hard/") or f"{compare}px" in where):
                out[f"{where} {key}"] = f"{common.fmt_ratio(values[key])} (target {target}: " \
                                        f"{common.verdict(values[key], target)})"
    return out


if __name__ == "__main__":
    main()
