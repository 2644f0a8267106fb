"""Loading multi-concept sets: both layouts, alignment of photos and masks, and every user error."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from tl_assertions import expect_user_error as _user_error

from headless.sample_data import write_toy_pair
from textloc.data.dataset import (
    Concept,
    MultiConceptDataset,
    build_concept,
    fit_external_mask,
    folder_fingerprint,
    load_dataset,
    validate_class_word,
    validate_init_word,
    validate_token_name,
)
from textloc.data.images import read_mask

REPO_ROOT = Path(__file__).resolve().parents[2]
SIZE = (96, 64)  # W, H of the test photos
RES = 64


def _mask_rect(index: int) -> tuple[int, int, int, int]:
    """A different box per mask index, inside a 96x64 photo."""
    return (8 + 24 * (index - 1), 10, 28 + 24 * (index - 1), 40)


def _photo(size: tuple[int, int] = SIZE, rects: tuple[tuple[int, int, int, int], ...] = ()) -> Image.Image:
    image = Image.new("RGB", size, (40, 40, 40))
    for rect in rects:
        ImageDraw.Draw(image).rectangle(rect, fill=(0, 255, 0))
    return image


def _mask(size: tuple[int, int] = SIZE, rect: tuple[int, int, int, int] | None = None) -> Image.Image:
    mask = Image.new("L", size, 0)
    if rect is not None:
        ImageDraw.Draw(mask).rectangle(rect, fill=255)
    return mask


def _authors_set(
    root: Path,
    name: str = "set_a",
    stems: tuple[str, ...] = ("b", "a", "c"),
    masks: int = 2,
    images: str = "resized",
) -> Path:
    folder = root / name
    (folder / images).mkdir(parents=True)
    for stem in stems:
        _photo().save(folder / images / f"{stem}.png")
        for index in range(1, masks + 1):
            (folder / f"mask_{index}").mkdir(exist_ok=True)
            _mask(rect=_mask_rect(index)).save(folder / f"mask_{index}" / f"{stem}.png")
    return folder


def _flat_set(root: Path, name: str = "flat", stems: tuple[str, ...] = ("y", "x"), masks: int = 2) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    for stem in stems:
        _photo().save(folder / f"{stem}.png")
        for index in range(1, masks + 1):
            _mask(rect=_mask_rect(index)).save(folder / f"{stem}_mask_{index}.png")
    return folder


# --- layouts ---------------------------------------------------------------------------------


def test_authors_layout_loads_sorted_with_shapes(tmp_path: Path) -> None:
    folder = _authors_set(tmp_path)
    (folder / "resized" / "a.png").rename(folder / "resized" / "a.jpg")  # extensions may differ
    _photo().save(folder / "resized" / "a.jpg", format="JPEG")
    (folder / "mask_2" / "c.png").rename(folder / "mask_2" / "c.bmp")
    _mask(rect=_mask_rect(2)).save(folder / "mask_2" / "c.bmp", format="BMP")
    (folder / "resized" / "notes.txt").write_text("ignored")

    dataset = load_dataset(tmp_path, "set_a", resolution=RES)

    assert dataset.name == "set_a" and dataset.resolution == RES
    assert dataset.image_names == ("a.jpg", "b.png", "c.png")
    assert dataset.num_images == 3 and dataset.num_folder_masks == 2
    assert dataset.images.shape == (3, RES, RES, 3) and dataset.images.dtype == torch.float32
    assert dataset.folder_masks.shape == (2, 3, RES, RES)
    assert set(dataset.folder_masks.unique().tolist()) == {0.0, 1.0}
    assert dataset.original_sizes == ((64, 96),) * 3
    assert dataset.concepts == ()
    # 96x64 photos keep their scale; the centre crop drops 16 columns on the left, so the
    # boxes at x 8..28 (mask_1) and 32..52 (mask_2) land at 0..12 and 16..36, rows 10..40
    for index, (left, right) in enumerate(((0, 12), (16, 36))):
        rows, cols = dataset.folder_masks[index, 0].nonzero().unbind(1)
        assert (cols.min().item(), cols.max().item()) == (left, right)
        assert (rows.min().item(), rows.max().item()) == (10, 40)


def test_folder_masks_batch_is_mask_index_major(tmp_path: Path) -> None:
    _authors_set(tmp_path)
    dataset = load_dataset(tmp_path, "set_a", resolution=RES)
    batch = dataset.folder_masks_batch()
    assert batch.shape == (6, RES, RES)
    assert torch.equal(batch[1], dataset.folder_masks[0, 1])
    assert torch.equal(batch[3], dataset.folder_masks[1, 0])


def test_flat_layout_loads(tmp_path: Path) -> None:
    _flat_set(tmp_path)
    dataset = load_dataset(tmp_path, "flat", resolution=RES)
    assert dataset.image_names == ("x.png", "y.png")
    assert dataset.folder_masks.shape == (2, 2, RES, RES)
    assert dataset.folder_masks[1].sum() > 0


def test_single_mask_aliases(tmp_path: Path) -> None:
    authors = _authors_set(tmp_path, masks=1)
    (authors / "mask_1").rename(authors / "mask")
    assert load_dataset(tmp_path, "set_a", resolution=RES).num_folder_masks == 1
    flat = _flat_set(tmp_path, masks=1)
    (flat / "x_mask_1.png").rename(flat / "x_mask.png")
    (flat / "y_mask_1.png").rename(flat / "y_MASK.png")
    assert load_dataset(tmp_path, "flat", resolution=RES).num_folder_masks == 1


def test_images_folder_and_nested_set_name(tmp_path: Path) -> None:
    _authors_set(tmp_path / "sets", name="pair", images="images", masks=1)
    dataset = load_dataset(tmp_path, "sets/pair", resolution=RES)
    assert dataset.num_images == 3 and dataset.name == "sets/pair"


def test_folder_without_masks(tmp_path: Path) -> None:
    _flat_set(tmp_path, masks=0)
    dataset = load_dataset(tmp_path, "flat", resolution=RES)
    assert dataset.folder_masks.shape == (0, 2, RES, RES)
    assert torch.equal(dataset.folder_masks_batch(), torch.zeros(2, RES, RES))
    _user_error(lambda: dataset.folder_mask(1), "mask_index", "has no masks")


# --- geometry ------------------------------------------------------------------------------------


@pytest.mark.parametrize("transpose", [False, True], ids=["wide", "tall"])
def test_photo_and_mask_stay_aligned_after_resize_and_crop(tmp_path: Path, transpose: bool) -> None:
    size, rect = (160, 96), (70, 30, 99, 59)  # box covers x 70..99, y 30..59 (inclusive)
    if transpose:
        size, rect = (96, 160), (30, 70, 59, 99)
    folder = tmp_path / "odd"
    (folder / "resized").mkdir(parents=True)
    (folder / "mask_1").mkdir()
    _photo(size, (rect,)).save(folder / "resized" / "p.png")
    _mask(size, rect).save(folder / "mask_1" / "p.png")

    dataset = load_dataset(tmp_path, "odd", resolution=RES)

    mask = dataset.folder_masks[0, 0]
    image = dataset.images[0]
    green = (image[..., 1] > 0.5) & (image[..., 0] < 0.5)
    overlap = (green & (mask > 0)).sum() / (green | (mask > 0)).sum()
    assert overlap.item() > 0.9
    # shorter side 96 -> 64 (x 2/3), longer 160 -> 106, centre crop drops 21 px at the start
    rows, cols = mask.nonzero().float().unbind(1)
    along, across = (cols, rows) if not transpose else (rows, cols)
    assert (along.mean() + 0.5).item() == pytest.approx(85 * 106 / 160 - 21, abs=1.0)
    assert (across.mean() + 0.5).item() == pytest.approx(45 * 2 / 3, abs=1.0)
    assert dataset.original_sizes == ((size[1], size[0]),)


# --- user errors ------------------------------------------------------------------------------------


def test_missing_and_empty_folder(tmp_path: Path) -> None:
    _user_error(lambda: load_dataset(tmp_path, "nope"), "nope", "does not exist")
    (tmp_path / "empty_set").mkdir()
    message = _user_error(lambda: load_dataset(tmp_path, "empty_set"), "empty_set", "has no photos")
    assert "resized" in message and "mask_1" in message and "_mask_1" in message
    (tmp_path / "only_resized" / "resized").mkdir(parents=True)
    _user_error(lambda: load_dataset(tmp_path, "only_resized"), "resized", "has no photos")
    _user_error(lambda: load_dataset(tmp_path, "  "), "folder")


def test_image_without_its_mask(tmp_path: Path) -> None:
    folder = _authors_set(tmp_path)
    (folder / "mask_2" / "b.png").unlink()
    message = _user_error(lambda: load_dataset(tmp_path, "set_a", RES), "b.png", "has no mask in mask_2/")
    assert str(folder / "mask_2" / "b.png") in message


def test_mask_without_its_image(tmp_path: Path) -> None:
    folder = _authors_set(tmp_path)
    _mask(rect=_mask_rect(1)).save(folder / "mask_1" / "zz.png")
    _user_error(
        lambda: load_dataset(tmp_path, "set_a", RES), str(folder / "mask_1" / "zz.png"), "without a photo"
    )


def test_flat_layout_missing_pieces(tmp_path: Path) -> None:
    folder = _flat_set(tmp_path)
    (folder / "x_mask_2.png").unlink()
    _user_error(lambda: load_dataset(tmp_path, "flat", RES), "x.png", "x_mask_2.png", "has no mask 2")
    _mask(rect=_mask_rect(2)).save(folder / "x_mask_2.png")
    _mask(rect=_mask_rect(1)).save(folder / "ghost_mask_1.png")
    _user_error(lambda: load_dataset(tmp_path, "flat", RES), "ghost_mask_1.png", "without a photo")
    (folder / "ghost_mask_1.png").unlink()
    for stem in ("x", "y"):
        (folder / f"{stem}.png").unlink()
    _user_error(lambda: load_dataset(tmp_path, "flat", RES), "flat", "has masks but no photos")


def test_mask_size_mismatch(tmp_path: Path) -> None:
    folder = _authors_set(tmp_path)
    _mask((80, 64), (5, 5, 20, 20)).save(folder / "mask_1" / "c.png")
    _user_error(lambda: load_dataset(tmp_path, "set_a", RES), "mask_1/c.png", "80x64", "96x64")
    _mask((64, 96), (5, 5, 20, 20)).save(folder / "mask_1" / "c.png")
    _user_error(lambda: load_dataset(tmp_path, "set_a", RES), "swapped")


@pytest.mark.parametrize(("fill", "words"), [(0, "all black"), (255, "all white")])
def test_blank_mask(tmp_path: Path, fill: int, words: str) -> None:
    folder = _authors_set(tmp_path)
    Image.new("L", SIZE, fill).save(folder / "mask_2" / "a.png")
    _user_error(lambda: load_dataset(tmp_path, "set_a", RES), "mask_2/a.png", words, "another mask index")


def test_mask_vanishing_under_threshold_is_caught(tmp_path: Path) -> None:
    folder = _authors_set(tmp_path)
    _mask(rect=(10, 10, 40, 40)).point(lambda v: v // 4).save(folder / "mask_1" / "a.png")  # gray 63
    _user_error(lambda: load_dataset(tmp_path, "set_a", RES), "mask_1/a.png", "all black")
    assert load_dataset(tmp_path, "set_a", RES, mask_threshold=0.2).num_folder_masks == 2


def test_unreadable_photo_names_the_file(tmp_path: Path) -> None:
    folder = _authors_set(tmp_path)
    data = (folder / "resized" / "c.png").read_bytes()
    (folder / "resized" / "c.png").write_bytes(data[: len(data) // 3])
    _user_error(lambda: load_dataset(tmp_path, "set_a", RES), "resized/c.png", "truncated or not an image")


def test_ambiguous_layouts(tmp_path: Path) -> None:
    folder = _authors_set(tmp_path)
    _photo().save(folder / "resized" / "a.jpg", format="JPEG")
    _user_error(lambda: load_dataset(tmp_path, "set_a", RES), "a.jpg", "a.png", "share the name")
    (folder / "resized" / "a.jpg").unlink()
    (folder / "mask_2").rename(folder / "mask_3")
    _user_error(lambda: load_dataset(tmp_path, "set_a", RES), "no mask_2/")
    (folder / "mask_3").rename(folder / "mask_2")
    (folder / "images").mkdir()
    _user_error(lambda: load_dataset(tmp_path, "set_a", RES), "images/ folder")


def test_bad_resolution_and_threshold(tmp_path: Path) -> None:
    _authors_set(tmp_path)
    for resolution in (100, 32, 0):
        _user_error(lambda r=resolution: load_dataset(tmp_path, "set_a", r), "resolution", "multiple of 8")
    for threshold in (0.0, 1.0, -2.0):
        _user_error(lambda t=threshold: load_dataset(tmp_path, "set_a", RES, t), "mask_threshold")


# --- path escapes ------------------------------------------------------------------------------------


@pytest.fixture
def input_and_outside(tmp_path: Path) -> tuple[Path, Path]:
    """An input root and a valid set outside it."""
    root = tmp_path / "input"
    root.mkdir()
    outside = _authors_set(tmp_path / "elsewhere", name="secret")
    return root, outside


def test_parent_path_is_refused(input_and_outside: tuple[Path, Path]) -> None:
    root, _ = input_and_outside
    _user_error(
        lambda: load_dataset(root, "../elsewhere/secret", RES),
        "../elsewhere/secret",
        "inside ComfyUI's input/",
    )
    _user_error(lambda: load_dataset(root, "..", RES), "inside ComfyUI's input/")


def test_absolute_path_is_refused(input_and_outside: tuple[Path, Path]) -> None:
    root, outside = input_and_outside
    _user_error(lambda: load_dataset(root, str(outside), RES), "absolute path", "inside ComfyUI's input/")


def test_symlinked_folder_is_refused(input_and_outside: tuple[Path, Path]) -> None:
    root, outside = input_and_outside
    os.symlink(outside, root / "link")
    _user_error(lambda: load_dataset(root, "link", RES), "link", "inside ComfyUI's input/")


def test_symlinked_file_is_refused(input_and_outside: tuple[Path, Path]) -> None:
    root, outside = input_and_outside
    folder = _authors_set(root, masks=1)
    (folder / "resized" / "a.png").unlink()
    os.symlink(outside / "resized" / "a.png", folder / "resized" / "a.png")
    _user_error(lambda: load_dataset(root, "set_a", RES), "resized/a.png", "inside ComfyUI's input/")


def test_symlink_inside_the_root_is_fine(input_and_outside: tuple[Path, Path]) -> None:
    root, _ = input_and_outside
    _authors_set(root)
    os.symlink(root / "set_a", root / "alias")
    assert load_dataset(root, "alias", RES).num_images == 3


# --- names --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["tl_doll", "A", "x1_2", "a" * 64, " tl_cat "])
def test_valid_token_names(name: str) -> None:
    assert validate_token_name(name) == name.strip()


@pytest.mark.parametrize(
    "name", ["", "1doll", "_doll", "tl doll", "tl-doll", "embedding:tl", "<new1>", "a" * 65, "été"]
)
def test_invalid_token_names(name: str) -> None:
    message = _user_error(lambda: validate_token_name(name, "token"), "token", "tl_doll")
    assert repr(name) in message


def test_class_and_init_words() -> None:
    assert validate_class_word(" robot toy ") == "robot toy"
    assert validate_class_word("t-rex") == "t-rex"
    for bad in ("", "   ", "doll!", "a/b", "--"):
        _user_error(lambda w=bad: validate_class_word(w), "class_word")
    assert validate_init_word("sks") == "sks"
    _user_error(lambda: validate_init_word("two words"), "init_word", "sks")


# --- concepts ------------------------------------------------------------------------------------------


@pytest.fixture
def dataset(tmp_path: Path) -> MultiConceptDataset:
    _authors_set(tmp_path)
    return load_dataset(tmp_path, "set_a", resolution=RES)


def test_with_concept_returns_a_new_dataset(dataset: MultiConceptDataset) -> None:
    concept = build_concept(dataset, token="tl_box", class_word="box", mask_index=2)
    extended = dataset.with_concept(concept)
    assert dataset.concepts == ()
    assert extended is not dataset and extended.concepts == (concept,)
    assert concept.source == "mask_2" and concept.init_word == "sks"
    assert torch.equal(concept.masks, dataset.folder_masks[1])
    second = build_concept(extended, token="tl_ball", class_word="red ball", mask_index=1)
    both = extended.with_concept(second)
    assert [c.token for c in both.concepts] == ["tl_box", "tl_ball"]
    assert len(extended.concepts) == 1
    _user_error(lambda: both.with_concept(second), "tl_ball", "already used")
    with pytest.raises(dataclasses.FrozenInstanceError):
        both.concepts = ()  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        concept.token = "x"  # type: ignore[misc]


def test_mask_target_refuses_a_token_that_clashes_with_a_class_word(dataset: MultiConceptDataset) -> None:
    """The trainer would put the token's vector on every 'ball' of 'photo of a ball ball'."""
    _user_error(lambda: build_concept(dataset, token="ball", class_word="ball"),
                "token", "'ball' equals 'ball' in its class word 'ball'", "'photo of a ball ball'", "tl_ball")
    _user_error(lambda: build_concept(dataset, token="Ball", class_word="red ball"), "'Ball' equals 'ball'")
    box = dataset.with_concept(build_concept(dataset, token="tl_box", class_word="box", mask_index=2))
    _user_error(lambda: box.with_concept(build_concept(box, token="box", class_word="ball")),
                "'box' equals 'box' in the class word 'box' of the concept 'tl_box'", "tl_box_2")
    ball = dataset.with_concept(build_concept(dataset, token="tl_ball", class_word="ball"))
    _user_error(lambda: ball.with_concept(build_concept(ball, token="ball", class_word="toy")),
                "'ball' equals 'ball' in the class word 'ball' of the concept 'tl_ball'")
    _user_error(lambda: ball.with_concept(build_concept(ball, token="TL_Ball", class_word="box", mask_index=2)),
                "'TL_Ball' is already used")
    both = ball.with_concept(build_concept(ball, token="tl_doll", class_word="doll", mask_index=2))
    assert [c.token for c in both.concepts] == ["tl_ball", "tl_doll"]


