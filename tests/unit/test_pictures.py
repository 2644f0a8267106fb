"""The attention sheet and the loss chart: layout, labels really drawn, log scale, legend, empty input."""

from __future__ import annotations

import math

import pytest
import torch

from textloc.evaluation import pictures
from textloc.evaluation.pictures import (
    CHART_PLOT,
    CHART_SIZE,
    HEADER_BAND,
    SERIES_COLORS,
    SHEET_GAP,
    SHEET_MARGIN,
    TITLE_BAND,
    attention_sheet,
    loss_chart,
    series_label,
)

PHOTO = 64


def _photo() -> torch.Tensor:
    """A mid-grey photo with a gradient, so resizing is visible; [1, 64, 64, 3]."""
    ramp = torch.linspace(0.2, 0.8, PHOTO)
    return torch.stack([ramp[None].expand(PHOTO, -1), ramp[:, None].expand(-1, PHOTO),
                        torch.full((PHOTO, PHOTO), 0.5)], -1)[None]


def _masks(count: int) -> torch.Tensor:
    masks = torch.zeros(count, PHOTO, PHOTO)
    for index in range(count):
        masks[index, 8 + 24 * index: 32 + 24 * index, 10:40] = 1.0
    return masks


def _sheet(tokens=("tl_ball", "tl_box"), step: int = 40, panel: int = 256, photo=None) -> torch.Tensor:
    count = len(tokens)
    maps = torch.nn.functional.interpolate(_masks(count)[:, None], size=(16, 16), mode="area")[:, 0]
    return attention_sheet(_photo() if photo is None else photo, maps, _masks(count), list(tokens), step,
                           panel=panel, class_words=["ball", "box", "doll"][:count])


def _row_top(row: int, panel: int = 256) -> int:
    return SHEET_MARGIN + row * (HEADER_BAND + TITLE_BAND + panel + SHEET_MARGIN)


def _panel(sheet: torch.Tensor, row: int, column: int, panel: int = 256) -> torch.Tensor:
    top = _row_top(row, panel) + HEADER_BAND + TITLE_BAND
    left = SHEET_MARGIN + column * (panel + SHEET_GAP)
    return sheet[0, top:top + panel, left:left + panel]


# ---------------------------------------------------------------------------------------------- attention sheet


@pytest.mark.parametrize("count", [1, 2, 3])
def test_sheet_has_one_row_per_concept_with_three_256px_panels(count: int) -> None:
    sheet = _sheet(("tl_ball", "tl_box", "tl_doll")[:count])
    row = HEADER_BAND + TITLE_BAND + 256 + SHEET_MARGIN
    assert sheet.shape == (1, SHEET_MARGIN + count * row, 2 * SHEET_MARGIN + 3 * 256 + 2 * SHEET_GAP, 3)
    assert sheet.dtype == torch.float32 and 0 <= sheet.min() and sheet.max() <= 1
    upscaled = torch.nn.functional.interpolate(_photo().permute(0, 3, 1, 2), size=(256, 256), mode="bilinear",
                                               align_corners=False, antialias=True).permute(0, 2, 3, 1)[0]
    for index in range(count):
        assert (_panel(sheet, index, 0) - upscaled).abs().max() <= 1 / 255 + 1e-6  # the photo, where expected


def test_attention_panel_is_hot_on_the_map_and_mask_panel_marks_only_the_mask() -> None:
    sheet = _sheet()
    photo = _panel(sheet, 0, 0)
    heat, marked = _panel(sheet, 0, 1), _panel(sheet, 0, 2)
    inside, outside = (20 * 4, 25 * 4), (56 * 4, 56 * 4)  # concept 1's mask covers rows 8..31, cols 10..39
    assert heat[inside].mean() > heat[outside].mean() + 0.3
    assert (marked[inside] - photo[inside]).abs().sum() > 0.3
    assert torch.equal(marked[outside], photo[outside])


def test_header_text_is_really_drawn_and_names_token_and_step() -> None:
    sheet = _sheet()
    for row in range(2):
        band = sheet[0, _row_top(row):_row_top(row) + HEADER_BAND]
        assert band.min() < 0.3, "no dark text pixel in the row header"
    titles = sheet[0, _row_top(0) + HEADER_BAND:_row_top(0) + HEADER_BAND + TITLE_BAND]
    assert titles.min() < 0.7, "no panel title drawn"
    renamed, later = _sheet(("tl_cat", "tl_box")), _sheet(step=4000)
    header = slice(_row_top(0), _row_top(0) + HEADER_BAND)
    assert not torch.equal(sheet[0, header], renamed[0, header])  # the token is written there
    assert not torch.equal(sheet[0, header], later[0, header])  # and the step
    assert torch.equal(_panel(sheet, 0, 1), _panel(renamed, 0, 1))  # the pictures themselves do not move


def test_wide_photo_keeps_its_aspect_and_a_small_panel_is_allowed() -> None:
    wide = _photo().repeat(1, 1, 2, 1)  # 64 x 128
    sheet = _sheet(photo=wide)
    assert sheet.shape[2] == 2 * SHEET_MARGIN + 3 * 512 + 2 * SHEET_GAP
    live = _sheet(panel=156)
    assert live.shape[2] <= 512


