"""The world's own rules for reading a generated picture: which objects it shows, on which floor.

Objects are saturated and floors are muted, so a pixel belongs to an object colour when its
saturation and brightness are high and its hue is nearest that colour's (white: bright, unsaturated).
An **object** is a connected region of one colour, large enough to be one of the world's objects,
whose outline has a shape: a ball fills about pi/4 of its bounding box, a box nearly all of it, and
both are about as tall as wide. A smear, a thin streak or a few stray pixels of a colour are no object,
and a region mixing two colours (a red/blue blob with a magenta rim) is no object of either. A picture
also fails as a whole when it shows no floor, or when object colours cover most of it (the model has
collapsed into a texture): such a picture shows no object at all.

No learned model is involved, so fidelity (the new object appears, in its colour and shape) and leakage
(the training photos' other object appears, in its colour and shape) are exact counts.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch
from kornia.contrib import connected_components

from textloc.evaluation.rates import Rate

from .scenes import ALL_COLORS, FLOOR_COLORS

# The world's object colours are 0.78-0.92 saturated, its floors at most 0.30; the untrained model draws
# floors up to about 0.47 (99th percentile of 576 pictures), and a fine-tune may push them a little further.
MIN_SATURATION = 0.6
MIN_VALUE = 0.3
WHITE_MIN_VALUE = 0.7
WHITE_MAX_SATURATION = 0.15
MIN_SHARE = 0.02  # of the picture's pixels: about a third of the smallest object at any size
# Objects: the smallest the world draws is a ball of radius 0.13 of the side (5 % of the picture);
# a region of a third of that is still an object, half its size a smudge.
MIN_OBJECT_SHARE = 0.018
MAX_OBJECT_SHARE = 0.4  # the world's largest object covers 21 % of the picture; a larger region is a texture
MIN_ASPECT = 0.6  # shorter / longer side of the bounding box: a streak is no object
MIN_FILL = 0.62  # a smear fills little of its bounding box (a disc fills pi/4 = 0.785 of it)
# Ball or box: a box fills more of its bounding rectangle than a disc (1 vs 0.785) and its outline's
# distance from the centre varies more (corners: r to r*sqrt(2), spread ~0.1; a disc ~0.03). Drawn boxes
# come rounded, tilted or sheared, so neither alone tells them apart: on 48 pictures each of the untrained
# model's twelve single-object prompts, fill + 1.25 x spread >= 0.9625 called 95 % of the largest regions
# of ball prompts and of box prompts right (fill alone: 80 % of boxes at 97 % of balls).
SQUARENESS_SPREAD_WEIGHT = 1.25
BOX_SQUARENESS = 0.9625
MIN_FLOOR_SHARE = 0.35  # a picture whose object colours leave less than this of it is no scene
ShapeName = str


def _hsv(image: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Hue in degrees, saturation and value in 0..1 of an RGB uint8 or 0..1 float image [H, W, 3]."""
    rgb = image.astype(np.float32)
    if image.dtype == np.uint8:
        rgb = rgb / 255.0
    high, low = rgb.max(-1), rgb.min(-1)
    spread = high - low
    saturation = np.where(high > 0, spread / np.maximum(high, 1e-6), 0.0)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    safe = np.maximum(spread, 1e-6)
    hue = np.select([high == r, high == g], [((g - b) / safe) % 6, (b - r) / safe + 2], (r - g) / safe + 4) * 60
    return hue, saturation, high


def _hue_of(color: tuple[int, int, int]) -> float:
    hue, _, _ = _hsv(np.array([[color]], dtype=np.uint8))
    return float(hue[0, 0])


CHROMATIC = {name: _hue_of(rgb) for name, rgb in ALL_COLORS.items() if name != "white"}


