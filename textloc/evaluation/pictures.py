"""Pictures that read on their own: the attention sheet of a training run and its loss chart.

Both are ComfyUI IMAGEs ([1, H, W, 3] float 0..1) drawn with PIL, labelled with Pillow's bundled
scalable font, so a saved file or a preview says what it shows without the workflow next to it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont

from ..attention import heatmap
from ..attention.localization import attention_mass_inside
from ..data import masks

BACKGROUND = (255, 255, 255)
INK = (32, 32, 32)
FAINT = (120, 120, 120)
GRID = (225, 225, 225)

# Attention sheet layout (pixels): outer margin, gap between panels, row header and panel title bands.
SHEET_MARGIN = 12
SHEET_GAP = 10
HEADER_BAND = 32
TITLE_BAND = 24
HEADER_FONT = 20
TITLE_FONT = 15

# The same series colours as the editor's live chart (web/js/textloc.js); total is drawn in ink.
SERIES_COLORS: dict[str, tuple[int, int, int]] = {
    "total": INK,
    "denoise": (77, 157, 224),
    "prior": (124, 179, 66),
    "attention": (240, 138, 36),
}
CHART_SIZE = (800, 450)
CHART_PLOT = (84, 78, 776, 390)  # left, top, right, bottom of the plotting area in a default-size chart
SMOOTH_ABOVE = 60  # longer histories get a running mean drawn over the raw, lighter line


@lru_cache(maxsize=8)
def font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """Pillow's bundled scalable font at `size` px (cached: the live preview draws it every few steps)."""
    return ImageFont.load_default(size=size)


