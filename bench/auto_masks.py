"""Masks from Word Attention, measured on the shapes world: are auto masks good enough to train on?

(a) Mask quality: IoU of the node's masks (`textloc.data.auto_masks`, the node's defaults and the caption of
    workflows/tl_auto_masks.json) with the world's exact masks, on the 5 training photos, the 10 held-out
    scenes, 32 random world scenes (captions built from each scene: its colour + shape phrases) and on the
    cases the help page warns about: small objects, touching objects, and captions whose words the model
    does not know (no colours; unknown shape words).
(b) Training on them: per seed, the pack's trainer learns `tl_ball` three times with the settings of
    bench/shapes_world.py: guidance none (the baseline of the gain), hard on the TRUE ball masks and hard
    on the AUTO ball masks (Mask Target's mask_index 1 of the node's output). Every run is scored by
    bench/shapes_world.py's `score_run` against the TRUE masks: the token's share of attention inside the
    ball / the box on the training photos and the held-out scenes, fidelity and leakage of generated
    pictures. share of gain kept = (auto own - none own) / (true own - none own), held-out scenes.

Means over seeds, with the spread (population standard deviation) after the +-.

    OMP_NUM_THREADS=2 .venv/bin/python bench/auto_masks.py [--seeds 1,2,3] [--steps 100] [--images 16]
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

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import common  # noqa: E402
from bench.localization import _train  # noqa: E402
from bench.shapes_world import (  # noqa: E402
    RESOLUTION,
    STEPS,
    TOKEN,
    WORD_SCENES,
    WORD_SEED,
    load_world,
    save_grid,
    score_run,
    train_config,
    write_world_result,
)
from shapes_world.scenes import (  # noqa: E402
    FLOOR_COLORS,
    OBJECT_COLORS,
    Scene,
    WorldObject,
    _place,
    render,
    scene_batch,
)
from shapes_world.training_sets import PAIR  # noqa: E402

# The node's settings in workflows/tl_auto_masks.json (scripts/make_workflows.py): the two class words, a
# caption that names the colours as the world's captions always did, the node's default seed and timesteps.
WORDS = f"{PAIR.new_shape}, {PAIR.distractor_shape}"
PROMPT = (f"a photo of a {PAIR.new_color} {PAIR.new_shape} "
          f"and a {PAIR.distractor_color} {PAIR.distractor_shape}")
MASK_SEED = 0
# Failure probes on the held-out scenes: the bare default caption (the colour, the only thing that tells the
# world's objects apart, is not named) and shape words the world model never saw in pretraining.
BARE_PROMPT = f"a photo of a {PAIR.new_shape} and a {PAIR.distractor_shape}"
UNKNOWN_WORDS = "sphere, cube"
UNKNOWN_PROMPT = f"a photo of a {PAIR.new_color} sphere and a {PAIR.distractor_color} cube"
# Probe scenes of a ball and a box in the world's known colours, drawn from seeds pretraining never used.
PROBE_SCENES = 16
SMALL_SEED = WORD_SEED + 1
TOUCHING_SEED = WORD_SEED + 2
SMALL_RADIUS = (0.06, 0.09)  # pretraining drew 0.13-0.23 of the image side: here 8-12 px across at 64 px
TOUCHING_RADIUS = (0.14, 0.2)
MARGIN = 0.03
RUNS = (("none", "none", "true"), ("hard, true masks", "hard", "true"), ("hard, auto masks", "hard", "auto"))
# Rows of the IoU table that the targets read.
HELD_OUT_ROW = "held-out photos, colours named"
WORLD_ROW = f"{WORD_SCENES} random world scenes, scene captions"
IOU_TARGET = ">= 0.6"
GAIN_TARGET = ">= 0.8"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="1,2,3", help="training seeds (each runs all three)")
    parser.add_argument("--steps", type=int, default=STEPS)
    parser.add_argument("--images", type=int, default=16, help="pictures generated per prompt and run")
    parser.add_argument("--data", type=Path, default=common.ROOT / "sample_data")
    parser.add_argument("--out", type=Path, default=common.RESULTS_DIR / "auto_masks")
    parser.add_argument("--name", default="auto_masks")
    return parser.parse_args(argv)


# ---------------------------------------------------------------------------------------------- masks


def iou(masks: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """Per mask [..., H, W]: IoU of mask > 0.5 with truth > 0.5 (0 when both are empty)."""
    a, b = masks > 0.5, truth > 0.5
    return (a & b).sum((-2, -1)).float() / (a | b).sum((-2, -1)).clamp_min(1).float()


def auto_masks(models: tuple[Any, Any, Any], images: torch.Tensor, words: str, prompt: str) -> Any:
    """The node's result (AutoMasks) for a batch of photos, with the workflow's settings."""
    from textloc.data.auto_masks import masks_from_word_attention

    model, clip, vae = models
    with torch.inference_mode():
        return masks_from_word_attention(model, clip, vae, images, words, template=prompt, seed=MASK_SEED)


def pair_scores(masks: torch.Tensor, truth: torch.Tensor) -> dict[str, Any]:
    """masks, truth [N, 2, H, W] (ball, box): IoU per word, their mean, and IoU with the wrong object."""
    ball, box = iou(masks[:, 0], truth[:, 0]), iou(masks[:, 1], truth[:, 1])
    wrong = torch.cat([iou(masks[:, 0], truth[:, 1]), iou(masks[:, 1], truth[:, 0])])
    return {"images": len(masks), "ball": ball.mean().item(), "box": box.mean().item(),
            "mean": torch.cat([ball, box]).mean().item(), "wrong object": wrong.mean().item(),
            "per image": {"ball": ball.tolist(), "box": box.tolist()}}


def dataset_truth(data: Any) -> torch.Tensor:
    """[N, 2, H, W]: the set's mask_1 (ball) and mask_2 (box) of each photo."""
    return torch.stack([data.folder_mask(1), data.folder_mask(2)], dim=1)