def test_concept_validates_its_names() -> None:
    _user_error(
        lambda: Concept(token="bad name", class_word="doll", masks=torch.zeros(1, 8, 8), source="x"), "token"
    )


def test_build_concept_mask_index_and_cleanup(dataset: MultiConceptDataset) -> None:
    _user_error(
        lambda: build_concept(dataset, token="tl_a", class_word="a", mask_index=3), "mask_index", "2 mask(s)"
    )
    base = dataset.folder_masks[0].sum()
    grown = build_concept(dataset, token="tl_a", class_word="a", mask_index=1, grow_pixels=3)
    shrunk = build_concept(dataset, token="tl_a", class_word="a", mask_index=1, grow_pixels=-3)
    soft = build_concept(dataset, token="tl_a", class_word="a", mask_index=1, feather_pixels=4)
    assert grown.masks.sum() > base > shrunk.masks.sum()
    assert (soft.masks > 0.01).sum() > (dataset.folder_masks[0] > 0).sum()
    _user_error(
        lambda: build_concept(dataset, token="tl_a", class_word="a", mask_index=1, grow_pixels=-40),
        "mask_1 after grow -40",
        "all black",
        "grow closer to 0",
    )


def test_build_concept_with_external_mask(dataset: MultiConceptDataset) -> None:
    mask = torch.zeros(3, RES, RES)
    mask[:, 5:20, 5:30] = 1.0
    concept = build_concept(dataset, token="tl_x", class_word="x", mask=mask, mask_index=7)
    assert concept.source == "MASK input"
    assert torch.equal(concept.masks, mask)
    _user_error(
        lambda: build_concept(dataset, token="tl_x", class_word="x", mask=torch.zeros(3, RES, RES)),
        "MASK input",
    )
    _user_error(lambda: build_concept("not a dataset", token="tl_x", class_word="x"), "dataset")  # type: ignore[arg-type]


