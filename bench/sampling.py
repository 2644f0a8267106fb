"""Sampling time: a model after Apply TL Weights vs the base model, and Show Token Attention vs plain sampling.

All on the tiny checkpoint with ComfyUI's own sampler (euler, CFG 7), timed in alternating rounds.
- base:    encode prompt, KSampler, VAE decode on the loaded model;
- applied: the same after Apply TL Weights (K/V deltas as diff patches, token via `embedding:`);
- show:    Show Token Attention's run (encode, sample on a hooked clone, decode, per-word maps).
Each model is loaded (and its weights patched) untimed before its run, as ComfyUI keeps a loaded
model between queue items; the one-off cost of patching is reported on its own.

    OMP_NUM_THREADS=1 .venv/bin/python bench/sampling.py
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import common  # noqa: E402

TARGETS = {"applied/base": "1.00 +- 0.05", "show/base": "<= 1.25"}
TOKEN = "tl_ball"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--resolutions", type=lambda t: [int(v) for v in t.split(",") if v.strip()],
                        default=[128, 256], help="image sizes in pixels (default 128,256)")
    parser.add_argument("--steps", type=int, default=6, help="sampler steps (default 6)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per variant (median is reported)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--attention", choices=common.ATTENTION_CHOICES, default="pytorch")
    parser.add_argument("--name", default="sampling", help="result file name under bench/results/")
    return parser.parse_args(argv)


def random_weights(model: Any, clip: Any, seed: int = 0) -> Any:
    """Trained-like weights: small K/V deltas for every attn2 to_k/to_v and one token vector."""
    from textloc.weights.apply import model_kv_shapes
    from textloc.weights.files import build_metadata
    from textloc.weights.trained import TrainedWeights

    gen = torch.Generator().manual_seed(seed)
    shapes = {k: s for k, s in model_kv_shapes(model).items() if ".to_k." in k or ".to_v." in k}
    deltas = {k: torch.randn(s, generator=gen) * 0.02 for k, s in shapes.items()}
    vector = torch.randn(1, 768, generator=gen) * 0.02
    meta = build_metadata(tokens=[TOKEN], class_words=["ball"], init_words=["sks"], steps=1, seed=seed,
                          base_model_family="SD15", base_hash="bench")
    return TrainedWeights(kv_deltas=deltas, token_vectors={TOKEN: {"clip_l": vector}}, metadata=meta)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    common.set_threads()
    attention = common.boot(args.attention)
    import comfy.model_management as mm
    import comfy.utils

    import nodes
    from textloc.attention import token_attention as ta
    from textloc.weights.apply import apply_weights

    comfy.utils.set_progress_bar_enabled(False)
    model, clip, vae = common.load_checkpoint()
    with torch.inference_mode():
        applied = apply_weights(model, clip, random_weights(model, clip), 1.0, 1.0, "weights")
    prompt_base = "photo of a ball on a table"
    prompt_applied = f"photo of a embedding:{TOKEN} ball on a table"

    def sampler(seed: int = 3):
        def sample(m: Any, positive: Any, negative: Any, latent: dict) -> dict:
            return nodes.common_ksampler(m, seed, args.steps, 7.0, "euler", "normal", positive, negative, latent)[0]
        return sample

    rows: list[dict[str, Any]] = []
    ratios: dict[str, dict[str, float]] = {}
    patch_seconds = 0.0
    for size in args.resolutions:
        latent = {"samples": torch.zeros(1, 4, size // 8, size // 8)}

        def plain(m: Any, c: Any, text: str, latent: dict = latent) -> None:
            with torch.inference_mode():
                pos = ta.encode_prompt(c, text)
                neg = ta.encode_prompt(c, "")
                out = sampler()(m, pos, neg, latent)
                vae.decode(out["samples"])

        def show(latent: dict = latent) -> None:
            with torch.inference_mode():
                ta.show_token_attention(model, clip, vae, prompt_base, "", "ball", latent, sampler())

        fns = {"base": lambda: plain(model, clip, prompt_base),
               "applied": lambda: plain(applied.model, applied.clip, prompt_applied),
               "show": show}
        before = {"base": lambda: mm.load_models_gpu([model]), "applied": lambda: mm.load_models_gpu([applied.model]),
                  "show": lambda: mm.load_models_gpu([model])}
        start = time.perf_counter()
        mm.load_models_gpu([applied.model])
        mm.load_models_gpu([model])
        patch_seconds = time.perf_counter() - start
        times = common.time_interleaved(fns, repeats=args.repeats, warmup=args.warmup, before=before)
        medians = {name: common.median(t) for name, t in times.items()}
        size_ratios = {"applied/base": round(common.ratio(medians["applied"], medians["base"]), 3),
                       "show/base": round(common.ratio(medians["show"], medians["base"]), 3)}
        ratios[f"{size}px"] = size_ratios
        print(f"\ntiny checkpoint, {size} px, {args.steps} euler steps, CFG 7, batch 1")
        common.print_table(["variant", "run s (median)", "runs"],
                           [[n, f"{medians[n]:.3f}", len(t)] for n, t in times.items()])
        for key, value in size_ratios.items():
            print(f"  {key}: {common.fmt_ratio(value)} (target {TARGETS[key]}: {common.verdict(value, TARGETS[key])})")
        rows += [{"resolution": size, "variant": n, "median_s": round(medians[n], 4),
                  "times_s": [round(v, 4) for v in t]} for n, t in times.items()]
    print(f"\none-off: loading the applied model and the base model back (weight patch + restore): "
          f"{patch_seconds:.3f} s")
    targets = {f"{where} {key}": f"{common.fmt_ratio(v)} (target {TARGETS[key]}: {common.verdict(v, TARGETS[key])})"
               for where, values in ratios.items() for key, v in values.items()}
    data = {"attention_kernel": attention, "rows": rows, "ratios": ratios, "targets": targets,
            "load_and_patch_s": round(patch_seconds, 4), "settings": vars(args)}
    path = common.write_result(args.name, data)
    print(f"wrote {path}")
    return data


if __name__ == "__main__":
    main()