def test_sheet_refuses_counts_that_do_not_match() -> None:
    with pytest.raises(ValueError, match="do not match"):
        attention_sheet(_photo(), torch.zeros(2, 8, 8), _masks(1), ["tl_ball", "tl_box"], 1)
    with pytest.raises(ValueError, match="class words"):
        attention_sheet(_photo(), torch.zeros(1, 8, 8), _masks(1), ["tl_ball"], 1, class_words=["a", "b"])


# ---------------------------------------------------------------------------------------------- loss chart


def _history(steps: int, **values: float) -> list[dict[str, float]]:
    base = {"total": 0.5, "denoise": 0.002, "prior": 0.02, "attention": 0.2} | values
    return [{"step": step, **base} for step in range(1, steps + 1)]


def _rows_of(chart: torch.Tensor, colour: tuple[int, int, int], columns: slice, rows: slice) -> torch.Tensor:
    """Row indices (in the whole chart) where `colour` is drawn inside the given window."""
    window = (chart[0, rows, columns] * 255).round()
    hits = (window == torch.tensor(colour, dtype=window.dtype)).all(-1).any(-1)
    return torch.nonzero(hits).flatten() + (rows.start or 0)


def test_chart_size_and_log_scale_spaces_tenfold_values_evenly() -> None:
    chart = loss_chart(_history(5))
    assert chart.shape == (1, CHART_SIZE[1], CHART_SIZE[0], 3)
    assert CHART_SIZE[0] >= 640 and CHART_SIZE[1] >= 360
    left, top, right, bottom = CHART_PLOT
    middle = slice((left + right) // 2 - 2, (left + right) // 2 + 3)
    plot_rows = slice(top + 2, bottom - 1)
    y = {name: float(_rows_of(chart, SERIES_COLORS[name], middle, plot_rows).float().mean())
         for name in ("denoise", "prior", "attention")}
    assert all(not math.isnan(v) for v in y.values()), y
    # 0.002 -> 0.02 -> 0.2: each step ten times larger sits the same distance higher
    first, second = y["denoise"] - y["prior"], y["prior"] - y["attention"]
    assert first > 40 and abs(first - second) <= 1.5, y


def test_legend_shows_every_series_and_marks_a_switched_off_one() -> None:
    history = _history(20, prior=0.0)
    assert series_label(history, "prior") == "prior (off)"
    assert series_label(history, "attention") == "attention 0.2"
    chart = loss_chart(history)
    left, top, right, bottom = CHART_PLOT
    legend_rows, plot_rows = slice(30, top - 4), slice(top + 2, bottom - 1)
    everywhere = slice(0, CHART_SIZE[0])
    for name, colour in SERIES_COLORS.items():
        assert len(_rows_of(chart, colour, everywhere, legend_rows)), f"no legend swatch for {name}"
    assert not len(_rows_of(chart, SERIES_COLORS["prior"], slice(left + 1, right), plot_rows))  # 0 is not drawn
    assert len(_rows_of(chart, SERIES_COLORS["denoise"], slice(left + 1, right), plot_rows))


def test_one_step_and_non_finite_values_still_draw() -> None:
    one = loss_chart(_history(1))
    left, top, right, bottom = CHART_PLOT
    assert len(_rows_of(one, SERIES_COLORS["attention"], slice(left, right + 1), slice(top, bottom + 1)))
    broken = _history(6)
    broken[2]["total"], broken[3]["denoise"] = float("nan"), float("inf")
    assert loss_chart(broken).shape == one.shape


def test_long_history_draws_a_running_mean_over_the_raw_line() -> None:
    history = _history(300)
    for entry in history:
        entry["denoise"] = 0.01 * (3.0 if entry["step"] % 2 else 1 / 3)  # jumps every step
    chart = loss_chart(history)
    left, top, right, bottom = CHART_PLOT
    middle, plot_rows = slice((left + right) // 2 - 6, (left + right) // 2 + 6), slice(top + 2, bottom - 1)
    raw = _rows_of(chart, pictures._lighter(SERIES_COLORS["denoise"]), middle, plot_rows)
    mean = _rows_of(chart, SERIES_COLORS["denoise"], middle, plot_rows)
    assert len(raw) and len(mean)
    assert raw.min() < mean.min() and raw.max() > mean.max()  # the mean lies inside the raw swing
    assert pictures._smooth_log([0.1] * 10, 4) == pytest.approx([0.1] * 10)


@pytest.mark.parametrize("history", [[], [{"step": 1, "total": 0.0, "denoise": 0.0, "prior": 0.0, "attention": 0.0}]])
def test_nothing_to_plot_gives_a_picture_with_a_note(history) -> None:
    chart = loss_chart(history, "tl_ball: training losses")
    assert chart.shape == (1, CHART_SIZE[1], CHART_SIZE[0], 3)
    middle = chart[0, CHART_SIZE[1] // 2 - 12:CHART_SIZE[1] // 2 + 12]
    assert middle.min() < 0.7, "the note is not drawn"
    for colour in list(SERIES_COLORS.values())[1:]:
        assert not len(_rows_of(chart, colour, slice(0, CHART_SIZE[0]), slice(0, CHART_SIZE[1])))
