"""The training benchmarks on one CUDA GPU with the full-size SD1.5 UNet at random init (meant for under 10 min on an H100).

The UNet is ComfyUI's own SD1.5 architecture (860M parameters) with random weights in the dtype
ComfyUI picks for the card; CLIP and the VAE (TAESD) come from the tiny checkpoint. Default
settings mean the authors' defaults: one concept, prior preservation on (batch 2 instance + 2
class rows), hard guidance, lambda 1, 512 px. Sections:
1. precision (bf16, fp16) x gradient checkpointing (off, on): step time, peak VRAM;
2. hard vs none vs plain vs naive capture at 512 px (bf16, no checkpointing);
3. hard and naive at 256, 384, 512 px;
4. 1, 2, 3 concepts at 512 px;
5. whether the defaults fit in 8 GB: precision auto and gradient_checkpointing auto, which turns
   checkpointing on for cards under 16 GB; the judgement uses the allocator's peak reservation
   plus 512 MiB for the CUDA context.

    .venv/bin/python bench/gpu.py            # needs a CUDA GPU
    .venv/bin/python bench/gpu.py --dry-run  # anywhere: meta-device build, then each configuration once, tiny
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import common  # noqa: E402
from bench.capture_variants import use_naive_capture, use_no_capture  # noqa: E402

EIGHT_GIB = 8 * 2**30
CUDA_CONTEXT_BYTES = 512 * 2**20
VARIANTS: dict[str, tuple[str, Any]] = {
    "hard": ("hard", None),
    "none": ("none", None),
    "plain": ("none", use_no_capture),
    "naive": ("hard", use_naive_capture),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="build on the meta device and print the plan only")
    parser.add_argument("--resolution", type=int, default=512)
    parser.add_argument("--scaling-resolutions", default="256,384,512")
    parser.add_argument("--concepts", default="1,2,3")
    parser.add_argument("--repeats", type=int, default=5, help="timed steps per configuration (median reported)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--name", default="gpu", help="result file name under bench/results/")
    return parser.parse_args(argv)


def _config(guidance: str, precision: str, checkpointing: str) -> Any:
    from textloc.config import TrainConfig

    return TrainConfig(guidance=guidance, attention_weight=1.0, prior_weight=1.0, steps=10_000,
                       precision=precision, gradient_checkpointing=checkpointing)


def plan(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every measured configuration, in order."""
    res = args.resolution
    items = [{"section": "precision x checkpointing", "variant": "hard", "precision": p, "checkpointing": c,
              "resolution": res, "concepts": 1} for p in ("bf16", "fp16") for c in ("off", "on")]
    items += [{"section": "capture variants", "variant": v, "precision": "bf16", "checkpointing": "off",
               "resolution": res, "concepts": 1} for v in VARIANTS]
    items += [{"section": "resolution", "variant": v, "precision": "bf16", "checkpointing": "off",
               "resolution": int(r), "concepts": 1} for r in args.scaling_resolutions.split(",") for v in ("hard", "naive")]
    items += [{"section": "concepts", "variant": "hard", "precision": "bf16", "checkpointing": "off",
               "resolution": res, "concepts": int(c)} for c in args.concepts.split(",")]
    items += [{"section": "8 GB defaults", "variant": "hard", "precision": "auto", "checkpointing": "on",
               "resolution": res, "concepts": 1}]
    return items


def dry_run(args: argparse.Namespace) -> None:
    common.boot()
    from textloc.attention.capture import attn2_layer_keys
    from textloc.training.kv_deltas import projection_module_names

    patcher = common.unet_patcher(common.SD15_UNET_CONFIG, dtype=torch.float16, meta=True)
    unet = patcher.model.diffusion_model
    print(f"SD1.5 UNet on the meta device: {common.param_count(unet) / 1e6:.0f}M parameters, "
          f"model config {type(patcher.model.model_config).__name__}, "
          f"{len(attn2_layer_keys(unet))} attn2 layers, {len(projection_module_names(unet))} K/V projections")
    items = plan(args)
    for item in items:
        print("  " + ", ".join(f"{k} {v}" for k, v in item.items()))
    print(f"{len(items)} configurations x {args.warmup + args.repeats} steps on the GPU")
    print("one step of each configuration on this machine: tiny checkpoint, 64 px, fp32")
    models = common.load_checkpoint()
    small = [{**item, "resolution": 64, "precision": "fp32"} for item in items]
    run_plan(small, models[0], models, torch.device("cpu"), repeats=1, warmup=0)
    print("dry run done: the GPU numbers come only from a run without --dry-run on a CUDA GPU")