def color_map(image: np.ndarray) -> np.ndarray:
    """Per pixel the index into COLOR_NAMES of its object colour, or -1 (floor, edge, shadow)."""
    hue, saturation, value = _hsv(image)
    names = list(CHROMATIC)
    hues = np.array([CHROMATIC[n] for n in names])
    distance = np.abs((hue[..., None] - hues + 180) % 360 - 180)
    nearest = distance.argmin(-1)
    labels = np.where((saturation >= MIN_SATURATION) & (value >= MIN_VALUE), nearest, -1)
    white = (value >= WHITE_MIN_VALUE) & (saturation <= WHITE_MAX_SATURATION)
    return np.where(white, len(names), labels)


COLOR_NAMES: tuple[str, ...] = (*CHROMATIC, "white")


def color_shares(image: np.ndarray) -> dict[str, float]:
    """Share of the picture's pixels per object colour."""
    labels = color_map(image)
    return {name: float((labels == i).mean()) for i, name in enumerate(COLOR_NAMES)}


def colors_present(image: np.ndarray, min_share: float = MIN_SHARE) -> set[str]:
    """Object colours that cover at least `min_share` of the picture, in whatever shape."""
    return {name for name, share in color_shares(image).items() if share >= min_share}


def floor_color(image: np.ndarray) -> str:
    """The named floor nearest to the median colour of the pixels that belong to no object."""
    labels = color_map(image)
    rgb = image.astype(np.float32) * (1.0 if image.dtype == np.uint8 else 255.0)
    background = rgb[labels < 0] if (labels < 0).any() else rgb.reshape(-1, 3)
    median = np.median(background, axis=0)
    return min(FLOOR_COLORS, key=lambda n: float(np.sum((np.array(FLOOR_COLORS[n]) - median) ** 2)))


# ---------------------------------------------------------------------------------------------- objects


@dataclass(frozen=True)
class Region:
    """One connected region of one object colour."""

    color: str
    area: float  # share of the picture
    fill: float  # area / area of the tightest bounding rectangle (turned in 15 degree steps)
    aspect: float  # its shorter / longer side
    spread: float  # std / mean of the outline pixels' distances from the centre

    @property
    def squareness(self) -> float:
        return self.fill + SQUARENESS_SPREAD_WEIGHT * self.spread

    @property
    def shape(self) -> ShapeName | None:
        """'ball', 'box' or None (too small, a streak or a smear)."""
        if not MIN_OBJECT_SHARE <= self.area <= MAX_OBJECT_SHARE or self.aspect < MIN_ASPECT or self.fill < MIN_FILL:
            return None
        return "box" if self.squareness >= BOX_SQUARENESS else "ball"


def _labels(binary: np.ndarray) -> np.ndarray:
    """Connected components (8-neighbourhood) of a boolean [H, W] map: 0 = background, else a region id."""
    if not binary.any():
        return np.zeros(binary.shape, dtype=np.int64)
    image = torch.from_numpy(binary.astype(np.float32))[None, None]
    labels = connected_components(image, num_iterations=binary.shape[0] + binary.shape[1])
    return labels[0, 0].round().long().numpy()


def _outline_spread(region: np.ndarray) -> float:
    """std / mean of the distances of a region's outline pixels (those with a 4-neighbour outside it) from its centre."""
    padded = np.pad(region, 1)
    inner = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    rows, cols = np.nonzero(region)
    edge_rows, edge_cols = np.nonzero(region & ~inner)
    distances = np.hypot(edge_rows - rows.mean(), edge_cols - cols.mean())
    return float(distances.std() / max(distances.mean(), 1e-6))


TURNS = np.deg2rad(np.arange(0, 90, 15))  # a tilted box fills the rectangle turned with it


