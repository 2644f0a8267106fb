#!/usr/bin/env python3
"""The main job on the shapes-world model and its photos: every demo workflow, outputs kept, and the
method's numbers: where the learned token attends before and after training, and how often pictures
made with it show the other object of the training photos (leakage), with and without guidance.

    python scripts/demo.py --out out/demo
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from headless.demo_page import render_page  # noqa: E402
from headless.demo_pictures import (  # noqa: E402
    DemoPicture,
    PictureWriter,
    ReportedImage,
    explicit_titles,
    run_pictures,
    write_bytes_atomic,
)
from headless.paths import WORKFLOWS_DIR  # noqa: E402
from headless.runner import copy_output_tree, prepare_server  # noqa: E402
from headless.server import ComfyServer, WorkflowError, output_images  # noqa: E402
from headless.workflow import load_workflow, to_api_prompt  # noqa: E402
from headless.world_settings import apply_demo_batches, apply_world_settings  # noqa: E402
from shapes_world.judge import rates  # noqa: E402
from shapes_world.model import ensure_world_checkpoint  # noqa: E402
from shapes_world.training_sets import PAIR  # noqa: E402
from textloc.evaluation.pictures import font  # noqa: E402
from textloc.weights.files import atomic_write_text  # noqa: E402

# The whole story, in this order (later workflows read what earlier ones trained), with what each
# one does. Each one's pictures go to its own sub-folder of --out, named after the node that made
# them; everything written under ComfyUI's output/ (weights, tokens, checkpoints, loss history,
# attention pictures) is copied to --out/output/. index.html says what every picture is.
DEMO_WORKFLOWS: dict[str, str] = {
    "tl_dataset_preview.json": "Loads the photos and their masks and shows each concept's mask over the photos.",
    "tl_train.json": ("Trains tl_ball with hard guidance and class-prior images made in the same graph; "
                      "plots the loss and shows the token's attention beside its mask."),
    "tl_train_and_generate.json": ("Trains tl_ball, applies the result, generates a picture with the token "
                                   "and shows where the token and the word 'ball' attend."),
    "tl_before_after_attention.json": ("Where embedding:tl_ball attends before training (strengths 0) and "
                                       "after, on a new picture and on the training photos."),
    "tl_guidance_compare.json": ("The same training without guidance (Custom Diffusion) and with hard guidance, "
                                 "with class-prior images the model draws in the graph, then 32 pictures from "
                                 "the same prompt and seed through each result."),
    "tl_two_concepts.json": "Learns the ball and the box together, then generates with both tokens.",
    "tl_evaluate.json": ("Scores pictures made with the trained ball the way the paper does (CLIP-I, CLIP-T, "
                         "KID, the token's attention on its object)."),
}
PAGE_TITLE = "Textual Localization: the demo on the shapes world"
PAGE_INTRO = (
    "Textual Localization teaches a model one object from photos that show several: it fine-tunes the "
    "cross-attention keys and values and a new token, and pulls the token's cross-attention map onto the "
    "object's mask. Here it runs on the shapes world, a tiny model pretrained on balls and boxes, with photos "
    f"of a {PAIR.new_color} {PAIR.new_shape} (a colour the model never saw) beside a "
    f"{PAIR.distractor_color} {PAIR.distractor_shape}.",
    "Each section below is one example workflow from workflows/, run through a real ComfyUI server; every "
    "picture says what it shows and which node made it. The numbers: where the token attends before and after "
    "training, how often its pictures show the other object (leakage) without and with guidance, the losses "
    "and the evaluation scores. One seed and 32 pictures per run, with 90 % intervals: bench/shapes_world.py "
    "measures the same over 3 seeds and 64 pictures per run.",
)


def demo_prompt(workflow: dict[str, Any], object_info: dict[str, Any]) -> dict[str, Any]:
    """The API prompt the demo queues for one workflow file: the files keep the real-model defaults, the
    demo sets the shapes-world model's sizes, steps and learning rate, and draws 32 class images and
    32 pictures per generating node."""
    return apply_demo_batches(apply_world_settings(to_api_prompt(workflow, object_info), object_info))


def run_demo_workflow(server: ComfyServer, name: str, writer: PictureWriter,
                      object_info: dict[str, Any]) -> tuple[dict[str, Any], list[DemoPicture]]:
    """Run one workflow file; returns its API prompt and its pictures (named, captioned, deduplicated)."""
    workflow = load_workflow(WORKFLOWS_DIR / name)
    prompt = demo_prompt(workflow, object_info)
    result = server.run(prompt, timeout=3600, workflow=workflow)
    images = [ReportedImage(node_id, entry.get("type", "output"), server.view(entry))
              for node_id, _, entry in output_images(result)]
    return prompt, writer.add_workflow(name, prompt, explicit_titles(workflow), images)


def workflow_entry(name: str, prompt: dict[str, Any]) -> dict[str, Any]:
    """The manifest's record of a workflow: what it does, the runs it trains, the scores it saves."""
    def values(kind: str, key: str) -> list[str]:
        return [str(n["inputs"][key]) for n in prompt.values() if n["class_type"] == kind and key in n["inputs"]]

    return {"name": name, "about": DEMO_WORKFLOWS.get(name, ""), "runs": values("TL_TrainKV", "output_name"),
            "evaluations": values("TL_EvaluateImages", "save_name")}