def run_plan(items: list[dict[str, Any]], unet: Any, models: tuple[Any, Any, Any], device: torch.device,
             repeats: int, warmup: int) -> list[dict[str, Any]]:
    """Measure every configuration; an out-of-memory configuration is reported, not fatal."""
    oom = getattr(torch.cuda, "OutOfMemoryError", MemoryError)
    work = Path(tempfile.mkdtemp(prefix="tl_gpu_bench_"))
    rows: list[dict[str, Any]] = []
    for item in items:
        guidance, variant = VARIANTS[item["variant"]]
        dataset = common.toy_dataset(item["resolution"], item["concepts"], prior=True)
        try:
            runner = common.prepare_trainer(unet, models[1], models[2], dataset,
                                            _config(guidance, item["precision"], item["checkpointing"]), work,
                                            variant=variant, checkpointing=item["checkpointing"] == "on")
            stats = common.measure_steps({item["variant"]: runner}, repeats=repeats, warmup=warmup,
                                         device=device)[item["variant"]]
            row = {**item, **stats.as_dict(), "batch_rows": runner.trainer.config.batch_size * (1 + item["concepts"])}
            del runner
        except oom as error:
            row = {**item, "error": f"out of memory: {error}".splitlines()[0]}
        if device.type == "cuda":
            torch.cuda.empty_cache()
        rows.append(row)
        print("  " + ", ".join(f"{k} {row[k]}" for k in ("section", "variant", "precision", "checkpointing",
                                                          "resolution", "concepts")),
              "->", row.get("error") or f"{row['median_s'] * 1000:.0f} ms, peak {row['total_peak_mib']:.0f} MiB "
                                         f"(reserved {row['reserved_peak_mib']:.0f} MiB)", flush=True)
    return rows


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    args = parse_args(argv)
    if args.dry_run:
        dry_run(args)
        return None
    if not torch.cuda.is_available():
        raise SystemExit("bench/gpu.py needs a CUDA GPU (none found); use --dry-run to check the code path here.")
    started = time.perf_counter()
    attention = common.boot()
    from textloc import host

    device = host.torch_device()
    models = common.load_checkpoint()
    unet = common.unet_patcher(common.SD15_UNET_CONFIG, dtype=None)
    params = common.param_count(unet.model.diffusion_model)
    weight_dtype = str(next(unet.model.diffusion_model.parameters()).dtype)
    print(f"{torch.cuda.get_device_name(device)}, SD1.5 UNet {params / 1e6:.0f}M params in {weight_dtype}, "
          f"attention {attention}")
    rows = run_plan(plan(args), unet, models, device, args.repeats, args.warmup)
    hard = next((r for r in rows if r["section"] == "capture variants" and r["variant"] == "hard"), None)
    ratios = {}
    for r in rows:
        if hard and "error" not in hard and r["section"] == "capture variants" and "error" not in r \
                and r["variant"] != "hard":
            ratios[f"{r['variant']} vs hard time"] = round(common.ratio(r["median_s"], hard["median_s"]), 3)
            ratios[f"{r['variant']} vs hard memory"] = round(common.ratio(r["peak_mib"], hard["peak_mib"]), 3)
    default = rows[-1]
    fits = "error" not in default and default["reserved_peak_mib"] * 2**20 + CUDA_CONTEXT_BYTES <= EIGHT_GIB
    print("\nratios (variant / hard):", ratios)
    print(f"defaults (precision auto, checkpointing on as on a card under 16 GB) at {args.resolution} px: "
          f"{'fit' if fits else 'do NOT fit'} in 8 GB "
          f"(reserved peak {default.get('reserved_peak_mib', 'n/a')} MiB + 512 MiB context)")
    data = {"attention_kernel": attention, "unet_params": params, "unet_weight_dtype": weight_dtype,
            "rows": rows, "ratios": ratios, "defaults_fit_8gb": fits,
            "wall_s": round(time.perf_counter() - started, 1), "settings": vars(args)}
    path = common.write_result(args.name, data, device=device)
    print(f"wrote {path} in {data['wall_s']} s")
    return data


if __name__ == "__main__":
    main()