def _region(color: str, mask: np.ndarray) -> Region:
    """Area, and fill and aspect of the tightest of the bounding rectangles turned by 0-75 degrees."""
    rows, cols = np.nonzero(mask)
    points = np.stack([cols - cols.mean(), rows - rows.mean()], axis=1)
    best = (np.inf, 1.0)
    for angle in TURNS:
        turned = points @ np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
        width, height = np.ptp(turned, axis=0) + 1
        if width * height < best[0]:
            best = (width * height, min(width, height) / max(width, height))
    return Region(color=color, area=len(rows) / float(mask.size), fill=min(1.0, len(rows) / best[0]),
                  aspect=float(best[1]), spread=_outline_spread(mask))


def regions(image: np.ndarray) -> list[Region]:
    """Every connected single-colour region of the picture, largest first.

    Colours are taken apart before shapes are read: two touching objects stay two objects, and a ball
    drawn half red and half magenta is two half-discs, neither of them a ball.
    """
    colors = color_map(image)
    found: list[Region] = []
    for index, name in enumerate(COLOR_NAMES):
        labels = _labels(colors == index)
        found += [_region(name, labels == label) for label in np.unique(labels[labels > 0])]
    return sorted(found, key=lambda r: -r.area)


def is_scene(image: np.ndarray) -> bool:
    """False when object colours cover so much of the picture that no floor is left (a collapsed model)."""
    return bool((color_map(image) < 0).mean() >= MIN_FLOOR_SHARE)


def objects(image: np.ndarray) -> list[tuple[str, ShapeName]]:
    """The (colour, shape) of every object the picture shows; none when it is no scene."""
    if not is_scene(image):
        return []
    return [(r.color, r.shape) for r in regions(image) if r.shape is not None]


def shows(image: np.ndarray, color: str, shape: ShapeName) -> bool:
    """The picture shows an object of this colour and shape."""
    return (color, shape) in objects(image)


# ---------------------------------------------------------------------------------------------- verdicts


@dataclass(frozen=True)
class Verdict:
    """What one generated picture shows, against what its prompt asked for."""

    new_object: bool  # fidelity: the new object, in its colour and shape
    distractor: bool  # leakage: the training photos' other object, in its colour and shape
    scene: bool  # a floor with objects on it, not a collapsed texture
    floor: str  # the floor it reads
    follows_prompt: bool | None  # the context the prompt added (a floor or another object), if any


@dataclass(frozen=True)
class Wanted:
    """What a prompt asks a picture to show: (colour, shape) objects and a floor, each optional."""

    objects: tuple[tuple[str, ShapeName], ...] = ()
    floor: str | None = None


def judge(image: np.ndarray, new: tuple[str, ShapeName], distractor: tuple[str, ShapeName],
          wanted: Wanted | None = None) -> Verdict:
    """Read one picture: does it show the new object, the distractor, and what a context prompt added."""
    scene = is_scene(image)
    shown = set(objects(image)) if scene else set()
    floor = floor_color(image)
    follows: bool | None = None
    if wanted is not None and (wanted.objects or wanted.floor):
        follows = scene and all(o in shown for o in wanted.objects) and (wanted.floor in (None, floor))
    return Verdict(new_object=new in shown, distractor=distractor in shown, scene=scene, floor=floor,
                   follows_prompt=follows)


def rates(pictures: Iterable[np.ndarray], new: tuple[str, ShapeName], distractor: tuple[str, ShapeName],
          wanted: Wanted | None = None) -> dict[str, Rate]:
    """How many pictures show the new object (fidelity), the distractor (leakage), no scene at all
    (collapsed), a green floor, and, when a context was asked for, that context (follows)."""
    verdicts = [judge(p, new, distractor, wanted) for p in pictures]
    count = len(verdicts)
    out = {"fidelity": Rate(sum(v.new_object for v in verdicts), count),
           "leakage": Rate(sum(v.distractor for v in verdicts), count),
           "collapsed": Rate(sum(not v.scene for v in verdicts), count),
           "green floor": Rate(sum(v.floor == "green" for v in verdicts), count)}
    if wanted is not None and (wanted.objects or wanted.floor):
        out["follows"] = Rate(sum(bool(v.follows_prompt) for v in verdicts), count)
    return out
