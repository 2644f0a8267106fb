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
import multiprocessing
import sys
import tempfile
import time
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
    parser.add_argument("--context-images", type=int, default=16, help="pictures per context and drift prompt")
    parser.add_argument("--workers", type=int, default=2, help="processes of one thread each")
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
    blank = np.full_like(rows[0][0], 255)
    lines = [np.concatenate([*r[i:i + per_row], *[blank] * (per_row - len(r[i:i + per_row]))], axis=1)
             for r in rows for i in range(0, len(r), per_row)]
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


def score_run(models: tuple[Any, Any, Any], clip: Any, sets: dict[str, Any], config: Any, tokens: Any,
              args: argparse.Namespace, label: str, work: Path, sample_seed: int,
              keep_pictures: bool) -> dict[str, float]:
    """Localisation on both image sets, the token prompt's fidelity and leakage and how often the three
    contexts are followed, `args.images` pictures each (what bench/auto_masks.py compares runs by)."""
    from textloc.weights.apply import clip_with_tokens

    model, _, vae = models
    state = Applied(model, clip_with_tokens(clip, tokens) if tokens else clip, vae, tokens)
    scores: dict[str, float] = {}
    for split, data in sets.items():
        measures, maps = evaluate(model, clip, vae, data, config, tokens, work)
        scores[f"{split} own"] = measures["inside_own_mask"][0]
        scores[f"{split} other"] = measures["inside_other_objects"][0]
        if keep_pictures:
            save_overlays(args.out / f"{label}_{split}_attention.png", data.images, maps[:, 0], data.concepts[0].masks)
    rates, pictures = picture_rates(state, TOKEN_PROMPT, args.images, sample_seed)
    rows = [pictures[:8]]
    scores.update(fidelity=rates["fidelity"].value, leakage=rates["leakage"].value)
    follows = []
    for prompt, wanted in CONTEXT_PROMPTS:
        got, pictures = picture_rates(state, prompt, args.images, sample_seed, wanted=wanted)
        follows.append(got["follows"].value)
        rows.append(pictures[:8])
    scores["context follows"] = float(np.mean(follows))
    if keep_pictures:
        save_grid(args.out / f"{label}_generated.png", rows)
    return scores


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
    others = [k for k in before if k.startswith("other prompt") and k.endswith("follows")]
    for run, scores in primary.items():
        green = pooled(scores["green floor"]).value
        out[f"drift, {run}: green floors within 10 points of before ({green_before:.2f})"] = {
            "measured": f"{green:.2f}", "verdict": "met" if green - green_before <= 0.10 else "missed"}
        kept = [pooled(scores[k]).value - before[k].value for k in others]
        out[f"drift, {run}: prompts without the token followed within 10 points of before"] = {
            "measured": ", ".join(f"{d:+.2f}" for d in kept), "verdict": "met" if min(kept) >= -0.10 else "missed"}
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


def _prepare_checkpoint() -> Path:
    """Assemble the world checkpoint once, before the workers load it."""
    common.boot("pytorch")
    from shapes_world.model import ensure_world_checkpoint

    return ensure_world_checkpoint()


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


# ---------------------------------------------------------------------------------------------- jobs
# The work is a list of jobs (the untrained model, then each run of each seed), spread over worker processes
# of one thread each: the world's tiny layers keep one core busy better than two threads share it.


@dataclasses.dataclass(frozen=True)
class Job:
    kind: str  # "before", "one" (one concept) or "two" (two concepts)
    run: str = ""
    seed: int = 0


_WORKER: dict[str, Any] = {}


def _start_worker(args: argparse.Namespace) -> None:
    """Each worker loads the world, the class images (the same seed in every worker) and the sets once."""
    torch.set_num_threads(1)
    checkpoint, models, _ = load_world(args.data)
    classes = class_images(models, [PAIR.new_shape, PAIR.distractor_shape], args.class_images)
    _WORKER.update(args=args, checkpoint=checkpoint, models=models, classes=classes,
                   sets=load_sets(args.data, classes), pair_sets=load_sets(args.data, classes, two_concepts=True),
                   work=Path(tempfile.mkdtemp(prefix="tl_shapes_world_")))


