"""The method's evidence: where each learned token attends after training with guidance none / soft / hard.

For each concept (each mask folder of the set), the same training runs three times under identical
settings (seed, steps, learning rate, images), once per guidance mode, on the training images; the
held-out images (the last K, or each image in turn with --leave-one-out) are never trained on.
Then, on the training images and on the held-out ones, the token's attention map (the map the
loss uses, averaged over timesteps 250, 500, 750) is scored with textloc.attention.localization:
- own:   share of the map's mass inside the concept's own mask (higher is better);
- other: share inside the other objects' masks (lower is better);
- IoU:   overlap of the thresholded map with the own mask;
- MSE:   the hard-guidance objective, map vs mask.
"before" is the untrained model with the token at its start word. Overlays are saved per concept,
mode and image set.

    OMP_NUM_THREADS=1 .venv/bin/python bench/localization.py [DATASET_DIR] [--checkpoint model.safetensors]
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

MODES = ("none", "soft", "hard")
METRICS = {"inside_own_mask": "own", "inside_other_objects": "other", "iou": "IoU", "mask_mse": "MSE"}
CLASS_WORDS = ("object", "thing", "item", "toy")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", nargs="?", type=Path, default=common.ROOT / "sample_data" / "toy_pair",
                        help="a set in the authors' layout (resized/ + mask_1/, mask_2/ ...); default the sample data")
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="an SD1.x checkpoint (default: the tiny random-weight one)")
    parser.add_argument("--resolution", type=int, default=0, help="pixels (default 64 tiny, 512 checkpoint)")
    parser.add_argument("--steps", type=int, default=-1, help="training steps (default 30 tiny, auto checkpoint)")
    parser.add_argument("--learning-rate", type=float, default=-1.0,
                        help="default 1e-3 on the tiny model (random weights need large steps), auto otherwise")
    parser.add_argument("--attention-weight", type=float, default=1.0, help="lambda for soft and hard")
    parser.add_argument("--holdout", type=int, default=0, help="hold out the last K images (default n // 3)")
    parser.add_argument("--leave-one-out", action="store_true", help="one fold per image instead of a split")
    parser.add_argument("--class-words", default="", help="comma-separated class word per mask (default generic)")
    parser.add_argument("--modes", default=",".join(MODES), help="guidance modes (default none,soft,hard)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--attention", choices=common.ATTENTION_CHOICES, default="pytorch")
    parser.add_argument("--out", type=Path, default=common.RESULTS_DIR / "localization",
                        help="folder for the overlays")
    parser.add_argument("--name", default="localization", help="result file name under bench/results/")
    return parser.parse_args(argv)


# ---------------------------------------------------------------------------------------------- data


def subset(dataset: Any, indices: list[int]) -> Any:
    """The same set restricted to some images (photos, folder masks and concept masks alike)."""
    index = torch.tensor(indices, dtype=torch.long)
    concepts = tuple(dataclasses.replace(c, masks=c.masks[index].clone()) for c in dataset.concepts)
    return dataclasses.replace(
        dataset, images=dataset.images[index].clone(), folder_masks=dataset.folder_masks[:, index].clone(),
        image_names=tuple(dataset.image_names[i] for i in indices),
        original_sizes=tuple(dataset.original_sizes[i] for i in indices), concepts=concepts)


def folds(count: int, holdout: int, leave_one_out: bool) -> list[tuple[list[int], list[int]]]:
    """(train indices, held-out indices) per fold."""
    if count < 2:
        raise SystemExit("the set needs at least 2 images: one to train on and one to hold out")
    if leave_one_out:
        return [([j for j in range(count) if j != i], [i]) for i in range(count)]
    held = min(max(1, holdout or count // 3), count - 1)
    return [(list(range(count - held)), list(range(count - held, count)))]


# ---------------------------------------------------------------------------------------------- scoring


def evaluate(model: Any, clip: Any, vae: Any, dataset: Any, config: Any, tokens: dict[str, Any] | None,
             work: Path) -> tuple[dict[str, list[float]], torch.Tensor]:
    """(measures per concept, maps [N, C, S, S] at timestep 500) of `model` with the given token vectors.

    Uses the trainer's own measuring code, so these are the numbers train() reports as localization.
    """
    from textloc.training.token_embedding import trainable_text_encoder

    runner = common.prepare_trainer(model, clip, vae, dataset, config, work)
    trainer = runner.trainer
    for token, vectors in (tokens or {}).items():
        trainer.tokens[token].load_state(vectors)
    with torch.inference_mode(False), trainable_text_encoder(clip):
        measures = trainer.measure()
        maps = maps_at(trainer, 500)
    return measures, maps


def maps_at(trainer: Any, timestep: int) -> torch.Tensor:
    """The token maps the loss sees, for every image at one timestep (fixed noise)."""
    from textloc.training.losses import token_attention_map

    generator = torch.Generator().manual_seed(1234)
    with torch.no_grad():
        context, columns = trainer.instance_condition()
        latents = trainer.base_model.process_latent_in(trainer.instance_latents)
        count = len(latents)
        trainer._capture(columns, count, keep_graph=False, resolutions=trainer.resolutions)
        noise = torch.randn(latents.shape, generator=generator).to(trainer.device)
        sigma = trainer.base_model.model_sampling.sigma(torch.full((count,), float(timestep))).to(trainer.device)
        trainer._forward(latents, context.expand(count, -1, -1), sigma, noise, trainer._rows(trainer.instance_adm, count))
        maps = token_attention_map(trainer.recorder.records(), trainer.resolutions, trainer.config.attention_size)
    return maps.float().cpu()


def save_overlays(path: Path, images: torch.Tensor, maps: torch.Tensor, masks: torch.Tensor) -> None:
    """One row per image: photo | map overlay | mask."""
    from textloc.attention.heatmap import normalize, overlay

    over = overlay(images, normalize(maps))
    mask_rgb = masks[..., None].expand(-1, -1, -1, 3).float()
    rows = torch.cat([images, over, mask_rgb], dim=2)
    picture = rows.reshape(-1, rows.shape[2], 3)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((picture.clamp(0, 1).numpy() * 255).astype(np.uint8)).save(path)


# ---------------------------------------------------------------------------------------------- runs


def _config(args: argparse.Namespace, guidance: str, tiny: bool) -> Any:
    from textloc.config import TrainConfig

    steps = args.steps if args.steps >= 0 else (30 if tiny else 0)
    lr = args.learning_rate if args.learning_rate >= 0 else (1e-3 if tiny else 0.0)
    return TrainConfig(guidance=guidance, attention_weight=args.attention_weight, prior_weight=0.0, steps=steps,
                       learning_rate=lr, seed=args.seed, checkpoint_every=max(steps, 1) if steps else 0,
                       preview_every=0)


def _train(models: tuple[Any, Any, Any], dataset: Any, config: Any, work: Path, name: str) -> Any:
    from textloc.training.loop import TrainingJob, train
    from textloc.training.run_files import plan_run

    model, clip, vae = models
    run, _ = plan_run(work, name, False)
    with torch.inference_mode():
        return train(TrainingJob(model=model, clip=clip, vae=vae, dataset=dataset, config=config, run=run))


def _mean(values: list[dict[str, float]]) -> dict[str, float]:
    return {k: round(float(np.mean([v[k] for v in values])), 4) for k in values[0]}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    common.set_threads()
    attention = common.boot(args.attention)
    from textloc.data.dataset import build_concept, load_dataset

    tiny = args.checkpoint is None
    resolution = args.resolution or (64 if tiny else 512)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    models = common.load_checkpoint(args.checkpoint)
    folder = args.dataset.resolve()
    with torch.inference_mode():
        full = load_dataset(folder.parent, folder.name, resolution=resolution)
    class_words = [w.strip() for w in args.class_words.split(",") if w.strip()]
    work = Path(tempfile.mkdtemp(prefix="tl_localization_"))
    splits = folds(full.num_images, args.holdout, args.leave_one_out)
    print(f"{folder.name}: {full.num_images} images, {full.num_folder_masks} masks, {resolution} px, "
          f"{len(splits)} fold(s), held out per fold: {[ [full.image_names[i] for i in h] for _, h in splits]}")

    per_concept: dict[str, dict[str, dict[str, list[dict[str, float]]]]] = {}
    for k in range(1, full.num_folder_masks + 1):
        token = f"tl_mask{k}"
        word = class_words[k - 1] if k - 1 < len(class_words) else CLASS_WORDS[(k - 1) % len(CLASS_WORDS)]
        with torch.inference_mode():
            data = full.with_concept(build_concept(full, token=token, class_word=word, mask_index=k))
        scores: dict[str, dict[str, list[dict[str, float]]]] = {}
        for fold, (train_idx, held_idx) in enumerate(splits):
            sets = {"train": subset(data, train_idx), "held-out": subset(data, held_idx)}
            base_config = _config(args, "none", tiny)
            for split, part in sets.items():
                measures, maps = evaluate(*models, part, base_config, None, work)
                scores.setdefault("before", {}).setdefault(split, []).append({m: measures[m][0] for m in METRICS})
                if fold == 0:
                    save_overlays(args.out / f"mask{k}_before_{split}.png", part.images, maps[:, 0],
                                  part.concepts[0].masks)
            for mode in modes:
                config = _config(args, mode, tiny)
                result = _train(models, sets["train"], config, work, f"{token}_{mode}_{fold}")
                for split, part in sets.items():
                    measures, maps = evaluate(result.model, result.clip, models[2], part, config,
                                              result.token_vectors, work)
                    scores.setdefault(mode, {}).setdefault(split, []).append({m: measures[m][0] for m in METRICS})
                    if fold == 0:
                        save_overlays(args.out / f"mask{k}_{mode}_{split}.png", part.images, maps[:, 0],
                                      part.concepts[0].masks)
                print(f"  mask_{k} {mode} fold {fold + 1}/{len(splits)}: "
                      + ", ".join(f"{s} own {scores[mode][s][-1]['inside_own_mask']:.3f}" for s in sets), flush=True)
        per_concept[f"mask_{k}"] = {mode: {split: _mean(v) for split, v in by_split.items()}
                                    for mode, by_split in scores.items()}

    table_rows, summary = [], {}
    for mode in ["before", *modes]:
        for split in ("train", "held-out"):
            values = [per_concept[c][mode][split] for c in per_concept]
            mean = _mean(values)
            summary[f"{mode} {split}"] = mean
            table_rows.append([mode, split, *(f"{mean[m]:.3f}" for m in METRICS)])
    print(f"\nToken attention vs mask, mean over {len(per_concept)} concept(s) "
          f"(own/IoU: higher is better; other/MSE: lower is better)")
    table = common.print_table(["mode", "images", *METRICS.values()], table_rows)
    data = {"dataset": str(folder), "checkpoint": str(args.checkpoint or "tiny random-weight SD1.5"),
            "resolution": resolution, "attention_kernel": attention,
            "config": {k: v for k, v in dataclasses.asdict(_config(args, "hard", tiny)).items() if k != "guidance"},
            "folds": [{"train": [full.image_names[i] for i in t], "held_out": [full.image_names[i] for i in h]}
                      for t, h in splits],
            "summary": summary, "per_concept": per_concept, "table": table, "overlays": str(args.out),
            "settings": {k: str(v) for k, v in vars(args).items()}}
    path = common.write_result(args.name, data)
    print(f"overlays in {args.out}\nwrote {path}")
    return data


if __name__ == "__main__":
    main()
