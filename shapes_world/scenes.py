"""The shapes world: seeded scenes of balls and boxes with an exact mask per object and a caption.

A scene is a muted floor colour and one or two objects (a shaded ball or a box) of a named colour
at a random place and size, never overlapping. Rendering is plain numpy at any size, so the same
scene gives the 64 px pretraining image and the photo of a training set. Everything follows from
the seed: the same seed always gives the same pixels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

Color = tuple[int, int, int]

# Object colours of the pretraining world. The new concepts' colours (NEW_COLORS) never appear there.
OBJECT_COLORS: dict[str, Color] = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (40, 70, 220),
    "yellow": (235, 215, 40),
    "orange": (240, 130, 20),
    "white": (240, 240, 240),
}
NEW_COLORS: dict[str, Color] = {"magenta": (225, 40, 225)}
ALL_COLORS: dict[str, Color] = {**OBJECT_COLORS, **NEW_COLORS}
# Floors are muted, so an object never shares its floor's colour.
FLOOR_COLORS: dict[str, Color] = {
    "grey": (128, 128, 128),
    "green": (112, 140, 104),
    "blue": (104, 118, 148),
    "brown": (140, 116, 92),
}
SHAPES: tuple[str, ...] = ("ball", "box")
FLOOR_IN_CAPTION = 0.5  # share of captions that name the floor


@dataclass(frozen=True)
class WorldObject:
    """One object: shape, colour name and placement in units of the image side (0..1)."""

    shape: str
    color: str
    cx: float
    cy: float
    radius: float  # a ball's radius, half a box's side

    def word(self) -> str:
        return f"{self.color} {self.shape}"


@dataclass(frozen=True)
class Scene:
    floor: str
    objects: tuple[WorldObject, ...]
    name_floor: bool = True

    def caption(self) -> str:
        """'a photo of a red ball and a blue box on a green floor'."""
        text = "a photo of " + " and ".join(f"a {o.word()}" for o in self.objects)
        return text + (f" on a {self.floor} floor" if self.name_floor else "")


def _place(rng: np.random.Generator, placed: list[WorldObject], radius: float) -> tuple[float, float] | None:
    """A centre for an object of this radius that keeps clear of the image edge and of `placed`."""
    for _ in range(100):
        cx, cy = rng.uniform(radius + 0.03, 1 - radius - 0.03, size=2)
        if all(math.hypot(cx - o.cx, cy - o.cy) > (radius + o.radius) * 1.2 + 0.04 for o in placed):
            return float(cx), float(cy)
    return None


def random_scene(rng: np.random.Generator, colors: dict[str, Color] = OBJECT_COLORS,
                 count: int | None = None, shapes: tuple[str, ...] = SHAPES) -> Scene:
    """One pretraining scene: 1-2 objects of different (shape, colour), random floor."""
    count = count or int(rng.integers(1, 3))
    objects: list[WorldObject] = []
    kinds: set[tuple[str, str]] = set()
    names = list(colors)
    while len(objects) < count:
        shape = shapes[int(rng.integers(len(shapes)))]
        color = names[int(rng.integers(len(names)))]
        if (shape, color) in kinds:
            continue
        radius = float(rng.uniform(0.13, 0.23))
        centre = _place(rng, objects, radius)
        if centre is None:  # no room beside the objects so far: start the scene again
            objects.clear()
            kinds.clear()
            continue
        kinds.add((shape, color))
        objects.append(WorldObject(shape, color, *centre, radius))
    floors = list(FLOOR_COLORS)
    return Scene(floor=floors[int(rng.integers(len(floors)))], objects=tuple(objects),
                 name_floor=bool(rng.random() < FLOOR_IN_CAPTION))


def object_mask(obj: WorldObject, size: int) -> np.ndarray:
    """Exact boolean mask of one object at `size` px (pixel centres inside the shape)."""
    coords = (np.arange(size) + 0.5) / size
    y, x = np.meshgrid(coords, coords, indexing="ij")
    if obj.shape == "ball":
        return (x - obj.cx) ** 2 + (y - obj.cy) ** 2 <= obj.radius**2
    if obj.shape == "box":
        return (np.abs(x - obj.cx) <= obj.radius) & (np.abs(y - obj.cy) <= obj.radius)
    raise ValueError(f"unknown shape {obj.shape!r}; the world knows {', '.join(SHAPES)}")


def render(scene: Scene, size: int, colors: dict[str, Color] = ALL_COLORS) -> tuple[np.ndarray, list[np.ndarray]]:
    """(RGB uint8 [size, size, 3], one boolean mask per object in scene order)."""
    coords = (np.arange(size) + 0.5) / size
    y, x = np.meshgrid(coords, coords, indexing="ij")
    floor = np.array(FLOOR_COLORS[scene.floor], dtype=np.float32)
    shade = 0.85 + 0.3 * y[..., None]  # lighter towards the viewer
    image = floor[None, None, :] * shade
    masks = []
    for obj in scene.objects:
        mask = object_mask(obj, size)
        color = np.array(colors[obj.color], dtype=np.float32)
        if obj.shape == "ball":  # lit from the upper left
            d = np.hypot(x - (obj.cx - 0.35 * obj.radius), y - (obj.cy - 0.35 * obj.radius)) / obj.radius
            light = np.clip(1.15 - 0.45 * d, 0.55, 1.15)[..., None]
        else:  # a flat front face with a lighter top band
            light = np.where(y < obj.cy - 0.6 * obj.radius, 1.12, 0.95)[..., None]
        image = np.where(mask[..., None], np.clip(color * light, 0, 255), image)
        masks.append(mask)
    return np.clip(image, 0, 255).round().astype(np.uint8), masks


def scene_batch(seed: int, count: int, size: int, **kwargs) -> tuple[list[Scene], np.ndarray, list[list[np.ndarray]]]:
    """`count` seeded scenes with their images [count, size, size, 3] and masks."""
    rng = np.random.default_rng(seed)
    scenes = [random_scene(rng, **kwargs) for _ in range(count)]
    rendered = [render(s, size) for s in scenes]
    return scenes, np.stack([r[0] for r in rendered]), [r[1] for r in rendered]
