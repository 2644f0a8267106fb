"""The shapes world without a model: scenes, masks, captions, training sets, the colour judge, weight packing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from shapes_world import judge
from shapes_world.model import pack, quantize_rows, unpack
from shapes_world.scenes import (
    ALL_COLORS,
    FLOOR_COLORS,
    NEW_COLORS,
    OBJECT_COLORS,
    object_mask,
    random_scene,
    render,
    scene_batch,
)
from shapes_world.training_sets import PAIR, pair_scene, write_pair_set


def test_scenes_follow_their_seed() -> None:
    first = scene_batch(11, 4, 48)
    again = scene_batch(11, 4, 48)
    other = scene_batch(12, 4, 48)
    assert first[0] == again[0]
    assert np.array_equal(first[1], again[1])
    assert first[0] != other[0]


def test_masks_are_exact_and_objects_never_overlap() -> None:
    scenes, images, masks = scene_batch(3, 60, 64)
    for scene, image, scene_masks in zip(scenes, images, masks, strict=True):
        assert 1 <= len(scene.objects) <= 2
        labels = judge.color_map(image)
        for obj, mask in zip(scene.objects, scene_masks, strict=True):
            assert mask.any()
            # the masked pixels show the object's colour (a white ball's shaded side reads as grey)
            share = (labels[mask] == judge.COLOR_NAMES.index(obj.color)).mean()
            assert share > (0.5 if obj.color == "white" else 0.95)
        if len(scene_masks) == 2:
            assert not (scene_masks[0] & scene_masks[1]).any()


def test_a_box_mask_is_a_square_and_a_ball_mask_a_disc() -> None:
    rng = np.random.default_rng(0)
    scene = random_scene(rng, count=1, shapes=("box",))
    box = object_mask(scene.objects[0], 100)
    rows, cols = np.nonzero(box)
    assert box.sum() == (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
    ball_scene = random_scene(rng, count=1, shapes=("ball",))
    ball = object_mask(ball_scene.objects[0], 100)
    rows, cols = np.nonzero(ball)
    fill = ball.sum() / ((rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1))
    assert fill == pytest.approx(np.pi / 4, abs=0.03)


def test_captions_name_every_object_in_order() -> None:
    rng = np.random.default_rng(5)
    for _ in range(20):
        scene = random_scene(rng)
        caption = scene.caption()
        assert caption.startswith("a photo of a ")
        positions = [caption.index(f"{o.color} {o.shape}") for o in scene.objects]
        assert positions == sorted(positions)
        assert (f"on a {scene.floor} floor" in caption) == scene.name_floor


def test_pretraining_scenes_never_use_a_new_colour() -> None:
    scenes, _, _ = scene_batch(9, 300, 16)
    used = {o.color for s in scenes for o in s.objects}
    assert used == set(OBJECT_COLORS)
    assert not used & set(NEW_COLORS)


def test_the_judge_reads_every_rendered_colour_and_floor() -> None:
    scenes, images, _ = scene_batch(21, 120, 64)
    for scene, image in zip(scenes, images, strict=True):
        assert judge.colors_present(image) == {o.color for o in scene.objects}, scene.caption()
        assert judge.floor_color(image) == scene.floor


NEW = (PAIR.new_color, PAIR.new_shape)
DISTRACTOR = (PAIR.distractor_color, PAIR.distractor_shape)


def _floor(name: str = "grey", size: int = 64) -> np.ndarray:
    return np.full((size, size, 3), FLOOR_COLORS[name], dtype=np.uint8)


def _disc(size: int, cx: float, cy: float, radius: float) -> np.ndarray:
    y, x = np.mgrid[0:size, 0:size] + 0.5
    return (x - cx * size) ** 2 + (y - cy * size) ** 2 <= (radius * size) ** 2


def test_the_judge_reads_objects_of_rendered_scenes() -> None:
    scenes, images, _ = scene_batch(21, 120, 64)
    for scene, image in zip(scenes, images, strict=True):
        assert sorted(judge.objects(image)) == sorted((o.color, o.shape) for o in scene.objects), scene.caption()
    rng = np.random.default_rng(2)
    photo, _ = render(pair_scene(rng), 64)
    verdict = judge.judge(photo, NEW, DISTRACTOR, judge.Wanted(objects=(("red", "box"),)))
    assert verdict.new_object and verdict.distractor and verdict.scene and verdict.follows_prompt is False
    empty = judge.judge(_floor("green"), NEW, DISTRACTOR, judge.Wanted(floor="green"))
    assert not empty.new_object and not empty.distractor and empty.follows_prompt is True


def test_a_two_coloured_ball_is_no_ball_of_either_colour() -> None:
    picture = _floor()
    ball = _disc(64, 0.5, 0.5, 0.2)
    left = np.zeros_like(ball)
    left[:, :32] = True
    picture[ball & left] = ALL_COLORS["red"]
    picture[ball & ~left] = ALL_COLORS["magenta"]
    assert judge.objects(picture) == []
    # a red ball with a thin magenta rim is a red ball, not the new object
    rimmed = _floor()
    rimmed[_disc(64, 0.5, 0.5, 0.2)] = ALL_COLORS["magenta"]
    rimmed[_disc(64, 0.5, 0.5, 0.17)] = ALL_COLORS["red"]
    assert judge.objects(rimmed) == [("red", "ball")]
    assert "magenta" in judge.colors_present(rimmed)  # what the colour-only rule counted as fidelity


def test_a_smear_a_streak_or_a_smudge_is_no_object() -> None:
    smear = _floor()
    y, x = np.mgrid[0:64, 0:64]
    smear[np.abs(x - y) < 5] = ALL_COLORS["magenta"]  # a diagonal band across the picture
    streak = _floor()
    streak[30:36, 4:60] = ALL_COLORS["yellow"]  # wide and flat: a box's colour, not its shape
    smudge = _floor()
    smudge[10:14, 10:14] = ALL_COLORS["yellow"]  # 0.4 % of the picture
    for picture in (smear, streak, smudge):
        verdict = judge.judge(picture, NEW, DISTRACTOR)
        assert not verdict.new_object and not verdict.distractor and verdict.scene


def test_a_collapsed_picture_shows_nothing_and_no_floor() -> None:
    rng = np.random.default_rng(0)
    palette = np.array([ALL_COLORS[c] for c in ("magenta", "red", "blue")], dtype=np.uint8)
    texture = palette[rng.integers(0, 3, size=(8, 8))].repeat(8, 0).repeat(8, 1)  # 8 px patches
    texture[16:40, 16:40] = ALL_COLORS["magenta"]  # even with a magenta block in it
    verdict = judge.judge(texture, NEW, DISTRACTOR)
    assert not verdict.scene and not verdict.new_object and not verdict.distractor
    rates = judge.rates([texture, render(pair_scene(rng), 64)[0]], NEW, DISTRACTOR)
    assert rates["collapsed"].successes == 1 and rates["fidelity"].successes == 1 and rates["fidelity"].count == 2


def test_a_drifted_floor_is_still_a_floor_and_is_read_by_its_colour() -> None:
    picture = np.full((64, 64, 3), (79, 111, 155), dtype=np.uint8)  # a fine-tune's bluer floor (saturation 0.49)
    picture[_disc(64, 0.4, 0.4, 0.18)] = ALL_COLORS["magenta"]
    verdict = judge.judge(picture, NEW, DISTRACTOR)
    assert verdict.scene and verdict.new_object and verdict.floor == "blue"
    green = np.full((64, 64, 3), (96, 150, 80), dtype=np.uint8)  # the old drift: a greener floor
    assert judge.judge(green, NEW, DISTRACTOR).floor == "green"


def test_ball_and_box_are_told_apart_when_drawn_rounded_or_tilted() -> None:
    y, x = np.mgrid[0:64, 0:64] + 0.5
    rounded = _floor()
    box = (np.abs(x - 32) <= 12) & (np.abs(y - 32) <= 12) & ~((np.abs(x - 32) > 9) & (np.abs(y - 32) > 9)
                                                               & ((np.abs(x - 32) - 9) ** 2 + (np.abs(y - 32) - 9) ** 2 > 9))
    rounded[box] = ALL_COLORS["yellow"]
    tilted = _floor()
    u, v = (x - 32 + y - 32) / np.sqrt(2), (x - 32 - (y - 32)) / np.sqrt(2)
    tilted[(np.abs(u) <= 11) & (np.abs(v) <= 11)] = ALL_COLORS["yellow"]  # a box turned by 45 degrees
    lumpy = _floor()
    lumpy[_disc(64, 0.5, 0.5, 0.18) | _disc(64, 0.58, 0.5, 0.15)] = ALL_COLORS["magenta"]
    assert judge.objects(rounded) == [DISTRACTOR]
    assert judge.objects(tilted) == [DISTRACTOR]
    assert judge.objects(lumpy) == [NEW]


def test_pair_sets_use_the_authors_layout(tmp_path: Path) -> None:
    folder = write_pair_set(tmp_path, "pair", seed=3, count=3, size=64)
    for sub in ("resized", "mask_1", "mask_2"):
        assert sorted(p.name for p in (folder / sub).iterdir()) == ["01.png", "02.png", "03.png"]
    photo = np.asarray(Image.open(folder / "resized" / "01.png"))
    ball = np.asarray(Image.open(folder / "mask_1" / "01.png")) > 127
    box = np.asarray(Image.open(folder / "mask_2" / "01.png")) > 127
    labels = judge.color_map(photo)
    assert (labels[ball] == judge.COLOR_NAMES.index(PAIR.new_color)).mean() > 0.95
    assert (labels[box] == judge.COLOR_NAMES.index(PAIR.distractor_color)).mean() > 0.95
    again = write_pair_set(tmp_path / "again", "pair", seed=3, count=3, size=64)
    assert (folder / "resized" / "02.png").read_bytes() == (again / "resized" / "02.png").read_bytes()


def test_weight_packing_round_trips_within_int8_precision() -> None:
    gen = torch.Generator().manual_seed(0)
    state = {"conv.weight": torch.randn(8, 4, 3, 3, generator=gen), "norm.bias": torch.randn(8, generator=gen)}
    values, scale = quantize_rows(state["conv.weight"])
    assert values.dtype == torch.int8 and scale.shape == (8,)
    restored = unpack("unet.", pack("unet.", state))
    row_max = state["conv.weight"].abs().flatten(1).amax(1).reshape(-1, 1, 1, 1)
    assert ((restored["conv.weight"] - state["conv.weight"]).abs() <= row_max / 127 * 0.51 + 1e-3).all()
    assert torch.allclose(restored["norm.bias"], state["norm.bias"], atol=1e-2)


def test_the_drift_measures_count_green_floors_and_prompts_that_keep_their_floor() -> None:
    """Drift, as the benchmark reads it: the share of pictures on a green floor, and whether a prompt
    without the token still gets the object and floor it names (a red ball; a blue box on a brown floor)."""
    def scene(floor: str, color: str, shape: str) -> np.ndarray:
        picture = _floor(floor)
        obj = random_scene(np.random.default_rng(1), colors={color: ALL_COLORS[color]}, count=1, shapes=(shape,))
        return render(type(obj)(floor=floor, objects=obj.objects), 64)[0]

    pictures = [scene("green", "red", "ball"), scene("grey", "red", "ball"), scene("blue", "red", "box"),
                scene("brown", "blue", "box")]
    red_ball = judge.rates(pictures, NEW, DISTRACTOR, judge.Wanted(objects=(("red", "ball"),)))
    assert (red_ball["green floor"].successes, red_ball["follows"].successes) == (1, 2)
    on_brown = judge.rates(pictures, NEW, DISTRACTOR, judge.Wanted(objects=(("blue", "box"),), floor="brown"))
    assert on_brown["follows"].successes == 1 and on_brown["follows"].count == 4
    assert on_brown["leakage"].successes == 0 and on_brown["collapsed"].successes == 0