def to_image_tensor(picture: Image.Image) -> torch.Tensor:
    """PIL RGB picture -> ComfyUI IMAGE [1, H, W, 3] float32 in 0..1."""
    array = np.asarray(picture.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(array.copy())[None]


def to_pil(image: torch.Tensor) -> Image.Image:
    """One IMAGE [H, W, 3] (or the first of [N, H, W, 3]) in 0..1 -> PIL RGB picture."""
    if image.ndim == 4:
        image = image[0]
    array = (image.detach().float().cpu().clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    return Image.fromarray(array, "RGB")


def note_picture(text: str, size: tuple[int, int] = CHART_SIZE, title: str = "") -> torch.Tensor:
    """A picture that only says `text` (centred), e.g. where there is nothing to draw yet."""
    canvas = Image.new("RGB", size, BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((size[0] / 2, 12), title, fill=INK, font=font(18), anchor="mt")
    draw.multiline_text((size[0] / 2, size[1] / 2), text, fill=FAINT, font=font(16), anchor="mm", align="center")
    return to_image_tensor(canvas)


# ---------------------------------------------------------------------------------------------- attention sheet


def _fit(images: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """[N, H, W, 3] -> [N, height, width, 3]; antialiased so a 512 px photo shrinks cleanly."""
    if images.shape[1:3] == (height, width):
        return images.float()
    resized = F.interpolate(images.permute(0, 3, 1, 2).float(), size=(height, width), mode="bilinear",
                            align_corners=False, antialias=True)
    return resized.permute(0, 2, 3, 1).clamp(0, 1)


def attention_sheet(
    photos: torch.Tensor,
    maps: torch.Tensor,
    concept_masks: torch.Tensor,
    tokens: Sequence[str],
    step: int,
    panel: int = 256,
    class_words: Sequence[str] | None = None,
) -> torch.Tensor:
    """One labelled row per concept: photo | attention map over it | mask over it, as IMAGE [1, H, W, 3].

    photos: [C or 1, H, W, 3]; maps: [C, h, w] in 0..1 (the token's map); concept_masks: [C, h', w'].
    Every panel is `panel` px high (wider for a wide photo). The row header names the token, its
    class word and the step; the attention title gives the share of the map inside the mask.
    """
    count = len(tokens)
    if maps.shape[0] != count or concept_masks.shape[0] != count or photos.shape[0] not in (1, count):
        raise ValueError(f"attention_sheet: {count} tokens, {maps.shape[0]} maps, {concept_masks.shape[0]} masks "
                         f"and {photos.shape[0]} photos do not match")
    if class_words is not None and len(class_words) != count:
        raise ValueError(f"attention_sheet: {len(class_words)} class words for {count} tokens")
    maps = maps.detach().float().cpu().clamp(0, 1)
    concept_masks = concept_masks.detach().float().cpu()
    height, width = panel, max(1, round(panel * photos.shape[2] / photos.shape[1]))
    shown = _fit(photos.detach().cpu()[..., :3], height, width).expand(count, -1, -1, -1)
    panels = [
        shown,
        heatmap.overlay(shown, maps),
        masks.overlay(shown, heatmap.resize_maps(concept_masks, height, width).clamp(0, 1)),
    ]
    share = attention_mass_inside(maps, concept_masks)
    row_height = HEADER_BAND + TITLE_BAND + height + SHEET_MARGIN
    canvas = Image.new("RGB", (2 * SHEET_MARGIN + 3 * width + 2 * SHEET_GAP, SHEET_MARGIN + count * row_height),
                       BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    for row in range(count):
        top = SHEET_MARGIN + row * row_height
        name = tokens[row] if class_words is None else f"{tokens[row]} ({class_words[row]})"
        draw.text((SHEET_MARGIN, top + HEADER_BAND - 6), f"{name} - step {step}", fill=INK,
                  font=font(HEADER_FONT), anchor="ls")
        titles = ("photo", f"attention, {100 * float(share[row]):.0f}% in mask", "mask")
        for column, title in enumerate(titles):
            left = SHEET_MARGIN + column * (width + SHEET_GAP)
            if draw.textlength(title, font=font(TITLE_FONT)) > width:
                title = title.split(",")[0]
            draw.text((left + width / 2, top + HEADER_BAND + TITLE_BAND - 5), title, fill=FAINT,
                      font=font(TITLE_FONT), anchor="ms")
            canvas.paste(to_pil(panels[column][row]), (left, top + HEADER_BAND + TITLE_BAND))
    return to_image_tensor(canvas)


# ---------------------------------------------------------------------------------------------- loss chart


def positive_points(history: Sequence[Mapping[str, float]], name: str) -> list[tuple[float, float]]:
    """(step, value) of one series, keeping only finite values above 0 (a log scale has no room for 0)."""
    points = []
    for entry in history:
        step, value = entry.get("step"), entry.get(name)
        if step is None or value is None:
            continue
        if math.isfinite(float(value)) and float(value) > 0:
            points.append((float(step), float(value)))
    return points


def series_label(history: Sequence[Mapping[str, float]], name: str) -> str:
    """Legend text: the series name with its latest value, or '(off)' when it has no positive value."""
    points = positive_points(history, name)
    return f"{name} {points[-1][1]:.3g}" if points else f"{name} (off)"


def _nice_step(span: float, target_ticks: int = 6) -> float:
    """1, 2 or 5 x 10^k, so that about `target_ticks` ticks cover `span`."""
    raw = max(span, 1e-12) / target_ticks
    power = 10 ** math.floor(math.log10(raw))
    return next(m * power for m in (1, 2, 5, 10) if m * power >= raw)


def _log_ticks(low: int, high: int) -> list[tuple[float, bool]]:
    """(value, labelled) ticks between 10^low and 10^high: every decade labelled, 2 and 5 too when few."""
    every = max(1, math.ceil((high - low) / 8))
    ticks = [(10.0 ** k, True) for k in range(low, high + 1, every)]
    if high - low <= 2:
        ticks += [(m * 10.0 ** k, high - low == 1 and m in (2, 5)) for k in range(low, high) for m in range(2, 10)]
    return ticks


def _smooth_log(values: list[float], window: int) -> list[float]:
    """Bias-corrected running mean in log space (the raw per-step losses jump with the timestep)."""
    alpha, mean, weight, out = 2.0 / (window + 1), 0.0, 0.0, []
    for value in values:
        mean = (1 - alpha) * mean + alpha * math.log10(value)
        weight = (1 - alpha) * weight + alpha
        out.append(10 ** (mean / weight))
    return out


def _lighter(color: tuple[int, int, int], amount: float = 0.6) -> tuple[int, int, int]:
    return tuple(round(c + (255 - c) * amount) for c in color)  # type: ignore[return-value]


def _tick_text(value: float) -> str:
    return f"{value:g}" if 1e-3 <= value < 1e4 else f"{value:.0e}".replace("e-0", "e-").replace("e+0", "e")


def loss_chart(history: Sequence[Mapping[str, float]], title: str = "training losses") -> torch.Tensor:
    """The four losses (total, denoise, prior, attention) per step on a log scale, as IMAGE [1, 450, 800, 3].

    Non-positive values (prior or attention switched off) are left out and the legend says '(off)'.
    An empty history, or one without a positive value, gives a picture with a note instead.
    """
    series = {name: positive_points(history, name) for name in SERIES_COLORS}
    if not history:
        return note_picture("no training step recorded yet", title=title)
    values = [v for points in series.values() for _, v in points]
    if not values:
        return note_picture("no loss above 0 to draw on a log scale", title=title)
    canvas = Image.new("RGB", CHART_SIZE, BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    left, top, right, bottom = CHART_PLOT
    low, high = math.floor(math.log10(min(values))), math.ceil(math.log10(max(values)))
    high = max(high, low + 1)
    steps = [s for points in series.values() for s, _ in points]
    x_low, x_high = (0 if min(steps) <= 1 else min(steps)), max(steps)  # a run from its start: x from 0
    if x_high - x_low < 2:  # one step: keep its point off the frame
        x_low, x_high = max(steps) - 1, max(steps) + 1

    def x_of(step: float) -> float:
        return left + (step - x_low) / (x_high - x_low) * (right - left)

    def y_of(value: float) -> float:
        return bottom - (math.log10(value) - low) / (high - low) * (bottom - top)

    small = font(13)
    for value, labelled in _log_ticks(low, high):
        y = y_of(value)
        draw.line([(left, y), (right, y)], fill=GRID if labelled else _lighter(GRID, 0.5))
        draw.line([(left - (6 if labelled else 3), y), (left, y)], fill=INK)
        if labelled:
            draw.text((left - 9, y), _tick_text(value), fill=INK, font=small, anchor="rm")
    tick = max(1.0, _nice_step(x_high - x_low))  # steps are whole numbers
    for k in range(math.ceil(x_low / tick), math.floor(x_high / tick) + 1):
        x = x_of(k * tick)
        draw.line([(x, top), (x, bottom)], fill=GRID)
        draw.line([(x, bottom), (x, bottom + 6)], fill=INK)
        draw.text((x, bottom + 9), f"{k * tick:g}", fill=INK, font=small, anchor="mt")
    draw.rectangle([left, top, right, bottom], outline=INK)

    longest = max(len(points) for points in series.values())
    window = max(2, longest // 25)
    for name, points in series.items():
        if not points:
            continue
        color, width = SERIES_COLORS[name], 3 if name == "total" else 2
        xy = [(x_of(s), y_of(v)) for s, v in points]
        if len(points) > SMOOTH_ABOVE:
            draw.line(xy, fill=_lighter(color), width=1)
            smooth = _smooth_log([v for _, v in points], window)
            draw.line([(x, y_of(v)) for (x, _), v in zip(xy, smooth, strict=True)], fill=color, width=width,
                      joint="curve")
            continue
        if len(xy) > 1:
            draw.line(xy, fill=color, width=width, joint="curve")
        for x, y in xy:
            draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=color)

    draw.text((CHART_SIZE[0] / 2, 10), title, fill=INK, font=font(18), anchor="mt")
    x = left
    for name, color in SERIES_COLORS.items():
        draw.line([(x, 52), (x + 26, 52)], fill=color, width=4)
        label = series_label(history, name)
        draw.text((x + 32, 52), label, fill=INK if series[name] else FAINT, font=font(15), anchor="lm")
        x += 32 + draw.textlength(label, font=font(15)) + 26
    axis = font(14)
    note = f", thick line: running mean over ~{window} steps" if longest > SMOOTH_ABOVE else ""
    draw.text(((left + right) / 2, CHART_SIZE[1] - 12), f"step{note}", fill=INK, font=axis, anchor="ms")
    label = Image.new("L", (bottom - top, 22), 0)
    ImageDraw.Draw(label).text(((bottom - top) / 2, 11), "loss (log scale)", fill=255, font=axis, anchor="mm")
    rotated = label.rotate(90, expand=True)
    canvas.paste(Image.new("RGB", rotated.size, INK), (8, top), rotated)
    return to_image_tensor(canvas)