def _config(args: argparse.Namespace, run: str, seed: int, steps: int, every: int = 0) -> Any:
    guidance, region = RUNS[run]
    if region != "whole photo":
        region = args.masked_region
    return train_config(guidance, seed, steps, args.learning_rate, denoise_region=region,
                        prior=args.class_images > 0, checkpoint_every=every)


def _as_data(rates: dict[str, Rate]) -> dict[str, Any]:
    return {k: v.as_dict() for k, v in rates.items()}


def _from_data(data: dict[str, Any]) -> dict[str, Rate]:
    return {k: Rate(v["successes"], v["pictures"], v["confidence"]) for k, v in data.items()}


def run_job(job: Job) -> dict[str, Any]:
    """Train (unless "before") and score one run; every length of the sweep for the sweep runs."""
    args, models, work = _WORKER["args"], _WORKER["models"], _WORKER["work"]
    started = time.monotonic()
    keep = job.seed == int(names(args.seeds)[0])  # pictures of the first seed are saved
    if job.kind == "before":
        rates, shares = full_scores(applied(models, None, None), _WORKER["sets"], _config(args, "none", job.seed, args.steps),
                                    args, job.seed, work, "before", True)
        return {"job": dataclasses.asdict(job), "at": {str(args.steps): _as_data(rates)}, "shares": shares,
                "seconds": round(time.monotonic() - started)}
    label = f"{job.run.replace(' + ', '_')}_{job.seed}"
    if job.kind == "two":
        result = _train(models, _WORKER["pair_sets"]["train"], _config(args, job.run, job.seed, args.steps), work,
                        f"pair_{label}")
        state = applied(models, *checkpoint_state(result.run, args.steps))
        rates = two_concept_scores(state, args, job.seed, job.run.replace(" + ", "_"), keep)
        return {"job": dataclasses.asdict(job), "at": {str(args.steps): _as_data(rates)},
                "seconds": round(time.monotonic() - started)}
    lengths = sweep_lengths(args) if job.run in names(args.sweep_runs) else [args.steps]
    result = _train(models, _WORKER["sets"]["train"],
                    _config(args, job.run, job.seed, max(lengths), int(np.gcd.reduce(lengths))), work, label)
    out: dict[str, Any] = {"job": dataclasses.asdict(job), "at": {}}
    for length in lengths:
        state = applied(models, *checkpoint_state(result.run, length))
        if length == args.steps:
            rates, out["shares"] = full_scores(state, _WORKER["sets"], _config(args, job.run, job.seed, args.steps),
                                               args, job.seed, work, job.run.replace(" + ", "_"), keep)
        else:
            rates, _ = picture_rates(state, TOKEN_PROMPT, args.images, job.seed)
        out["at"][str(length)] = _as_data(rates)
    out["seconds"] = round(time.monotonic() - started)
    return out


def _word_shares_job(args: argparse.Namespace) -> dict[str, float]:
    return dataclasses.asdict(pretrained_word_shares(_WORKER["models"]))


def sweep_lengths(args: argparse.Namespace) -> list[int]:
    return sorted({int(s) for s in names(args.lengths)} | {args.steps})


def plan(args: argparse.Namespace) -> list[Job]:
    """The longest jobs first, so the workers finish together."""
    seeds = [int(s) for s in names(args.seeds)]
    jobs = [Job("one", run, seed) for seed in seeds for run in names(args.runs) if run in names(args.sweep_runs)]
    jobs += [Job("two", run, seed) for seed in seeds for run in names(args.two_concept_runs)]
    jobs += [Job("one", run, seed) for seed in seeds for run in names(args.runs) if run not in names(args.sweep_runs)]
    return [Job("before", "", seeds[0]), *jobs]


