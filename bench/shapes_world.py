"""The paper in miniature, on the shapes world: guidance none (= Custom Diffusion) / soft / hard.

The world model (shapes_world/) was pretrained on balls and boxes of six colours. The training set
shows a magenta ball (a colour it never saw) beside a yellow box in 5 photos; a token `tl_ball`
(class "ball") is learned from mask_1 with the pack's trainer, once per guidance mode and seed.
Runs of one seed differ only in the guidance mode (same model, photos, seed, steps, learning rate).
Then, for each run:
(a) localisation: the token's share of attention inside the ball's mask and inside the box's, on
    the training photos and on 10 held-out scenes (the trainer's own measure, timesteps 250/500/750);
(b) generation from "a photo of a <token> ball" (ComfyUI's KSampler): fidelity = the picture shows
    magenta, leakage = it shows the box's yellow (the world's colour rules, shapes_world.judge);
(c) text alignment: the token in new contexts ("... on a green floor", "... and a red box",
    "... and a blue box"): whether the picture follows the added context.
"before" is the untrained model with the token at its start word. Means over seeds, with the
spread (population standard deviation) after the +-.

    OMP_NUM_THREADS=2 .venv/bin/python bench/shapes_world.py [--seeds 1,2,3] [--steps 100]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import common  # noqa: E402
from bench.localization import _train, evaluate, save_overlays  # noqa: E402
from shapes_world import judge as world_judge  # noqa: E402
from shapes_world.training_sets import HELDOUT_SET, PAIR, TRAIN_SET  # noqa: E402

MODES = ("none", "soft", "hard")
TOKEN = "tl_ball"
TOKEN_PROMPT = f"a photo of a embedding:{TOKEN} ball"
# (prompt, the colour it adds, the floor it asks for)
CONTEXT_PROMPTS: tuple[tuple[str, str | None, str | None], ...] = (
    (f"{TOKEN_PROMPT} on a green floor", None, "green"),
    (f"{TOKEN_PROMPT} and a red box", "red", None),
    (f"{TOKEN_PROMPT} and a blue box", "blue", None),
)
WORD_SEED = 4242  # scenes drawn after pretraining, from a seed pretraining never used
WORD_SCENES = 32
STEPS = 100
LEARNING_RATE = 3e-4
SAMPLE_STEPS = 20
SAMPLE_CFG = 5.0
RESOLUTION = 64


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="1,2,3", help="training seeds (each runs every mode)")
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--steps", type=int, default=STEPS)
    parser.add_argument("--learning-rate", type=float, default=LEARNING_RATE)
    parser.add_argument("--attention-weight", type=float, default=1.0)
    parser.add_argument("--images", type=int, default=16, help="pictures generated per prompt and run")
    parser.add_argument("--data", type=Path, default=common.ROOT / "sample_data")
    parser.add_argument("--out", type=Path, default=common.RESULTS_DIR / "shapes_world")
    parser.add_argument("--name", default="shapes_world")
    return parser.parse_args(argv)


def train_config(guidance: str, seed: int, steps: int = STEPS, learning_rate: float = LEARNING_RATE,
                 attention_weight: float = 1.0) -> Any:
    """The runs' shared settings; only `guidance` differs between the runs of one seed."""
    from textloc.config import TrainConfig

    return TrainConfig(guidance=guidance, attention_weight=attention_weight, prior_weight=0.0, steps=steps,
                       learning_rate=learning_rate, seed=seed, checkpoint_every=steps, preview_every=0)


def _config(args: argparse.Namespace, guidance: str, seed: int) -> Any:
    return train_config(guidance, seed, args.steps, args.learning_rate, args.attention_weight)


def load_sets(folder: Path) -> dict[str, Any]:
    """The training photos and the held-out scenes, each with the ball as its one concept."""
    from textloc.data.dataset import build_concept, load_dataset

    sets = {}
    with torch.inference_mode():
        for split, name in (("train", TRAIN_SET), ("held-out", HELDOUT_SET)):
            data = load_dataset(folder, name, resolution=RESOLUTION)
            sets[split] = data.with_concept(build_concept(data, token=TOKEN, class_word=PAIR.new_shape, mask_index=1))
    return sets


def generate(model: Any, clip: Any, vae: Any, prompt: str, count: int, seed: int) -> np.ndarray:
    """`count` pictures from ComfyUI's own nodes: CLIPTextEncode, EmptyLatentImage, KSampler, VAEDecode."""
    import nodes

    with torch.inference_mode():
        positive = nodes.CLIPTextEncode().encode(clip, prompt)[0]
        negative = nodes.CLIPTextEncode().encode(clip, "")[0]
        latent = nodes.EmptyLatentImage().generate(RESOLUTION, RESOLUTION, count)[0]
        samples = nodes.common_ksampler(model, seed, SAMPLE_STEPS, SAMPLE_CFG, "euler", "normal",
                                        positive, negative, latent)[0]
        images = nodes.VAEDecode().decode(vae, samples)[0]
    return (images.clamp(0, 1).numpy() * 255).round().astype(np.uint8)


def judge_pictures(pictures: np.ndarray, wanted_color: str | None = None,
                   wanted_floor: str | None = None) -> dict[str, float]:
    scores = world_judge.rates(pictures, PAIR.new_color, PAIR.distractor_color, wanted_color, wanted_floor)
    scores.pop("pictures")
    return scores


def save_grid(path: Path, rows: list[np.ndarray]) -> None:
    """One row of pictures per prompt, scaled x2 so a person can see them."""
    grid = np.concatenate([np.concatenate(list(r), axis=1) for r in rows], axis=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid).resize((grid.shape[1] * 2, grid.shape[0] * 2), Image.NEAREST).save(path)