# --- external masks ------------------------------------------------------------------------------------


def test_fit_external_mask_count_mismatch(dataset: MultiConceptDataset) -> None:
    message = _user_error(
        lambda: fit_external_mask(torch.ones(2, RES, RES), dataset), "2 mask(s)", "3 images"
    )
    assert "same order as the dataset's IMAGE output" in message


def test_several_masks_per_image_are_picked_by_mask_index(dataset: MultiConceptDataset) -> None:
    """A K*N batch (mask 1 of every image, then mask 2 ...) chains like the folder masks."""
    batch = dataset.folder_masks_batch()
    assert batch.shape == (6, RES, RES)
    assert torch.equal(fit_external_mask(batch, dataset, 2), dataset.folder_masks[1])
    concept = build_concept(dataset, token="tl_x", class_word="x", mask=batch, mask_index=2)
    assert torch.equal(concept.masks, dataset.folder_masks[1]) and "mask 2" in concept.source
    _user_error(lambda: fit_external_mask(batch, dataset, 3), "mask_index", "2 masks per image", "1 to 2")


def test_fit_external_mask_at_dataset_size_is_kept(dataset: MultiConceptDataset) -> None:
    soft = torch.rand(3, RES, RES, generator=torch.Generator().manual_seed(0))
    assert torch.equal(fit_external_mask(soft, dataset), soft)
    as_bytes = fit_external_mask((soft * 255).to(torch.uint8), dataset)
    assert as_bytes.dtype == torch.float32 and as_bytes.max() <= 1.0
    assert torch.allclose(as_bytes, soft, atol=1 / 255 + 1e-6)
    assert torch.equal(fit_external_mask(soft > 0.5, dataset), (soft > 0.5).float())


