"""The world's multi-concept training sets, in the authors' folder layout.

`shapes_pair`: 5 photos of a *magenta* ball (a colour the world model never saw) beside a yellow box,
`mask_1/` = the ball, `mask_2/` = the box. `shapes_pair_heldout`: 10 new scenes of the same pair,
never trained on, for measuring where the learned token attends. Photos are PNGs at PHOTO_SIZE px;
Load Multi-Concept Dataset resizes them to the training resolution.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .scenes import FLOOR_COLORS, Scene, WorldObject, _place, render

PHOTO_SIZE = 128
TRAIN_SET = "shapes_pair"
HELDOUT_SET = "shapes_pair_heldout"
TRAIN_SEED = 5
HELDOUT_SEED = 6


@dataclass(frozen=True)
class PairConcept:
    """The new object and the distractor that shares every training photo with it."""

    new_shape: str = "ball"
    new_color: str = "magenta"
    distractor_shape: str = "box"
    distractor_color: str = "yellow"


PAIR = PairConcept()


def pair_scene(rng: np.random.Generator, pair: PairConcept = PAIR) -> Scene:
    """The new object and the distractor at random places, sizes and floor."""
    while True:
        objects: list[WorldObject] = []
        for shape, color in ((pair.new_shape, pair.new_color), (pair.distractor_shape, pair.distractor_color)):
            radius = float(rng.uniform(0.14, 0.22))
            centre = _place(rng, objects, radius)
            if centre is None:
                break
            objects.append(WorldObject(shape, color, *centre, radius))
        if len(objects) == 2:
            floors = list(FLOOR_COLORS)
            return Scene(floor=floors[int(rng.integers(len(floors)))], objects=tuple(objects))


def write_pair_set(parent: Path, name: str, seed: int, count: int, size: int = PHOTO_SIZE) -> Path:
    """`<parent>/<name>/{resized,mask_1,mask_2}/NN.png` plus a README.md; returns the set folder."""
    set_dir = Path(parent) / name
    for sub in ("resized", "mask_1", "mask_2"):
        (set_dir / sub).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    captions = []
    for number in range(1, count + 1):
        scene = pair_scene(rng)
        image, masks = render(scene, size)
        file = f"{number:02d}.png"
        Image.fromarray(image, "RGB").save(set_dir / "resized" / file, optimize=True)
        for index, mask in enumerate(masks, start=1):
            Image.fromarray((mask * 255).astype(np.uint8), "L").save(set_dir / f"mask_{index}" / file, optimize=True)
        captions.append(f"- {file}: {scene.caption()}")
    (set_dir / "README.md").write_text(
        f"# {name}\n\nShapes-world scenes (seed {seed}, written by `scripts/make_sample_data.py`): a "
        f"{PAIR.new_color} {PAIR.new_shape} (`mask_1/`, a colour the world model never saw) beside a "
        f"{PAIR.distractor_color} {PAIR.distractor_shape} (`mask_2/`).\n\n" + "\n".join(captions) + "\n")
    return set_dir


def write_world_sets(parent: Path) -> list[Path]:
    """Both sets: 5 training photos and 10 held-out scenes."""
    return [write_pair_set(parent, TRAIN_SET, TRAIN_SEED, 5), write_pair_set(parent, HELDOUT_SET, HELDOUT_SEED, 10)]