def score_run(models: tuple[Any, Any, Any], clip: Any, sets: dict[str, Any], config: Any, tokens: Any,
              args: argparse.Namespace, label: str, work: Path, sample_seed: int,
              keep_pictures: bool) -> dict[str, float]:
    """Localisation on both image sets, then fidelity, leakage and text alignment of new pictures."""
    model, _, vae = models
    scores: dict[str, float] = {}
    for split, data in sets.items():
        measures, maps = evaluate(model, clip, vae, data, config, tokens, work)
        scores[f"{split} own"] = measures["inside_own_mask"][0]
        scores[f"{split} other"] = measures["inside_other_objects"][0]
        if keep_pictures:
            save_overlays(args.out / f"{label}_{split}_attention.png", data.images, maps[:, 0],
                          data.concepts[0].masks)
    from textloc.weights.apply import clip_with_tokens

    prompt_clip = clip_with_tokens(clip, tokens) if tokens else clip
    rows = []
    pictures = generate(model, prompt_clip, vae, TOKEN_PROMPT, args.images, sample_seed)
    rows.append(pictures[:8])
    scores.update({f"token {k}": v for k, v in judge_pictures(pictures).items()})
    follows = []
    for prompt, color, floor in CONTEXT_PROMPTS:
        pictures = generate(model, prompt_clip, vae, prompt, args.images, sample_seed)
        rows.append(pictures[:8])
        follows.append(judge_pictures(pictures, color, floor)["follows"])
    scores["context follows"] = float(np.mean(follows))
    if keep_pictures:
        save_grid(args.out / f"{label}_generated.png", rows)
    return scores


def pretrained_word_shares(models: tuple[Any, Any, Any]) -> Any:
    """Where the model's own colour and shape words attend on world scenes it never saw."""
    from shapes_world.model import RESOLUTION as WORLD_RESOLUTION
    from shapes_world.scenes import scene_batch
    from shapes_world.word_attention import word_shares

    scenes, images, masks = scene_batch(WORD_SEED, WORD_SCENES, WORLD_RESOLUTION)
    with torch.inference_mode():
        return word_shares(*models, scenes, images, masks)


def load_world(data: Path) -> tuple[Path, tuple[Any, Any, Any], dict[str, Any]]:
    """(checkpoint, (MODEL, CLIP, VAE), training and held-out sets) after ComfyUI's boot."""
    common.set_threads()
    common.boot("pytorch")
    from shapes_world.model import ensure_world_checkpoint

    checkpoint = ensure_world_checkpoint()
    return checkpoint, common.load_checkpoint(checkpoint), load_sets(data)


def write_world_result(args: argparse.Namespace, data: dict[str, Any], config: Any) -> dict[str, Any]:
    """Add the runs' shared training settings and the command's arguments, write the result file, say where."""
    shared = {k: v for k, v in dataclasses.asdict(config).items() if k not in ("guidance", "seed")}
    data = {**data, "config": shared,
            "settings": {k: str(v) for k, v in vars(args).items()}}
    path = common.write_result(args.name, data)
    print(f"pictures in {args.out}\nwrote {path}")
    return data


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    checkpoint, models, sets = load_world(args.data)
    words = pretrained_word_shares(models)
    print(f"pretrained words on {WORD_SCENES} new scenes: share inside their object: colour words "
          f"{words.color:.3f}, shape words {words.shape:.3f}; chance (object area) {words.chance:.3f}; "
          f"{words.ratio():.1f}x chance")
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    work = Path(tempfile.mkdtemp(prefix="tl_shapes_world_"))
    print(f"world model {checkpoint.name}; {sets['train'].num_images} training photos, "
          f"{sets['held-out'].num_images} held-out scenes; seeds {seeds}; {args.steps} steps, lr {args.learning_rate}")

    runs: dict[str, list[dict[str, float]]] = {"before": []}
    for seed in seeds:
        base_config = _config(args, "none", seed)
        runs["before"].append(score_run(models, models[1], sets, base_config, None, args, "before", work, seed,
                                        seed == seeds[0]))
        for mode in modes:
            config = _config(args, mode, seed)
            result = _train(models, sets["train"], config, work, f"{mode}_{seed}")
            scores = score_run((result.model, result.clip, models[2]), result.clip, sets, config,
                               result.token_vectors, args, mode, work, seed, seed == seeds[0])
            runs.setdefault(mode, []).append(scores)
            print(f"  seed {seed} {mode}: " + ", ".join(f"{k} {v:.3f}" for k, v in scores.items()), flush=True)

    columns = list(runs["before"][0])
    summary = {mode: {k: (float(np.mean([r[k] for r in rs])), float(np.std([r[k] for r in rs]))) for k in columns}
               for mode, rs in runs.items()}
    rows = [[mode, *(f"{summary[mode][k][0]:.3f} ± {summary[mode][k][1]:.3f}" for k in columns)] for mode in runs]
    print(f"\nMean ± spread over seeds {seeds} (own: share inside the ball's mask, other: inside the box's; "
          "fidelity: magenta shown; leakage: the box's yellow shown; context follows: new floor/object shown)")
    table = common.print_table(["run", *columns], rows)
    data = {"checkpoint": checkpoint.name, "seeds": seeds, "modes": modes, "table": table,
            "pretrained_words": dataclasses.asdict(words) | {"scenes": WORD_SCENES, "seed": WORD_SEED},
            "summary": summary, "runs": runs,
            "sampling": {"steps": SAMPLE_STEPS, "cfg": SAMPLE_CFG, "sampler": "euler", "images": args.images}}
    return write_world_result(args, data, _config(args, "hard", 0))


if __name__ == "__main__":
    main()