def write_page_only(out: Path) -> int:
    """Rebuild index.html from an earlier run's manifest.json and summary.json (no server)."""
    try:
        manifest = json.loads((out / "manifest.json").read_text())
        summary = json.loads((out / "summary.json").read_text())
    except FileNotFoundError as err:
        print(f"--page-only needs an earlier run's {Path(err.filename).name} in {out}: run the demo first.",
              file=sys.stderr)
        return 1
    atomic_write_text(out / "index.html", render_page(manifest, summary))
    print(f"wrote {out / 'index.html'}")
    return 0


def clear_previous_run(out: Path) -> None:
    """Remove what an earlier demo wrote into `out` (its workflow folders and output/ copy), so no stale
    picture lies beside the new ones; nothing else in `out` is touched."""
    for folder in [out / Path(name).stem for name in DEMO_WORKFLOWS] + [out / "output"]:
        if folder.is_dir():
            shutil.rmtree(folder)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("out/demo"))
    parser.add_argument("--page-only", action="store_true",
                        help="only rebuild index.html from the manifest.json and summary.json of an earlier run")
    args = parser.parse_args(argv)
    out = args.out.resolve()
    if args.page_only:
        return write_page_only(out)
    clear_previous_run(out)
    server = prepare_server(ensure_world_checkpoint())
    writer = PictureWriter(out)
    workflows: list[dict[str, Any]] = []
    try:
        server.start()
        info = server.object_info()
        for name in DEMO_WORKFLOWS:
            started = time.monotonic()
            print(f"running {name} ...", flush=True)
            prompt, pictures = run_demo_workflow(server, name, writer, info)
            workflows.append(workflow_entry(name, prompt))
            print(f"  done in {time.monotonic() - started:.1f} s, {len(pictures)} pictures")
        files = copy_output_tree(server, out / "output")
        print(f"{len(files)} files written by the workflows copied to {out / 'output'}")
        overviews = write_sheets(writer.pictures, out)
        for sheet in overviews:
            print(f"wrote {out / sheet['file']}")
        summary = summarize(out / "output")
        atomic_write_text(out / "summary.json", json.dumps(summary, indent=1) + "\n")
        manifest = {"title": PAGE_TITLE, "intro": list(PAGE_INTRO), "overviews": overviews,
                    "workflows": workflows, "pictures": [asdict(p) for p in writer.pictures],
                    "run_pictures": run_pictures(out / "output" / "textual_localization", out)}
        atomic_write_text(out / "manifest.json", json.dumps(manifest, indent=1) + "\n")
        atomic_write_text(out / "index.html", render_page(manifest, summary))
    except WorkflowError as err:
        print(f"demo failed: {err}\n--- server log (tail) ---\n{server.log_tail()}", file=sys.stderr)
        return 1
    finally:
        server.cleanup()
    print(f"demo outputs are in {out}; open {out / 'index.html'} for what each picture is")
    return 0