def small_pair(rng: np.random.Generator) -> Scene:
    """A ball and a box about half the world's smallest, apart, in two known colours."""
    colors = rng.choice(list(OBJECT_COLORS), size=2, replace=False)
    while True:
        objects: list[WorldObject] = []
        for shape, color in zip(("ball", "box"), colors, strict=True):
            radius = float(rng.uniform(*SMALL_RADIUS))
            centre = _place(rng, objects, radius)
            if centre is not None:
                objects.append(WorldObject(shape, str(color), *centre, radius))
        if len(objects) == 2:
            return Scene(floor=str(rng.choice(list(FLOOR_COLORS))), objects=tuple(objects))


def touching_pair(rng: np.random.Generator) -> Scene:
    """A ball and a box of the world's usual sizes side by side, touching at one edge, known colours."""
    colors = rng.choice(list(OBJECT_COLORS), size=2, replace=False)
    ball_r, box_r = (float(r) for r in rng.uniform(*TOUCHING_RADIUS, size=2))
    tallest = max(ball_r, box_r)
    cy = float(rng.uniform(tallest + MARGIN, 1 - tallest - MARGIN))
    left = float(rng.uniform(MARGIN, 1 - MARGIN - 2 * (ball_r + box_r)))
    if rng.random() < 0.5:  # ball on the left
        ball_x, box_x = left + ball_r, left + 2 * ball_r + box_r
    else:
        box_x, ball_x = left + box_r, left + 2 * box_r + ball_r
    objects = (WorldObject("ball", str(colors[0]), ball_x, cy, ball_r),
               WorldObject("box", str(colors[1]), box_x, cy, box_r))
    return Scene(floor=str(rng.choice(list(FLOOR_COLORS))), objects=objects)


def probe_scores(models: tuple[Any, Any, Any], scenes: list[Scene]) -> dict[str, Any]:
    """Ball-and-box scenes, each with its own caption ('a photo of a red ball and a blue box on ...')."""
    masks, truth = [], []
    for scene in scenes:
        image, object_masks = render(scene, RESOLUTION)
        photo = torch.from_numpy(image[None]).float() / 255.0
        masks.append(auto_masks(models, photo, "ball, box", scene.caption()).masks)
        truth.append(torch.from_numpy(np.stack(object_masks)[None]).float())  # objects are (ball, box)
    return pair_scores(torch.cat(masks), torch.cat(truth))


