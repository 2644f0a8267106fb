#!/usr/bin/env python3
"""The main job on the shapes-world model and its photos: every demo workflow, outputs kept, and the
method's numbers: where the learned token attends before and after training, and how often pictures
made with it show the other object of the training photos (leakage), with and without guidance.

    python scripts/demo.py --out out/demo
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from headless.paths import WORKFLOWS_DIR  # noqa: E402
from headless.runner import copy_output_tree, prepare_server  # noqa: E402
from headless.server import WorkflowError  # noqa: E402
from headless.workflow import load_workflow, to_api_prompt  # noqa: E402
from shapes_world.judge import rates  # noqa: E402
from shapes_world.model import ensure_world_checkpoint  # noqa: E402
from shapes_world.training_sets import PAIR  # noqa: E402

# The whole story, in this order (later workflows read what earlier ones trained). Each one's
# pictures go to its own sub-folder of --out; everything written under ComfyUI's output/
# (weights, tokens, checkpoints, loss history, attention pictures) is copied to --out/output/.
DEMO_WORKFLOWS = (
    "tl_dataset_preview.json",
    "tl_train.json",
    "tl_train_and_generate.json",
    "tl_before_after_attention.json",
    "tl_guidance_compare.json",
    "tl_two_concepts.json",
    "tl_evaluate.json",
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("out/demo"))
    args = parser.parse_args(argv)
    out = args.out.resolve()
    server = prepare_server(ensure_world_checkpoint())
    try:
        server.start()
        info = server.object_info()
        pictures: dict[str, list[Path]] = {}
        for name in DEMO_WORKFLOWS:
            started = time.monotonic()
            print(f"running {name} ...", flush=True)
            workflow = load_workflow(WORKFLOWS_DIR / name)
            result = server.run(to_api_prompt(workflow, info), timeout=3600, workflow=workflow)
            pictures[name] = server.save_images(result, out / Path(name).stem)
            print(f"  done in {time.monotonic() - started:.1f} s, {len(pictures[name])} pictures")
        files = copy_output_tree(server, out / "output")
        print(f"{len(files)} files written by the workflows copied to {out / 'output'}")
        for sheet in write_sheets(pictures, out):
            print(f"wrote {sheet}")
        summary = summarize(out / "output")
        (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    except WorkflowError as err:
        print(f"demo failed: {err}\n--- server log (tail) ---\n{server.log_tail()}", file=sys.stderr)
        return 1
    finally:
        server.cleanup()
    print(f"demo outputs are in {out}")
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
LABEL_WIDTH = 120
SHEET_CELL = 128


def write_sheets(pictures: dict[str, list[Path]], out: Path) -> list[Path]:
    """Labelled overview pictures made from the workflows' outputs (one row per output node)."""
    written = []
    for file_name, title, rows in SHEETS:
        cells = [(label, [p for p in pictures.get(workflow, []) if p.name.startswith(f"node{node}_")])
                 for label, workflow, node in rows]
        if not all(paths for _, paths in cells):
            continue
        columns = max(len(paths) for _, paths in cells)
        sheet = Image.new("RGB", (LABEL_WIDTH + columns * SHEET_CELL, 24 + len(cells) * SHEET_CELL), "white")
        draw = ImageDraw.Draw(sheet)
        draw.text((6, 6), title, fill="black")
        for row, (label, paths) in enumerate(cells):
            top = 24 + row * SHEET_CELL
            draw.text((6, top + SHEET_CELL // 2 - 6), label, fill="black")
            for column, path in enumerate(paths):
                picture = Image.open(path).convert("RGB").resize((SHEET_CELL, SHEET_CELL), Image.NEAREST)
                sheet.paste(picture, (LABEL_WIDTH + column * SHEET_CELL, top))
        sheet.save(out / file_name)
        written.append(out / file_name)
    return written


def _localization(history_file: Path) -> dict[str, Any]:
    """Guidance and the first concept's attention shares before/after, from a run's loss_history.json."""
    meta = json.loads(history_file.read_text())["metadata"]
    found = meta.get("localization", {})
    found = json.loads(found) if isinstance(found, str) else found
    return {"guidance": meta.get("guidance", "?"),
            **{f"{when} {name}": round(float(found[when][key][0]), 3)
               for when in ("before", "after") for key, name in (("inside_own_mask", "own"),
                                                                  ("inside_other_objects", "other"))}}


def summarize(output_dir: Path) -> dict[str, Any]:
    """Print and return the localisation of every run and the leakage of the guidance comparison."""
    runs = {f.parent.name: _localization(f)
            for f in sorted((output_dir / "textual_localization").glob("*/loss_history.json"))}
    print("\nThe learned token's share of attention inside its object (own) and inside the other object "
          "(other), on the training photos, before and after training:")
    for name, row in runs.items():
        print(f"  {name:<16} guidance {row['guidance']:<5} own {row['before own']:.3f} -> {row['after own']:.3f}"
              f"   other {row['before other']:.3f} -> {row['after other']:.3f}")
    pictures: dict[str, Any] = {}
    for mode in ("none", "hard"):
        files = sorted(output_dir.glob(f"tl_guidance_{mode}_*.png"))
        if files:
            images = [np.asarray(Image.open(f).convert("RGB")) for f in files]
            pictures[mode] = rates(images, PAIR.new_color, PAIR.distractor_color)
    if pictures:
        print(f"\nPictures from 'a photo of a <token> ball' (tl_guidance_compare.json): fidelity = shows the "
              f"{PAIR.new_color} {PAIR.new_shape}, leakage = shows the {PAIR.distractor_color} "
              f"{PAIR.distractor_shape} of the training photos:")
        for mode, row in pictures.items():
            print(f"  guidance {mode:<5} {row['pictures']:.0f} pictures: fidelity {row['fidelity']:.2f}, "
                  f"leakage {row['leakage']:.2f}")
    print("(one seed, a handful of pictures: bench/shapes_world.py measures the same over 3 seeds)")
    return {"runs": runs, "guidance_compare": pictures}


if __name__ == "__main__":
    sys.exit(main())
