"""What a LoRA export of the K/V deltas keeps, per rank: error against the full delta, file size, localisation.

One run is trained on the shapes world (the magenta ball of sample_data/shapes_pair, hard guidance, the
settings of bench/shapes_world.py). Its K/V deltas are written once as the full K/V file (the baseline,
measured in the same run) and once per rank as a LoRA (textloc.weights.lora_export.save_kv_lora). Per rank:
- mean and max over layers of the relative Frobenius error ||delta - up @ down|| / ||delta|| of the
  factors as stored (fp16);
- the LoRA file's size in bytes and its ratio to the full K/V file (the token's embedding, written
  beside both, is not counted);
- the token's share of attention inside the ball's mask on the 10 held-out scenes, with the LoRA
  applied by ComfyUI's own LoRA code (comfy.sd.load_lora_for_models, what the stock loaders call)
  against the full delta patch, and with the base model's K/V (the learned token alone).

    OMP_NUM_THREADS=2 .venv/bin/python bench/lora_export.py [--steps 100] [--ranks 1,2,4,8,16,32,64,768]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import common  # noqa: E402
from bench.localization import _train, evaluate  # noqa: E402
from bench.shapes_world import LEARNING_RATE, STEPS, load_world, train_config  # noqa: E402

RANKS = (1, 2, 4, 8, 16, 32, 64, 768)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ranks", default=",".join(str(r) for r in RANKS),
                        help="LoRA ranks (a rank at or above a layer's smaller side keeps it exact)")
    parser.add_argument("--steps", type=int, default=STEPS)
    parser.add_argument("--learning-rate", type=float, default=LEARNING_RATE)
    parser.add_argument("--guidance", default="hard", choices=("none", "soft", "hard"))
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--no-localization", action="store_true", help="skip the attention share per rank")
    parser.add_argument("--data", type=Path, default=common.ROOT / "sample_data")
    parser.add_argument("--name", default="lora_export")
    return parser.parse_args(argv)


def with_lora(model: Any, path: Path) -> Any:
    """A clone of `model` with the LoRA file patched in by ComfyUI's own LoRA code (strength 1)."""
    import comfy.sd
    import comfy.utils

    lora = comfy.utils.load_torch_file(str(path), safe_load=True)
    return comfy.sd.load_lora_for_models(model, None, lora, 1.0, 0.0)[0]


def own_share(models: tuple[Any, Any, Any], data: Any, config: Any, tokens: Any, work: Path) -> float:
    """The token's share of attention inside its own mask (the trainer's measure, mean over images)."""
    model, clip, vae = models
    measures, _ = evaluate(model, clip, vae, data, config, tokens, work)
    return float(measures["inside_own_mask"][0])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    from textloc.weights.files import read_metadata, save_kv_deltas
    from textloc.weights.lora_export import save_kv_lora

    checkpoint, models, sets = load_world(args.data)
    ranks = [int(r) for r in args.ranks.split(",") if r.strip()]
    work = Path(tempfile.mkdtemp(prefix="tl_lora_export_"))
    config = train_config(args.guidance, args.seed, args.steps, args.learning_rate)
    result = _train(models, sets["train"], config, work, "lora_bench")
    weights = result.weights()
    shapes = sorted({tuple(d.shape) for d in weights.kv_deltas.values()})
    print(f"world model {checkpoint.name}: {len(weights.kv_deltas)} K/V deltas of shapes {shapes}; "
          f"{args.guidance} guidance, {args.steps} steps, seed {args.seed}")

    full_path = work / "full_kv.safetensors"
    save_kv_deltas(full_path, weights.kv_deltas, weights.metadata)
    full_bytes = full_path.stat().st_size
    held_out = sets["held-out"]
    full_share = None if args.no_localization else own_share(
        (result.model, result.clip, models[2]), held_out, config, result.token_vectors, work)

    rows, per_rank = [], {}
    for rank in ranks:
        path = work / f"lora_r{rank}.safetensors"
        save_kv_lora(path, weights, rank)
        errors = json.loads(read_metadata(path)["relative_errors"])  # as the file records them
        values = np.array(list(errors.values()))
        size = path.stat().st_size
        share = None if args.no_localization else own_share(
            (with_lora(models[0], path), result.clip, models[2]), held_out, config, result.token_vectors, work)
        per_rank[rank] = {"mean_relative_error": float(values.mean()), "max_relative_error": float(values.max()),
                          "bytes": size, "ratio_to_full": common.ratio(size, full_bytes), "own_share": share,
                          "per_layer": errors}
        rows.append([rank, f"{values.mean():.4f}", f"{values.max():.4f}", size, common.fmt_ratio(size / full_bytes),
                     "-" if share is None else f"{share:.3f}"])
        print(f"  rank {rank}: mean error {values.mean():.4f}, {size} bytes", flush=True)
    rows.append(["full K/V file", "0", "0", full_bytes, "1.00x", "-" if full_share is None else f"{full_share:.3f}"])
    token_only = None if args.no_localization else own_share(models, held_out, config, result.token_vectors, work)
    rows.append(["no K/V delta (token only)", "1", "1", 0, "0.00x", "-" if token_only is None else f"{token_only:.3f}"])
    print(f"\nLoRA export of the K/V deltas, per rank (error: relative Frobenius over {len(weights.kv_deltas)} "
          "layers, fp16 factors; size: the LoRA file without the token; own: the token's share of attention "
          f"inside the ball on {held_out.num_images} held-out scenes)")
    table = common.print_table(["rank", "mean error", "max error", "bytes", "vs full K/V file", "own (held-out)"],
                               rows)
    data = {"checkpoint": checkpoint.name, "guidance": args.guidance, "steps": args.steps, "seed": args.seed,
            "learning_rate": args.learning_rate, "full_kv_bytes": full_bytes, "full_own_share": full_share,
            "token_only_own_share": token_only,
            "ranks": per_rank, "table": table, "settings": {k: str(v) for k, v in vars(args).items()}}
    path = common.write_result(args.name, data)
    print(f"wrote {path}")
    return data


if __name__ == "__main__":
    main()
