"""The paper in miniature, on the shapes world: what the pictures made with a learned token show.

The world model (shapes_world/) was pretrained on balls and boxes of six colours. The training set
shows a magenta ball (a colour it never saw) beside a yellow box in 5 photos; the token `tl_ball`
(class "ball") is learned from the ball's mask with the pack's trainer. Runs of one seed differ only
in the setting under test: the guidance (none = Custom Diffusion, soft, hard) and where the denoising
loss looks (the whole photo, or the masked loss). Every run uses the world recipe
(headless/world_settings.py): prior preservation with class images the untrained model draws from the
class word through ComfyUI's sampler, the world's learning rate and lengths.

For each run, on pictures from ComfyUI's KSampler read by the world's object rules (shapes_world.judge):
- fidelity: the picture shows a magenta ball; leakage: it shows the yellow box (colour AND shape);
  collapsed: object colours cover the picture; green floor: the floor reads green (the old drift);
  at every checkpoint length of the sweep, from "a photo of a <token> ball";
- context follows: the token in new contexts ("... on a green floor", "... and a red box",
  "... and a blue box"): the picture shows what was added;
- drift: prompts WITHOUT the token ("a photo of a red ball", "a photo of a blue box on a brown floor")
  before and after training: does the picture still show what they ask, and does the yellow box
  appear in them;
- localisation: the token's share of attention inside the ball's mask and the box's, on the training
  photos and 10 held-out scenes (the trainer's own measure);
- two concepts: `tl_ball` and `tl_box` learned together from both masks; per token alone its own
  object and the other's, and with both tokens in one prompt the share showing both (composition).
Rates are counts of pictures with 90 % Wilson intervals, pooled over seeds, with the per-seed rates.
"before" is the untrained model with the token at its start word.

    OMP_NUM_THREADS=2 .venv/bin/python bench/shapes_world.py [--seeds 1,2,3] [--images 64]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import common  # noqa: E402
from bench.localization import _train, evaluate, save_overlays  # noqa: E402
from headless import world_settings as world  # noqa: E402
from shapes_world import judge as world_judge  # noqa: E402
from shapes_world.training_sets import HELDOUT_SET, PAIR, TRAIN_SET  # noqa: E402
from textloc.evaluation.rates import Rate, pooled  # noqa: E402

TOKEN = "tl_ball"
BOX_TOKEN = "tl_box"
TOKEN_PROMPT = f"a photo of a embedding:{TOKEN} {PAIR.new_shape}"
BOX_PROMPT = f"a photo of a embedding:{BOX_TOKEN} {PAIR.distractor_shape}"
PAIR_PROMPT = f"{TOKEN_PROMPT} and a embedding:{BOX_TOKEN} {PAIR.distractor_shape}"
NEW = (PAIR.new_color, PAIR.new_shape)
DISTRACTOR = (PAIR.distractor_color, PAIR.distractor_shape)
Wanted = world_judge.Wanted
# the token in new contexts: (prompt, what the picture must show)
CONTEXT_PROMPTS: tuple[tuple[str, Wanted], ...] = (
    (f"{TOKEN_PROMPT} on a green floor", Wanted(floor="green")),
    (f"{TOKEN_PROMPT} and a red box", Wanted(objects=(("red", "box"),))),
    (f"{TOKEN_PROMPT} and a blue box", Wanted(objects=(("blue", "box"),))),
)
# prompts without the token: what every run must leave alone
DRIFT_PROMPTS: tuple[tuple[str, Wanted], ...] = (
    ("a photo of a red ball", Wanted(objects=(("red", "ball"),))),
    ("a photo of a blue box on a brown floor", Wanted(objects=(("blue", "box"),), floor="brown")),
)
# run name -> (guidance, denoise region); a seed's runs differ in nothing else
RUNS: dict[str, tuple[str, str]] = {
    "none": ("none", "whole photo"),
    "soft": ("soft", "whole photo"),
    "hard": ("hard", "whole photo"),
    "masked": ("none", world.WORLD_DENOISE_REGION_MASKED),
    "hard + masked": ("hard", world.WORLD_DENOISE_REGION_MASKED),
}
SWEEP_RUNS = ("none", "soft", "hard")
TWO_CONCEPT_RUNS = ("none", "hard")
WORD_SEED = 4242  # scenes drawn after pretraining, from a seed pretraining never used
WORD_SCENES = 32
RESOLUTION = world.WORLD_RESOLUTION
# What earlier benchmarks (auto_masks, lora_export) train with: the world recipe's settings.
STEPS = world.WORLD_TRAIN_STEPS
LEARNING_RATE = world.WORLD_LEARNING_RATE
LEAKY = 0.30  # "none leaks": at least this share of pictures shows the distractor


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="1,2,3", help="training seeds (each runs every run kind)")
    parser.add_argument("--runs", default=",".join(RUNS), help=f"one-concept runs, of {', '.join(RUNS)}")
    parser.add_argument("--sweep-runs", default=",".join(SWEEP_RUNS),
                        help="runs also scored at every length of --lengths")
    parser.add_argument("--two-concept-runs", default=",".join(TWO_CONCEPT_RUNS),
                        help="two-concept runs ('' for none)")
    parser.add_argument("--steps", type=int, default=world.WORLD_TRAIN_STEPS, help="the recipe's length")
    parser.add_argument("--lengths", default=",".join(str(s) for s in world.WORLD_SWEEP_STEPS),
                        help="training lengths of the sweep (checkpoints of one run)")
    parser.add_argument("--learning-rate", type=float, default=world.WORLD_LEARNING_RATE)
    parser.add_argument("--class-images", type=int, default=world.WORLD_CLASS_IMAGES,
                        help="class images per concept for prior preservation (0: prior off)")
    parser.add_argument("--masked-region", default=world.WORLD_DENOISE_REGION_MASKED)
    parser.add_argument("--images", type=int, default=64, help="pictures per run, seed and length (token prompt)")
    parser.add_argument("--context-images", type=int, default=32, help="pictures per context and drift prompt")
    parser.add_argument("--data", type=Path, default=common.ROOT / "sample_data")
    parser.add_argument("--out", type=Path, default=common.RESULTS_DIR / "shapes_world")
    parser.add_argument("--name", default="shapes_world")
    return parser.parse_args(argv)


def names(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def train_config(guidance: str, seed: int, steps: int = STEPS, learning_rate: float = LEARNING_RATE,
                 attention_weight: float = 1.0, denoise_region: str = "whole photo",
                 prior: bool = False, checkpoint_every: int = 0) -> Any:
    """The runs' shared settings; between the runs of one seed only guidance and region differ."""
    from textloc.config import TrainConfig

    return TrainConfig(guidance=guidance, attention_weight=attention_weight, prior_weight=1.0 if prior else 0.0,
                       steps=steps, learning_rate=learning_rate, seed=seed, checkpoint_every=checkpoint_every or steps,
                       preview_every=0, denoise_region=denoise_region)