def test_fit_external_mask_at_photo_size_matches_folder_masks(
    tmp_path: Path, dataset: MultiConceptDataset
) -> None:
    originals = torch.stack(
        [read_mask(tmp_path / "set_a" / "mask_1" / f"{stem}.png") for stem in ("a", "b", "c")]
    )
    assert originals.shape == (3, 64, 96)
    fitted = fit_external_mask(originals, dataset)
    assert fitted.shape == (3, RES, RES)
    differing = ((fitted > 0.5).float() != dataset.folder_masks[0]).sum().item()
    assert differing == 0


def test_fit_external_mask_wrong_size(dataset: MultiConceptDataset) -> None:
    _user_error(lambda: fit_external_mask(torch.ones(3, 50, 70), dataset), "70x50", "64x64", "96x64")
    _user_error(lambda: fit_external_mask(torch.ones(3, 2, 50, 70), dataset), "mask", "[B,H,W]")


def test_fit_external_mask_single_2d(tmp_path: Path) -> None:
    _flat_set(tmp_path, stems=("only",), masks=1)
    single = load_dataset(tmp_path, "flat", resolution=RES)
    fitted = fit_external_mask(torch.ones(RES, RES), single)
    assert fitted.shape == (1, RES, RES)


# --- the committed sample set ----------------------------------------------------------------------


