"""Gradient checkpointing: a training step's peak memory and time with it on vs off, in the same run.

The same trainer, model, photos and seed, with hard guidance and prior preservation (the authors'
defaults: 1 instance + 1 class row per concept here); only `gradient_checkpointing` differs. The model is
the reduced-depth SD1.5-width UNet at random init (bench/common.py: SD1.5's widths, heads and attention
levels, one res block per level), CLIP and TAESD from the tiny checkpoint. On a GPU the same comparison is
part of bench/gpu.py (precision x checkpointing).

    OMP_NUM_THREADS=2 .venv/bin/python bench/checkpointing.py [--resolution 512]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import common  # noqa: E402

TARGET = "<= 0.75"  # checkpointing on must cut the step's peak memory by at least a quarter


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--resolution", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=1, help="timed steps per setting (each is 20-60 s here)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--name", default="checkpointing", help="result file name under bench/results/")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    common.set_threads()
    attention = common.boot("pytorch")
    from textloc.config import TrainConfig

    tiny = common.load_checkpoint()
    unet = common.unet_patcher(common.SD15_REDUCED_UNET_CONFIG)
    params = common.param_count(unet.model.diffusion_model)
    dataset = common.toy_dataset(args.resolution, 1, prior=True)
    config = TrainConfig(guidance="hard", prior_weight=1.0, steps=10_000, learning_rate=1e-5, batch_size=1)
    work = Path(tempfile.mkdtemp(prefix="tl_bench_gc_"))
    runners = {mode: common.prepare_trainer(unet, tiny[1], tiny[2], dataset, config, work,
                                            checkpointing=mode == "on") for mode in ("off", "on")}
    stats = common.measure_steps(runners, repeats=args.repeats, warmup=args.warmup)
    off, on = stats["off"], stats["on"]
    memory = common.ratio(on.peak_bytes, off.peak_bytes)
    time_ratio = common.ratio(on.median_s, off.median_s)
    print(f"reduced SD1.5-width UNet ({params / 1e6:.0f}M params), {args.resolution} px, 1 instance + 1 class row, "
          f"attention {attention}")
    table = common.print_table(["gradient checkpointing", "step s", "peak MiB"],
                               [[mode, f"{s.median_s:.2f}", f"{common.mib(s.peak_bytes):.0f}"]
                                for mode, s in stats.items()])
    print(f"on/off memory {common.fmt_ratio(memory)} (target {TARGET}: {common.verdict(memory, TARGET)}), "
          f"on/off time {common.fmt_ratio(time_ratio)}")
    data = {"attention_kernel": attention, "unet_params": params,
            "resolution": args.resolution, "rows": {mode: s.as_dict() for mode, s in stats.items()},
            "ratios": {"on/off memory": round(memory, 3), "on/off time": round(time_ratio, 3)},
            "target": {"on/off memory": TARGET, "verdict": common.verdict(memory, TARGET)}, "table": table,
            "settings": vars(args)}
    path = common.write_result(args.name, data)
    print(f"wrote {path}")
    return data


if __name__ == "__main__":
    main()