# The overview pictures: (file, title, rows of (label, workflow, output node id)).
SHEETS: tuple[tuple[str, str, tuple[tuple[str, str, str], ...]], ...] = (
    ("world_photos_and_masks.png", "shapes_pair: 5 photos, mask_1 (the magenta ball), mask_2 (the yellow box)", (
        ("photos", "tl_dataset_preview.json", "4"),
        ("masks", "tl_dataset_preview.json", "6"),
    )),
    ("token_attention_before_after.png", "where embedding:tl_ball attends on the training photos", (
        ("before training", "tl_before_after_attention.json", "7"),
        ("after (hard)", "tl_before_after_attention.json", "8"),
    )),
    ("generated_none_vs_hard.png", "'a photo of a embedding:tl_ball ball', same seed", (
        ("no guidance", "tl_guidance_compare.json", "13"),
        ("hard guidance", "tl_guidance_compare.json", "19"),
    )),
)
LABEL_WIDTH = 140
SHEET_COLUMNS = 16  # a sheet shows at most this many pictures of a node; the page links them all
SHEET_CELL = 128
SHEET_HEADER = 36  # the title band above the rows
SHEET_TITLE_FONT, SHEET_LABEL_FONT = 18, 15  # the pack's picture font (textloc.evaluation.pictures)