# ---------------------------------------------------------------------------------------------- data


def load_sets(folder: Path, class_images: dict[str, torch.Tensor] | None = None,
              two_concepts: bool = False) -> dict[str, Any]:
    """The training photos and the held-out scenes: the ball as the one concept (or ball and box)."""
    from textloc.data.dataset import build_concept, load_dataset

    classes = class_images or {}
    sets = {}
    with torch.inference_mode():
        for split, name in (("train", TRAIN_SET), ("held-out", HELDOUT_SET)):
            data = load_dataset(folder, name, resolution=RESOLUTION)
            data = data.with_concept(build_concept(data, token=TOKEN, class_word=PAIR.new_shape, mask_index=1,
                                                   class_images=classes.get(PAIR.new_shape)))
            if two_concepts:
                data = data.with_concept(build_concept(
                    data, token=BOX_TOKEN, class_word=PAIR.distractor_shape, mask_index=2,
                    class_images=classes.get(PAIR.distractor_shape)))
            sets[split] = data
    return sets


def generate(model: Any, clip: Any, vae: Any, prompt: str, count: int, seed: int) -> np.ndarray:
    """`count` pictures from ComfyUI's own nodes: CLIPTextEncode, EmptyLatentImage, KSampler, VAEDecode."""
    import nodes

    with torch.inference_mode():
        positive = nodes.CLIPTextEncode().encode(clip, prompt)[0]
        negative = nodes.CLIPTextEncode().encode(clip, "")[0]
        latent = nodes.EmptyLatentImage().generate(RESOLUTION, RESOLUTION, count)[0]
        samples = nodes.common_ksampler(model, seed, world.WORLD_SAMPLE_STEPS, world.WORLD_SAMPLE_CFG,
                                        world.WORLD_SAMPLER, world.WORLD_SCHEDULER, positive, negative, latent)[0]
        images = nodes.VAEDecode().decode(vae, samples)[0]
    return (images.clamp(0, 1).numpy() * 255).round().astype(np.uint8)


