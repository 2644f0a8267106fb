"""Where set folders live: input/ sub-folders by plain name, the pack's sample sets as `[sample] NAME`."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch
from tl_assertions import expect_user_error as _user_error

from headless.sample_data import write_toy_pair
from textloc.data.dataset import folder_fingerprint, load_class_images, load_dataset
from textloc.data.set_folders import (
    SAMPLE_SETS_DIR,
    folder_choices,
    resolve_set_folder,
    sample_entry,
    sample_set_names,
)

RES = 64


@pytest.fixture
def roots(tmp_path: Path) -> tuple[Path, Path]:
    """An empty input/ root and a samples root holding toy_pair (plus a file and a hidden folder)."""
    input_root, samples = tmp_path / "input", tmp_path / "pack" / "sample_data"
    input_root.mkdir(parents=True)
    write_toy_pair(samples)
    (samples / "README.md").write_text("not a set")
    (samples / ".hidden").mkdir()
    return input_root, samples


def test_the_pack_ships_its_example_sets() -> None:
    assert SAMPLE_SETS_DIR == Path(__file__).resolve().parents[2] / "sample_data"
    assert {"shapes_pair", "shapes_pair_heldout", "toy_pair"} <= set(sample_set_names())


def test_bundled_name_resolves_to_the_pack_and_loads(roots: tuple[Path, Path]) -> None:
    input_root, samples = roots
    assert sample_set_names(samples) == ("toy_pair",)
    location = resolve_set_folder(input_root, " [sample] toy_pair ", samples)
    assert location.path == location.root == (samples / "toy_pair").resolve()
    dataset = load_dataset(input_root, "[sample] toy_pair", RES)  # the real pack folder
    assert dataset.name == "[sample] toy_pair"
    assert dataset.num_images == 5 and dataset.num_folder_masks == 2


def test_listing_keeps_a_same_name_input_folder_distinct(roots: tuple[Path, Path]) -> None:
    input_root, samples = roots
    own = input_root / "toy_pair"
    shutil.copytree(samples / "toy_pair", own)
    for name in ("04.png", "05.png"):  # the user's own set of the same name has 3 photos
        for sub in ("resized", "mask_1", "mask_2"):
            (own / sub / name).unlink()
    choices = folder_choices(["toy_pair", "mine"], samples)
    assert choices == ["toy_pair", "mine", "[sample] toy_pair"]
    assert resolve_set_folder(input_root, "toy_pair", samples).path == own.resolve()
    assert resolve_set_folder(input_root, "[sample] toy_pair", samples).path == (samples / "toy_pair").resolve()
    assert load_dataset(input_root, "toy_pair", RES).num_images == 3
    assert load_dataset(input_root, "[sample] toy_pair", RES).num_images == 5
    # `[sample]` names are the pack's: an input/ folder named that way cannot shadow a bundled set.
    assert folder_choices(["[sample] toy_pair", "[sample] other", "mine"], samples) == ["mine", "[sample] toy_pair"]


@pytest.mark.parametrize("folder", ["[sample] ..", "[sample] ../input", "[sample] /etc", "[sample] .",
                                    "[sample] toy_pair/../../input", "[sample] toy_pair//etc",
                                    "[sample] C:\\Windows", "[sample]"])
def test_traversal_out_of_the_samples_is_refused(roots: tuple[Path, Path], folder: str) -> None:
    input_root, samples = roots
    message = _user_error(lambda: resolve_set_folder(input_root, folder, samples), "folder", repr(folder.strip()))
    assert "[sample] toy_pair" in message  # the fix lists what can be picked


def test_unknown_sample_lists_the_available_ones(roots: tuple[Path, Path]) -> None:
    input_root, samples = roots
    message = _user_error(lambda: resolve_set_folder(input_root, "[sample] README.md", samples), "folder",
                          "is not one of the pack's sample sets", "[sample] toy_pair")
    assert ".hidden" not in message
    _user_error(lambda: resolve_set_folder(input_root, "[sample] .hidden", samples), "folder",
                "is not one of the pack's sample sets")
    _user_error(lambda: resolve_set_folder(input_root, "[sample] toy_pair/nothing", samples), "folder",
                "does not exist in the sample set toy_pair")


def test_symlinks_out_of_the_samples_are_refused(roots: tuple[Path, Path], tmp_path: Path) -> None:
    input_root, samples = roots
    secret = write_toy_pair(tmp_path / "elsewhere")
    os.symlink(secret, samples / "linked_set")
    assert "linked_set" not in sample_set_names(samples)  # never offered, never resolved
    _user_error(lambda: resolve_set_folder(input_root, "[sample] linked_set", samples), "folder",
                "is not one of the pack's sample sets")
    os.symlink(secret / "resized", samples / "toy_pair" / "linked_photos")
    _user_error(lambda: resolve_set_folder(input_root, "[sample] toy_pair/linked_photos", samples),
                "folder", "outside the sample set toy_pair")


def test_plain_names_still_mean_input_folders(roots: tuple[Path, Path]) -> None:
    input_root, samples = roots
    _user_error(lambda: resolve_set_folder(input_root, "toy_pair", samples), "folder", "does not exist")
    _user_error(lambda: resolve_set_folder(input_root, "../pack/sample_data/toy_pair", samples), "folder",
                "inside ComfyUI's input/")


def test_class_images_and_fingerprint_read_a_sample_subfolder() -> None:
    """Class images from a bundled set's sub-folder; nothing is written into the pack's folder."""
    before = sorted((p, p.stat().st_mtime_ns) for p in (SAMPLE_SETS_DIR / "toy_pair").rglob("*"))
    images = load_class_images(Path("/nonexistent-input"), "[sample] toy_pair/resized", RES)
    assert images.shape == (5, RES, RES, 3) and images.dtype == torch.float32
    stamp = folder_fingerprint(Path("/nonexistent-input"), "[sample] toy_pair")
    assert isinstance(stamp, tuple) and len(stamp) == 15 + 1  # 15 PNGs and the README
    assert folder_fingerprint(Path("/nonexistent-input"), "[sample] ..") == "[sample] .."
    assert sorted((p, p.stat().st_mtime_ns) for p in (SAMPLE_SETS_DIR / "toy_pair").rglob("*")) == before
    assert sample_entry("toy_pair") == "[sample] toy_pair"