def world_scores(models: tuple[Any, Any, Any]) -> dict[str, Any]:
    """32 random world scenes (1-2 objects of any shape and known colour), words = each object's
    colour + shape phrase ('red ball'), caption = the scene's own. IoU per object, by shape."""
    scenes, images, masks = scene_batch(WORD_SEED, WORD_SCENES, RESOLUTION)
    by_shape: dict[str, list[float]] = {"ball": [], "box": []}
    wrong: list[float] = []
    for scene, image, truth in zip(scenes, images, masks, strict=True):
        photo = torch.from_numpy(image[None]).float() / 255.0
        words = ", ".join(o.word() for o in scene.objects)
        found = auto_masks(models, photo, words, scene.caption()).masks[0]  # [objects, H, W]
        exact = torch.from_numpy(np.stack(truth)).float()
        for index, obj in enumerate(scene.objects):
            by_shape[obj.shape].append(iou(found[index], exact[index]).item())
        if len(scene.objects) == 2:
            wrong += [iou(found[0], exact[1]).item(), iou(found[1], exact[0]).item()]
    every = by_shape["ball"] + by_shape["box"]
    return {"images": len(scenes), "objects": len(every), "ball": float(np.mean(by_shape["ball"])),
            "box": float(np.mean(by_shape["box"])), "mean": float(np.mean(every)),
            "wrong object": float(np.mean(wrong)) if wrong else float("nan"), "per object": by_shape}


def save_comparison(path: Path, images: torch.Tensor, found: torch.Tensor, truth: torch.Tensor) -> None:
    """One row per photo: photo | auto masks tinted (ball red, box blue) | true masks tinted."""
    from textloc.data.auto_masks import preview

    with torch.inference_mode():
        panels = [images[..., :3].float(), preview(images, found), preview(images, truth)]
        rows = (torch.stack(panels, dim=1).clamp(0, 1).numpy() * 255).round().astype(np.uint8)
    save_grid(path, list(rows))


def mask_quality(models: tuple[Any, Any, Any], sets: dict[str, Any], out: Path) -> tuple[dict[str, Any], Any]:
    """Every IoU row, and the node's result on the training photos (the masks the auto run trains on)."""
    rows: dict[str, Any] = {}
    train_auto = None
    for split, data in sets.items():
        result = auto_masks(models, data.images, WORDS, PROMPT)
        truth = dataset_truth(data)
        rows[f"{split} photos, colours named"] = pair_scores(result.masks, truth)
        save_comparison(out / f"auto_masks_{split}.png", data.images, result.masks, truth)
        if split == "train":
            train_auto = result
    rows[WORLD_ROW] = world_scores(models)
    held_out = sets["held-out"]
    truth = dataset_truth(held_out)
    rows["held-out, no colours named"] = pair_scores(
        auto_masks(models, held_out.images, WORDS, BARE_PROMPT).masks, truth)
    rows["held-out, unknown words (sphere, cube)"] = pair_scores(
        auto_masks(models, held_out.images, UNKNOWN_WORDS, UNKNOWN_PROMPT).masks, truth)
    small_rng, touching_rng = np.random.default_rng(SMALL_SEED), np.random.default_rng(TOUCHING_SEED)
    rows[f"{PROBE_SCENES} small pairs, colours named"] = probe_scores(
        models, [small_pair(small_rng) for _ in range(PROBE_SCENES)])
    rows[f"{PROBE_SCENES} touching pairs, colours named"] = probe_scores(
        models, [touching_pair(touching_rng) for _ in range(PROBE_SCENES)])
    return rows, train_auto


# ---------------------------------------------------------------------------------------------- training


def auto_training_set(train: Any, found: Any) -> Any:
    """The training photos with tl_ball's masks taken from the node's output, as Mask Target builds them."""
    from textloc.data.dataset import build_concept

    with torch.inference_mode():
        concept = build_concept(train, token=TOKEN, class_word=PAIR.new_shape, mask=found.mask_batch,
                                mask_index=1)
    return dataclasses.replace(train, concepts=(concept,))


def gain_kept(none: float, true: float, auto: float) -> float:
    """The share of true masks' localisation gain that auto masks keep (NaN when true masks gain nothing)."""
    return common.ratio(auto - none, true - none)


def spread(values: list[float]) -> str:
    return f"{np.mean(values):.3f} ± {np.std(values):.3f}"


def print_mask_table(quality: dict[str, Any]) -> str:
    print("\nAuto masks vs the world's exact masks (IoU, mask > 0.5; wrong object: each word's mask "
          "against the other object's true mask)")
    return common.print_table(
        ["images", "n", "ball", "box", "mean", "wrong object"],
        [[name, r["images"], *(f"{r[k]:.3f}" for k in ("ball", "box", "mean", "wrong object"))]
         for name, r in quality.items()])