def class_images(models: tuple[Any, Any, Any], words: list[str], count: int) -> dict[str, torch.Tensor]:
    """Prior-preservation images: what the untrained model draws from each class word (as the authors do)."""
    if count <= 0:
        return {}
    return {word: torch.from_numpy(generate(*models, word, count, world.WORLD_CLASS_SEED)).float() / 255.0
            for word in words}


def save_grid(path: Path, rows: list[np.ndarray], per_row: int = 8) -> None:
    """Pictures in rows of `per_row`, scaled x2 so a person can see them."""
    lines = [np.concatenate(list(r[i:i + per_row]), axis=1) for r in rows for i in range(0, len(r), per_row)]
    grid = np.concatenate(lines, axis=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid).resize((grid.shape[1] * 2, grid.shape[0] * 2), Image.NEAREST).save(path)


# ---------------------------------------------------------------------------------------------- scoring


@dataclasses.dataclass
class Applied:
    """A model and CLIP with one state of the learned weights applied (or none: the untrained model)."""

    model: Any
    clip: Any
    vae: Any
    tokens: dict[str, dict[str, torch.Tensor]] | None

    def prompt(self, text: str) -> str:
        """Before training the token is its start word."""
        if self.tokens is not None:
            return text
        return text.replace(f"embedding:{TOKEN}", "sks").replace(f"embedding:{BOX_TOKEN}", "sks")


def applied(models: tuple[Any, Any, Any], kv: dict[str, torch.Tensor] | None,
            tokens: dict[str, dict[str, torch.Tensor]] | None) -> Applied:
    from textloc.training.kv_deltas import as_diff_patches
    from textloc.weights.apply import clip_with_tokens

    model, clip, vae = models
    if kv is None or tokens is None:
        return Applied(model, clip, vae, None)
    patched = model.clone()
    patched.add_patches(as_diff_patches(kv), 1.0)
    return Applied(patched, clip_with_tokens(clip, tokens), vae, tokens)


def checkpoint_state(run: Any, step: int) -> tuple[dict[str, torch.Tensor], dict[str, dict[str, torch.Tensor]]]:
    """(K/V deltas, token vectors) of a run's checkpoint after `step` steps."""
    from textloc.weights.files import CHECKPOINT_PREFIX, load_training_checkpoint

    ckpt = load_training_checkpoint(run.checkpoints_dir / f"{CHECKPOINT_PREFIX}{step:06d}")
    return ckpt.kv_deltas, ckpt.token_vectors


def picture_rates(state: Applied, prompt: str, count: int, seed: int, new: tuple[str, str] = NEW,
                  distractor: tuple[str, str] = DISTRACTOR, wanted: Wanted | None = None
                  ) -> tuple[dict[str, Rate], np.ndarray]:
    pictures = generate(state.model, state.clip, state.vae, state.prompt(prompt), count, seed)
    return world_judge.rates(pictures, new, distractor, wanted), pictures