def run_all(args: argparse.Namespace) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """Every job, on `args.workers` processes (in this process when 1)."""
    jobs = plan(args)
    if args.workers <= 1:
        _start_worker(args)
        results = []
        for job in jobs:
            results.append(run_job(job))
            _report(results[-1])
        return results, _word_shares_job(args)
    context = multiprocessing.get_context("spawn")
    with context.Pool(args.workers, initializer=_start_worker, initargs=(args,)) as pool:
        words = pool.apply_async(_word_shares_job, (args,))
        results = []
        for result in pool.imap_unordered(run_job, jobs):
            results.append(result)
            _report(result)
        return results, words.get()


def _report(result: dict[str, Any]) -> None:
    job = result["job"]
    for length, rates in result["at"].items():
        shown = ", ".join(f"{k} {Rate(v['successes'], v['pictures'])}" for k, v in list(rates.items())[:3])
        print(f"  {job['kind']} {job['run'] or 'untrained'} seed {job['seed']} at {length} steps: {shown}", flush=True)
    print(f"    ({result['seconds']} s)", flush=True)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    started = time.monotonic()
    checkpoint = _prepare_checkpoint()
    seeds = [int(s) for s in names(args.seeds)]
    print(f"world model {checkpoint.name}; seeds {seeds}; recipe: {args.steps} steps (sweep "
          f"{sweep_lengths(args)}), lr {args.learning_rate}, {args.class_images} class images per concept; "
          f"{args.workers} worker processes", flush=True)
    results, words = run_all(args)
    print(f"pretrained words on {WORD_SCENES} new scenes: share inside their object: colour words "
          f"{words['color']:.3f}, shape words {words['shape']:.3f}; chance (object area) {words['chance']:.3f}; "
          f"{min(words['color'], words['shape']) / words['chance']:.1f}x chance")
    before = next(r for r in results if r["job"]["kind"] == "before")
    before_rates, before_shares = _from_data(before["at"][str(args.steps)]), before["shares"]
    sweep: dict[str, dict[int, list[dict[str, Rate]]]] = {}
    primary: dict[str, list[dict[str, Rate]]] = {}
    shares: dict[str, list[dict[str, float]]] = {}
    two: dict[str, list[dict[str, Rate]]] = {}
    for result in sorted(results, key=lambda r: r["job"]["seed"]):
        job = result["job"]
        if job["kind"] == "two":
            two.setdefault(job["run"], []).append(_from_data(result["at"][str(args.steps)]))
        elif job["kind"] == "one":
            primary.setdefault(job["run"], []).append(_from_data(result["at"][str(args.steps)]))
            shares.setdefault(job["run"], []).append(result["shares"])
            if job["run"] in names(args.sweep_runs):
                for length, rates in result["at"].items():
                    sweep.setdefault(job["run"], {}).setdefault(int(length), []).append(_from_data(rates))
    order = names(args.runs)
    primary = {run: primary[run] for run in order if run in primary}
    shares = {run: shares[run] for run in order if run in shares}
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
            "pretrained_words": words | {"scenes": WORD_SCENES, "seed": WORD_SEED},
            "recipe": {"steps": args.steps, "lengths": sweep_lengths(args), "learning_rate": args.learning_rate,
                       "class_images": args.class_images, "masked_region": args.masked_region},
            "tables": {"sweep": sweep_table, "primary": primary_table, "localisation": share_table,
                       "two_concepts": two_table, "targets": target_table},
            "before": {k: v.as_dict() for k, v in before_rates.items()}, "before_shares": before_shares,
            "sweep": {run: {str(n): as_data(v) for n, v in by.items()} for run, by in sweep_rates.items()},
            "primary": {run: as_data(v) for run, v in primary_rates.items()}, "shares": shares,
            "two_concepts": {run: as_data(v) for run, v in two_rates.items()}, "targets": verdicts,
            "job_seconds": {f"{r['job']['kind']} {r['job']['run']} {r['job']['seed']}": r["seconds"] for r in results},
            "sampling": {"steps": world.WORLD_SAMPLE_STEPS, "cfg": world.WORLD_SAMPLE_CFG,
                         "sampler": world.WORLD_SAMPLER, "scheduler": world.WORLD_SCHEDULER,
                         "images": args.images, "context_images": args.context_images}}
    return write_world_result(args, data, _config(args, "hard", 0, args.steps))


if __name__ == "__main__":
    main()
