"""The world's own rules for reading a generated picture: which object colours it shows, which floor.

Object colours are saturated and floors are muted, so a pixel belongs to an object colour when its
saturation and brightness are high and its hue is nearest that colour's (white: bright, unsaturated).
A colour counts as present when enough pixels carry it. No learned model is involved, so leakage
(the distractor appears) and fidelity (the new object appears in its own colour) are exact counts.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from .scenes import ALL_COLORS, FLOOR_COLORS

MIN_SATURATION = 0.5
MIN_VALUE = 0.3
WHITE_MIN_VALUE = 0.7
WHITE_MAX_SATURATION = 0.15
MIN_SHARE = 0.02  # of the picture's pixels: about a third of the smallest object at any size


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
    return {name for name, share in color_shares(image).items() if share >= min_share}


def floor_color(image: np.ndarray) -> str:
    """The named floor nearest to the median colour of the pixels that belong to no object."""
    labels = color_map(image)
    rgb = image.astype(np.float32) * (1.0 if image.dtype == np.uint8 else 255.0)
    background = rgb[labels < 0] if (labels < 0).any() else rgb.reshape(-1, 3)
    median = np.median(background, axis=0)
    return min(FLOOR_COLORS, key=lambda n: float(np.sum((np.array(FLOOR_COLORS[n]) - median) ** 2)))


@dataclass(frozen=True)
class Verdict:
    """What one generated picture shows, against what its prompt asked for."""

    new_object: bool  # fidelity: the new object's colour is there
    distractor: bool  # leakage: the training photos' other object's colour is there
    follows_prompt: bool | None  # the context the prompt added (a floor or another object), if any


def judge(image: np.ndarray, new_color: str, distractor_color: str,
          wanted_color: str | None = None, wanted_floor: str | None = None) -> Verdict:
    """Read one picture; `wanted_*` is what a context prompt added."""
    present = colors_present(image)
    follows: bool | None = None
    if wanted_color is not None:
        follows = wanted_color in present
    if wanted_floor is not None:
        follows = (follows is not False) and floor_color(image) == wanted_floor
    return Verdict(new_object=new_color in present, distractor=distractor_color in present, follows_prompt=follows)


def rates(pictures: Iterable[np.ndarray], new_color: str, distractor_color: str,
          wanted_color: str | None = None, wanted_floor: str | None = None) -> dict[str, float]:
    """Share of pictures that show the new object (fidelity), the distractor (leakage) and, when a
    context was asked for, that context (follows)."""
    verdicts = [judge(p, new_color, distractor_color, wanted_color, wanted_floor) for p in pictures]
    scores = {"pictures": float(len(verdicts)),
              "fidelity": float(np.mean([v.new_object for v in verdicts])),
              "leakage": float(np.mean([v.distractor for v in verdicts]))}
    if wanted_color or wanted_floor:
        scores["follows"] = float(np.mean([bool(v.follows_prompt) for v in verdicts]))
    return scores