def full_scores(state: Applied, sets: dict[str, Any], config: Any, args: argparse.Namespace, seed: int,
                work: Path, label: str, keep_pictures: bool) -> tuple[dict[str, Rate], dict[str, float]]:
    """Pictures of the token prompt, its contexts and the drift prompts, and the token's localisation."""
    rates, pictures = picture_rates(state, TOKEN_PROMPT, args.images, seed)
    rows = [pictures[:16]]
    for index, (prompt, wanted) in enumerate(CONTEXT_PROMPTS):
        got, pictures = picture_rates(state, prompt, args.context_images, seed, wanted=wanted)
        rates[f"context {index + 1} follows"] = got["follows"]
        rows.append(pictures[:8])
    for index, (prompt, wanted) in enumerate(DRIFT_PROMPTS):
        got, pictures = picture_rates(state, prompt, args.context_images, seed, wanted=wanted)
        rates[f"other prompt {index + 1} follows"] = got["follows"]
        rates[f"other prompt {index + 1} leakage"] = got["leakage"]
        rows.append(pictures[:8])
    if keep_pictures:
        save_grid(args.out / f"{label}_generated.png", rows)
    shares: dict[str, float] = {}
    for split, data in sets.items():
        measures, maps = evaluate(state.model, state.clip, state.vae, data, config, state.tokens, work)
        shares[f"{split} own"] = measures["inside_own_mask"][0]
        shares[f"{split} other"] = measures["inside_other_objects"][0]
        if keep_pictures:
            save_overlays(args.out / f"{label}_{split}_attention.png", data.images, maps[:, 0], data.concepts[0].masks)
    return rates, shares


def two_concept_scores(state: Applied, args: argparse.Namespace, seed: int, label: str,
                       keep_pictures: bool) -> dict[str, Rate]:
    """Each token alone (its own object, the other's), and both in one prompt (composition)."""
    ball, pictures = picture_rates(state, TOKEN_PROMPT, args.images, seed)
    box, box_pictures = picture_rates(state, BOX_PROMPT, args.images, seed, new=DISTRACTOR, distractor=NEW)
    both, pair_pictures = picture_rates(state, PAIR_PROMPT, args.images, seed, wanted=Wanted(objects=(NEW, DISTRACTOR)))
    if keep_pictures:
        save_grid(args.out / f"two_concepts_{label}_generated.png", [pictures[:8], box_pictures[:8], pair_pictures[:8]])
    return {"ball token: magenta ball": ball["fidelity"], "ball token: yellow box": ball["leakage"],
            "box token: yellow box": box["fidelity"], "box token: magenta ball": box["leakage"],
            "both tokens: both objects": both["follows"]}


# ---------------------------------------------------------------------------------------------- tables


def rate_cell(rates: list[Rate]) -> str:
    """Pooled rate [90 % interval] (per-seed rates)."""
    per_seed = "/".join(f"{r.value:.2f}" for r in rates)
    return f"{pooled(rates)} ({per_seed})"


def mean_cell(values: list[float]) -> str:
    return f"{np.mean(values):.3f} ± {np.std(values):.3f}"


def collect(per_seed: list[dict[str, Rate]]) -> dict[str, list[Rate]]:
    return {key: [scores[key] for scores in per_seed] for key in per_seed[0]}