def write_sheets(pictures: list[DemoPicture], out: Path) -> list[dict[str, str]]:
    """Labelled overview pictures made from the workflows' outputs (one row per output node);
    returns their manifest entries ({file, caption})."""
    written = []
    for file_name, title, rows in SHEETS:
        cells = [(label, [out / p.file for p in pictures if p.workflow == workflow and p.node_id == node]
                  [:SHEET_COLUMNS]) for label, workflow, node in rows]
        if not all(paths for _, paths in cells):
            continue
        columns = max(len(paths) for _, paths in cells)
        sheet = Image.new("RGB", (LABEL_WIDTH + columns * SHEET_CELL, SHEET_HEADER + len(cells) * SHEET_CELL),
                          "white")
        draw = ImageDraw.Draw(sheet)
        draw.text((8, SHEET_HEADER // 2), title, fill="black", font=font(SHEET_TITLE_FONT), anchor="lm")
        for row, (label, paths) in enumerate(cells):
            top = SHEET_HEADER + row * SHEET_CELL
            draw.text((8, top + SHEET_CELL // 2), label, fill="black", font=font(SHEET_LABEL_FONT), anchor="lm")
            for column, path in enumerate(paths):
                picture = Image.open(path).convert("RGB").resize((SHEET_CELL, SHEET_CELL), Image.NEAREST)
                sheet.paste(picture, (LABEL_WIDTH + column * SHEET_CELL, top))
        buffer = io.BytesIO()
        sheet.save(buffer, format="PNG")
        write_bytes_atomic(out / file_name, buffer.getvalue())
        sources = ", ".join(f"{label}: {workflow} node {node}" for label, workflow, node in rows)
        written.append({"file": file_name, "caption": f"Overview: {title} ({sources})"})
    return written


LOSS_WINDOW = 10  # steps averaged for a run's first and last loss: single steps are noisy


def _localization(history_file: Path) -> dict[str, Any]:
    """Guidance, steps, first and last losses, and the first concept's attention shares before/after,
    from a run's loss_history.json."""
    record = json.loads(history_file.read_text())
    meta = record["metadata"]
    found = meta.get("localization", {})
    found = json.loads(found) if isinstance(found, str) else found
    steps = [entry for entry in record.get("history", []) if isinstance(entry.get("total"), (int, float))]
    losses: dict[str, Any] = {}
    if steps:
        window = min(LOSS_WINDOW, len(steps))
        losses = {"steps": len(steps),
                  "loss start": round(float(np.mean([e["total"] for e in steps[:window]])), 4),
                  "loss end": round(float(np.mean([e["total"] for e in steps[-window:]])), 4)}
    return {"guidance": meta.get("guidance", "?"), **losses,
            **{f"{when} {name}": round(float(found[when][key][0]), 3)
               for when in ("before", "after") for key, name in (("inside_own_mask", "own"),
                                                                  ("inside_other_objects", "other"))}}


NEW = (PAIR.new_color, PAIR.new_shape)
DISTRACTOR = (PAIR.distractor_color, PAIR.distractor_shape)
RATE_COLUMNS = ("fidelity", "leakage", "green floor", "collapsed")
EVALUATION_SCORES = ("clip_i", "clip_t", "kid_mean", "kid_std", "attention_inside", "attention_iou")


def _evaluation(scores_file: Path) -> dict[str, Any]:
    """The scores Evaluate TL Images saved (output/textual_localization/evaluation/<name>.json)."""
    scores = json.loads(scores_file.read_text())
    row: dict[str, Any] = {"pictures": scores.get("generated")}
    row.update({key: round(float(scores[key]), 3) for key in EVALUATION_SCORES
                if isinstance(scores.get(key), (int, float))})
    return row


def summarize(output_dir: Path) -> dict[str, Any]:
    """Print and return the losses and localisation of every run, the leakage of the guidance comparison
    and the evaluation scores."""
    runs = {f.parent.name: _localization(f)
            for f in sorted((output_dir / "textual_localization").glob("*/loss_history.json"))}
    print("\nThe learned token's share of attention inside its object (own) and inside the other object "
          "(other), on the training photos, before and after training, and the total loss (mean of the "
          f"first and last {LOSS_WINDOW} steps):")
    for name, row in runs.items():
        print(f"  {name:<16} guidance {row['guidance']:<5} own {row['before own']:.3f} -> {row['after own']:.3f}"
              f"   other {row['before other']:.3f} -> {row['after other']:.3f}"
              f"   loss {row.get('loss start', float('nan')):.3f} -> {row.get('loss end', float('nan')):.3f}")
    pictures: dict[str, Any] = {}
    for mode in ("none", "hard"):
        files = sorted(output_dir.glob(f"tl_guidance_{mode}_*.png"))
        if files:
            images = [np.asarray(Image.open(f).convert("RGB")) for f in files]
            found = rates(images, NEW, DISTRACTOR)
            pictures[mode] = {"pictures": len(images),
                              **{f"{name} [90 % interval]": str(found[name]) for name in RATE_COLUMNS}}
    if pictures:
        print(f"\nPictures from 'a photo of a <token> ball' (tl_guidance_compare.json), read by the world's object "
              f"rules: fidelity = shows the {PAIR.new_color} {PAIR.new_shape}, leakage = shows the "
              f"{PAIR.distractor_color} {PAIR.distractor_shape} of the training photos (rate [90 % Wilson interval]):")
        for mode, row in pictures.items():
            print(f"  guidance {mode:<5} {row['pictures']} pictures: "
                  + ", ".join(f"{name} {row[name + ' [90 % interval]']}" for name in RATE_COLUMNS))
    evaluation = {f.stem: _evaluation(f)
                  for f in sorted((output_dir / "textual_localization" / "evaluation").glob("*.json"))}
    if evaluation:
        print("\nEvaluate TL Images (tl_evaluate.json; random-weight CLIP and Inception: the scores only show "
              "that scoring runs):")
        for name, row in evaluation.items():
            print(f"  {name:<16} " + ", ".join(f"{key} {value}" for key, value in row.items()))
    print("(one seed and 32 pictures per run: bench/shapes_world.py measures the same over 3 seeds, 64 pictures each)")
    return {"runs": runs, "guidance_compare": pictures, "evaluation": evaluation}


if __name__ == "__main__":
    sys.exit(main())