def test_committed_sample_set_loads() -> None:
    dataset = load_dataset(REPO_ROOT / "sample_data", "toy_pair")
    assert dataset.num_images == 5 and dataset.num_folder_masks == 2
    assert dataset.image_names == tuple(f"{n:02d}.png" for n in range(1, 6))
    assert dataset.images.shape == (5, 512, 512, 3)
    ball, box = dataset.folder_masks
    for index in range(5):
        assert 0.01 < ball[index].mean() < 0.5 and 0.01 < box[index].mean() < 0.5
        overlap = (ball[index] * box[index]).sum() / torch.maximum(ball[index], box[index]).sum()
        assert overlap < 0.01
    red = dataset.images[..., 0] - dataset.images[..., 2]
    assert (red * ball).sum() / ball.sum() > 0.5  # mask_1 is the red ball
    assert (red * box).sum() / box.sum() < -0.3  # mask_2 is the blue box


def test_sample_generator_matches_committed_files(tmp_path: Path) -> None:
    fresh = write_toy_pair(tmp_path)
    committed = REPO_ROOT / "sample_data" / "toy_pair"
    files = sorted(p.relative_to(committed) for p in committed.rglob("*.png"))
    assert len(files) == 15
    for relative in files:
        new, old = Image.open(fresh / relative), Image.open(committed / relative)
        assert new.mode == old.mode and np.array_equal(np.asarray(new), np.asarray(old)), relative
    assert Image.open(committed / "resized" / "01.png").mode == "RGBA"
    assert np.asarray(Image.open(committed / "resized" / "01.png"))[..., 3].min() == 255
    assert max((committed / relative).stat().st_size for relative in files) < 30_000


# --- cache fingerprint --------------------------------------------------------------------------


def test_folder_fingerprint_changes_when_a_photo_or_mask_is_edited(tmp_path: Path) -> None:
    folder = _authors_set(tmp_path)
    first = folder_fingerprint(tmp_path, "set_a")
    assert folder_fingerprint(tmp_path, "set_a") == first  # nothing changed: ComfyUI may keep its cache
    _mask(rect=(0, 0, 10, 10)).save(folder / "mask_1" / "b.png")
    os.utime(folder / "mask_1" / "b.png", ns=(1, 1))  # even with an old timestamp the size differs
    second = folder_fingerprint(tmp_path, "set_a")
    assert second != first
    (folder / "resized" / "d.png").write_bytes((folder / "resized" / "a.png").read_bytes())
    assert folder_fingerprint(tmp_path, "set_a") != second
    assert folder_fingerprint(tmp_path, "../outside") == "../outside"  # the node's own error follows