def targets(sweep: dict[str, dict[int, dict[str, list[Rate]]]], primary: dict[str, dict[str, list[Rate]]],
            before: dict[str, Rate], two: dict[str, dict[str, list[Rate]]], steps: int) -> dict[str, Any]:
    """The issue's targets, judged on what was measured (nothing here is assumed)."""
    out: dict[str, Any] = {}
    leaky = [n for n in sorted(sweep.get("none", {})) if pooled(sweep["none"][n]["leakage"]).value >= LEAKY]
    if leaky:
        length = leaky[0]
        none = pooled(sweep["none"][length]["leakage"])
        for run in ("hard", "hard + masked", "masked"):
            got = sweep.get(run, {}).get(length) or (primary.get(run) if length == steps else None)
            if got is None:
                continue
            rate = pooled(got["leakage"])
            out[f"leakage at {length} steps: {run} <= half of none, intervals apart"] = {
                "measured": f"{rate} vs none {none}",
                "verdict": "met" if rate.value <= none.value / 2 and rate.separated_below(none) else "missed"}
    else:
        out["a length where none leaks in >= 30 % of pictures"] = {
            "measured": ", ".join(f"{n}: {pooled(v['leakage'])}" for n, v in sorted(sweep.get("none", {}).items())),
            "verdict": "not found"}
    green_before = before["green floor"].value
    for run, scores in primary.items():
        green = pooled(scores["green floor"]).value
        out[f"drift, {run}: green floors within 10 points of before ({green_before:.2f})"] = {
            "measured": f"{green:.2f}", "verdict": "met" if green - green_before <= 0.10 else "missed"}
    if "none" in primary:
        none_fidelity = pooled(primary["none"]["fidelity"]).value
        for run, scores in primary.items():
            fidelity = pooled(scores["fidelity"]).value
            follows = [pooled(scores[k]).value for k in scores if k.startswith("context")]
            out[f"{run}: fidelity not below none's by more than 10 points"] = {
                "measured": f"{fidelity:.2f} vs {none_fidelity:.2f}",
                "verdict": "met" if fidelity >= none_fidelity - 0.10 else "missed"}
            out[f"{run}: context prompts followed in >= 90 %"] = {
                "measured": f"{np.mean(follows):.2f}", "verdict": "met" if np.mean(follows) >= 0.9 else "missed"}
    if "none" in two and "hard" in two:
        none = pooled(two["none"]["both tokens: both objects"]).value
        hard = pooled(two["hard"]["both tokens: both objects"]).value
        out["two concepts: composition with hard >= none + 20 points"] = {
            "measured": f"{hard:.2f} vs {none:.2f}", "verdict": "met" if hard >= none + 0.2 else "missed"}
    return out


# ---------------------------------------------------------------------------------------------- main


def load_world(data: Path) -> tuple[Path, tuple[Any, Any, Any], dict[str, Any]]:
    """(checkpoint, (MODEL, CLIP, VAE), training and held-out sets without class images) after ComfyUI's boot."""
    common.set_threads()
    common.boot("pytorch")
    from shapes_world.model import ensure_world_checkpoint

    checkpoint = ensure_world_checkpoint()
    return checkpoint, common.load_checkpoint(checkpoint), load_sets(data)


def pretrained_word_shares(models: tuple[Any, Any, Any]) -> Any:
    """Where the model's own colour and shape words attend on world scenes it never saw."""
    from shapes_world.model import RESOLUTION as WORLD_RESOLUTION
    from shapes_world.scenes import scene_batch
    from shapes_world.word_attention import word_shares

    scenes, images, masks = scene_batch(WORD_SEED, WORD_SCENES, WORLD_RESOLUTION)
    with torch.inference_mode():
        return word_shares(*models, scenes, images, masks)


def write_world_result(args: argparse.Namespace, data: dict[str, Any], config: Any) -> dict[str, Any]:
    """Add the runs' shared training settings and the command's arguments, write the result file, say where."""
    shared = {k: v for k, v in dataclasses.asdict(config).items() if k not in ("guidance", "seed", "denoise_region")}
    data = {**data, "config": shared, "settings": {k: str(v) for k, v in vars(args).items()}}
    path = common.write_result(args.name, data)
    print(f"pictures in {args.out}\nwrote {path}")
    return data


