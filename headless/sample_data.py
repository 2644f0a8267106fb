"""Synthetic two-concept photo set (a red ball and a blue box) in the authors' folder layout.

It lets users and tests run the whole pipeline without real photos: 5 images 512x512 RGBA
(alpha 255, as the authors' files) with binary masks, `mask_1` = ball, `mask_2` = box.
Flat colours only, so every PNG stays small, and fixed geometry, so every run writes the same bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SET_NAME = "toy_pair"
SIZE = 512
HORIZON = 280  # wall above, table below

Color = tuple[int, int, int]
Polygon = list[tuple[int, int]]


@dataclass(frozen=True)
class Scene:
    """One photo: a ball (centre, radius) and a cube-ish box (left, bottom, side)."""

    ball: tuple[int, int, int]
    box: tuple[int, int, int]


SCENES: tuple[Scene, ...] = (
    Scene(ball=(150, 370, 70), box=(300, 440, 120)),
    Scene(ball=(390, 340, 50), box=(70, 470, 150)),
    Scene(ball=(230, 420, 80), box=(350, 360, 90)),
    Scene(ball=(110, 330, 40), box=(200, 480, 170)),
    Scene(ball=(400, 440, 60), box=(90, 350, 100)),
)


def write_toy_pair(out_dir: Path) -> Path:
    """Write `<out_dir>/toy_pair/{resized,mask_1,mask_2}/NN.png` and return the set folder."""
    set_dir = Path(out_dir) / SET_NAME
    for sub in ("resized", "mask_1", "mask_2"):
        (set_dir / sub).mkdir(parents=True, exist_ok=True)
    for number, scene in enumerate(SCENES, start=1):
        image, ball_mask, box_mask = render_scene(scene)
        name = f"{number:02d}.png"
        image.save(set_dir / "resized" / name, optimize=True)
        ball_mask.save(set_dir / "mask_1" / name, optimize=True)
        box_mask.save(set_dir / "mask_2" / name, optimize=True)
    return set_dir


def render_scene(scene: Scene) -> tuple[Image.Image, Image.Image, Image.Image]:
    """(photo RGBA, ball mask RGB, box mask RGB) of one scene."""
    image = Image.fromarray(_background(), "RGB")
    draw = ImageDraw.Draw(image)
    cx, cy, r = scene.ball
    draw.ellipse(_box_of(cx + r // 5, cy + r - r // 6, r, r // 4), fill=(120, 88, 60))  # ball shadow
    left, bottom, side = scene.box
    draw.ellipse(
        _box_of(left + side * 2 // 3, bottom - side // 12, side * 3 // 4, side // 8), fill=(120, 88, 60)
    )
    _draw_ball(draw, cx, cy, r)
    faces = _box_faces(left, bottom, side)
    for polygon, color in zip(faces, ((40, 80, 200), (90, 130, 235), (25, 50, 140)), strict=True):
        draw.polygon(polygon, fill=color)

    ball_mask = Image.new("RGB", (SIZE, SIZE), (0, 0, 0))
    ImageDraw.Draw(ball_mask).ellipse(_box_of(cx, cy, r, r), fill=(255, 255, 255))
    box_mask = Image.new("RGB", (SIZE, SIZE), (0, 0, 0))
    for polygon in faces:
        ImageDraw.Draw(box_mask).polygon(polygon, fill=(255, 255, 255))
    return image.convert("RGBA"), ball_mask, box_mask


def _background() -> np.ndarray:
    """A light wall over a wooden table, each a vertical gradient (rows compress to almost nothing)."""
    rows = np.arange(SIZE, dtype=np.float32)[:, None]
    wall = np.array([225, 220, 205], np.float32) - 40.0 * rows / HORIZON
    table_t = (rows - HORIZON) / (SIZE - HORIZON)
    table = np.array([170, 125, 85], np.float32) + np.array([30, 25, 20], np.float32) * table_t
    column = np.where(rows < HORIZON, wall, table)
    return np.repeat(column[:, None, :], SIZE, axis=1).round().astype(np.uint8)


def _draw_ball(draw: ImageDraw.ImageDraw, cx: int, cy: int, r: int) -> None:
    """Flat-shaded sphere: nested discs shifted towards a top-left light, then a highlight."""
    bands: tuple[tuple[float, Color], ...] = (
        (1.0, (150, 20, 25)),
        (0.8, (195, 35, 40)),
        (0.55, (230, 60, 60)),
        (0.3, (250, 110, 105)),
        (0.12, (255, 225, 220)),
    )
    for scale, color in bands:
        shift = round((1.0 - scale) * r * 0.45)
        draw.ellipse(_box_of(cx - shift, cy - shift, round(r * scale), round(r * scale)), fill=color)


def _box_faces(left: int, bottom: int, side: int) -> tuple[Polygon, Polygon, Polygon]:
    """Front, top and right faces of a cube seen slightly from above and the left."""
    depth = side * 35 // 100
    top, right = bottom - side, left + side
    front = [(left, top), (right, top), (right, bottom), (left, bottom)]
    lid = [(left, top), (right, top), (right + depth, top - depth), (left + depth, top - depth)]
    flank = [(right, top), (right + depth, top - depth), (right + depth, bottom - depth), (right, bottom)]
    return front, lid, flank


def _box_of(cx: int, cy: int, rx: int, ry: int) -> tuple[int, int, int, int]:
    return (cx - rx, cy - ry, cx + rx, cy + ry)