def train_runs(models: tuple[Any, Any, Any], sets: dict[str, Any], training: dict[str, Any],
               args: argparse.Namespace, seeds: list[int]) -> dict[str, list[dict[str, float]]]:
    """Per seed: none, hard on true masks, hard on auto masks; each scored against the true masks."""
    work = Path(tempfile.mkdtemp(prefix="tl_auto_masks_"))
    runs: dict[str, list[dict[str, float]]] = {}
    for seed in seeds:
        for label, guidance, masks in RUNS:
            config = train_config(guidance, seed, args.steps)
            name = label.replace(",", "").replace(" ", "_")
            result = _train(models, training[masks], config, work, f"{name}_{seed}")
            scores = score_run((result.model, result.clip, models[2]), result.clip, sets, config,
                               result.token_vectors, args, name, work, seed, seed == seeds[0])
            runs.setdefault(label, []).append(scores)
            measured = ", ".join(f"{k} {v:.3f}" for k, v in scores.items())
            print(f"  seed {seed} {label}: {measured}", flush=True)
    return runs


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    checkpoint, models, sets = load_world(args.data)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    print(f"world model {checkpoint.name}; {sets['train'].num_images} training photos, "
          f"{sets['held-out'].num_images} held-out scenes; auto masks: words '{WORDS}', "
          f"caption '{PROMPT}', seed {MASK_SEED}; {args.steps} steps, seeds {seeds}")

    quality, train_auto = mask_quality(models, sets, args.out)
    mask_table = print_mask_table(quality)
    training = {"true": sets["train"], "auto": auto_training_set(sets["train"], train_auto)}
    runs = train_runs(models, sets, training, args, seeds)

    columns = list(runs["none"][0])
    summary = {label: {k: (float(np.mean([r[k] for r in rs])), float(np.std([r[k] for r in rs])))
                       for k in columns} for label, rs in runs.items()}
    own = {label: [r["held-out own"] for r in rs] for label, rs in runs.items()}
    per_seed_gain = [gain_kept(n, t, a) for n, t, a in
                     zip(own["none"], own["hard, true masks"], own["hard, auto masks"], strict=True)]
    mean_own = {label: summary[label]["held-out own"][0] for label in runs}
    gain = gain_kept(mean_own["none"], mean_own["hard, true masks"], mean_own["hard, auto masks"])
    print(f"\nTL on auto vs true masks, mean ± spread over seeds {seeds} (own: share inside the ball's true "
          "mask, other: inside the box's; fidelity: magenta shown; leakage: the box's yellow shown)")
    run_table = common.print_table(["run", *columns], [[label, *(spread([r[k] for r in rs]) for k in columns)]
                                                       for label, rs in runs.items()])
    print(f"share of gain kept per seed: {', '.join(f'{g:.2f}' for g in per_seed_gain)}\n")
    targets = {
        "mean IoU, held-out pair scenes": (quality[HELD_OUT_ROW]["mean"], IOU_TARGET),
        f"mean IoU, {WORD_SCENES} random world scenes": (quality[WORLD_ROW]["mean"], IOU_TARGET),
        "share of gain kept (held-out own, means over seeds)": (gain, GAIN_TARGET),
    }
    verdicts = {k: {"measured": v, "wanted": t, "verdict": common.verdict(v, t)}
                for k, (v, t) in targets.items()}
    target_table = common.print_table(["target", "measured", "wanted", "verdict"],
                                      [[k, f"{v['measured']:.3f}", v["wanted"], v["verdict"]]
                                       for k, v in verdicts.items()])
    data = {"checkpoint": checkpoint.name, "seeds": seeds,
            "node": {"words": WORDS, "prompt": PROMPT, "seed": MASK_SEED,
                     "other inputs": "the node's defaults"},
            "mask_table": mask_table, "run_table": run_table, "target_table": target_table,
            "mask_iou": quality, "summary": summary, "runs": runs,
            "gain_kept": {"from the means": gain, "per seed": per_seed_gain}, "targets": verdicts}
    return write_world_result(args, data, train_config("hard", 0, args.steps))


if __name__ == "__main__":
    main()