def _timed(label: str, fn: Callable[[], Any]) -> Any:
    started = time.monotonic()
    out = fn()
    print(f"  {label}: {time.monotonic() - started:.0f} s", flush=True)
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    started = time.monotonic()
    checkpoint, models, _ = load_world(args.data)
    words = pretrained_word_shares(models)
    print(f"pretrained words on {WORD_SCENES} new scenes: share inside their object: colour words "
          f"{words.color:.3f}, shape words {words.shape:.3f}; chance (object area) {words.chance:.3f}; "
          f"{words.ratio():.1f}x chance")
    seeds = [int(s) for s in names(args.seeds)]
    runs, sweep_runs, two_runs = names(args.runs), set(names(args.sweep_runs)), names(args.two_concept_runs)
    lengths = sorted({int(s) for s in names(args.lengths)} | {args.steps})
    prior = args.class_images > 0
    classes = class_images(models, [PAIR.new_shape, PAIR.distractor_shape], args.class_images)
    if classes:
        save_grid(args.out / "class_images.png", [(v[:16].numpy() * 255).round().astype(np.uint8)
                                                  for v in classes.values()])
    sets = load_sets(args.data, classes)
    work = Path(tempfile.mkdtemp(prefix="tl_shapes_world_"))
    print(f"world model {checkpoint.name}; {sets['train'].num_images} training photos, "
          f"{sets['held-out'].num_images} held-out scenes; seeds {seeds}; recipe: {args.steps} steps "
          f"(sweep {lengths}), lr {args.learning_rate}, {args.class_images} class images per concept")

    def config(run: str, seed: int, steps: int, every: int = 0) -> Any:
        guidance, region = RUNS[run]
        if run not in ("none", "soft", "hard"):
            region = args.masked_region
        return train_config(guidance, seed, steps, args.learning_rate, denoise_region=region, prior=prior,
                            checkpoint_every=every)

    base = applied(models, None, None)
    before_rates, before_shares = _timed("before", lambda: full_scores(
        base, sets, config("none", seeds[0], args.steps), args, seeds[0], work, "before", True))
    sweep: dict[str, dict[int, list[dict[str, Rate]]]] = {}
    primary: dict[str, list[dict[str, Rate]]] = {}
    shares: dict[str, list[dict[str, float]]] = {}
    for seed in seeds:
        for run in runs:
            steps = max(lengths) if run in sweep_runs else args.steps
            every = int(np.gcd.reduce(lengths)) if run in sweep_runs else steps
            result = _timed(f"seed {seed} {run}: train {steps} steps",
                            lambda run=run, steps=steps, every=every: _train(
                                models, sets["train"], config(run, seed, steps, every), work,
                                f"{run.replace(' + ', '_')}_{seed}"))
            for length in (lengths if run in sweep_runs else [steps]):
                state = applied(models, *checkpoint_state(result.run, length))
                if length == args.steps:
                    rates, got_shares = _timed(f"seed {seed} {run} at {length}: score", lambda state=state, run=run: full_scores(
                        state, sets, config(run, seed, args.steps), args, seed, work,
                        run.replace(" + ", "_"), seed == seeds[0]))
                    primary.setdefault(run, []).append(rates)
                    shares.setdefault(run, []).append(got_shares)
                else:
                    rates, _ = picture_rates(state, TOKEN_PROMPT, args.images, seed)
                if run in sweep_runs:
                    sweep.setdefault(run, {}).setdefault(length, []).append(rates)
                print(f"    {run} {length} steps: fidelity {rates['fidelity']}, leakage {rates['leakage']}, "
                      f"green floor {rates['green floor']}", flush=True)

    two: dict[str, list[dict[str, Rate]]] = {}
    if two_runs:
        pair_sets = load_sets(args.data, classes, two_concepts=True)
        for seed in seeds:
            for run in two_runs:
                result = _timed(f"seed {seed} two concepts {run}: train", lambda run=run: _train(
                    models, pair_sets["train"], config(run, seed, args.steps), work, f"pair_{run.replace(' + ', '_')}_{seed}"))
                state = applied(models, *checkpoint_state(result.run, args.steps))
                two.setdefault(run, []).append(two_concept_scores(state, args, seed, run.replace(" + ", "_"),
                                                                  seed == seeds[0]))

    primary_rates = {run: collect(v) for run, v in primary.items()}
    sweep_rates = {run: {n: collect(v) for n, v in by.items()} for run, by in sweep.items()}
    two_rates = {run: collect(v) for run, v in two.items()}
    columns = ["fidelity", "leakage", "collapsed", "green floor"]
    print(f"\nOne concept, token prompt, by training length (pooled over seeds {seeds}; 90 % Wilson interval; "
          "per-seed rates in brackets)")
    sweep_table = common.print_table(
        ["run", "steps", *columns],
        [["before", 0, *(str(before_rates[c]) for c in columns)]]
        + [[run, n, *(rate_cell(sweep_rates[run][n][c]) for c in columns)]
           for run in sweep_rates for n in sorted(sweep_rates[run])])
    keys = [k for k in before_rates if k.startswith(("context", "other prompt"))]
    print(f"\nAt {args.steps} steps: every run (contexts and prompts without the token)")
    primary_table = common.print_table(
        ["run", *columns, *keys],
        [["before", *(str(before_rates[c]) for c in columns + keys)]]
        + [[run, *(rate_cell(r[c]) for c in columns + keys)] for run, r in primary_rates.items()])
    print("\nLocalisation (share of the token's attention inside the ball / the box), mean ± spread over seeds")
    share_keys = list(before_shares)
    share_table = common.print_table(
        ["run", *share_keys], [["before", *(f"{before_shares[k]:.3f}" for k in share_keys)]]
        + [[run, *(mean_cell([s[k] for s in v]) for k in share_keys)] for run, v in shares.items()])
    two_table = ""
    if two_rates:
        print("\nTwo concepts (tl_ball and tl_box learned together)")
        two_keys = list(next(iter(two_rates.values())))
        two_table = common.print_table(["run", *two_keys],
                                       [[run, *(rate_cell(r[k]) for k in two_keys)] for run, r in two_rates.items()])
    verdicts = targets(sweep_rates, primary_rates, before_rates, two_rates, args.steps)
    print()
    target_table = common.print_table(["target", "measured", "verdict"],
                                      [[k, v["measured"], v["verdict"]] for k, v in verdicts.items()])
    minutes = (time.monotonic() - started) / 60
    print(f"\n{minutes:.1f} minutes")

    def as_data(rates: dict[str, list[Rate]]) -> dict[str, Any]:
        return {k: {"pooled": pooled(v).as_dict(), "per_seed": [r.as_dict() for r in v]} for k, v in rates.items()}

    data = {"checkpoint": checkpoint.name, "seeds": seeds, "minutes": round(minutes, 1),
            "pretrained_words": dataclasses.asdict(words) | {"scenes": WORD_SCENES, "seed": WORD_SEED},
            "recipe": {"steps": args.steps, "lengths": lengths, "learning_rate": args.learning_rate,
                       "class_images": args.class_images, "masked_region": args.masked_region},
            "tables": {"sweep": sweep_table, "primary": primary_table, "localisation": share_table,
                       "two_concepts": two_table, "targets": target_table},
            "before": {k: v.as_dict() for k, v in before_rates.items()}, "before_shares": before_shares,
            "sweep": {run: {str(n): as_data(v) for n, v in by.items()} for run, by in sweep_rates.items()},
            "primary": {run: as_data(v) for run, v in primary_rates.items()}, "shares": shares,
            "two_concepts": {run: as_data(v) for run, v in two_rates.items()}, "targets": verdicts,
            "sampling": {"steps": world.WORLD_SAMPLE_STEPS, "cfg": world.WORLD_SAMPLE_CFG,
                         "sampler": world.WORLD_SAMPLER, "scheduler": world.WORLD_SCHEDULER,
                         "images": args.images, "context_images": args.context_images}}
    return write_world_result(args, data, config("hard", 0, args.steps))


if __name__ == "__main__":
    main()
