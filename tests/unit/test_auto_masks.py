"""Masks from word attention, the pure parts: Otsu, stronger word wins, holes, components, batch order."""

from __future__ import annotations

import pytest
import torch

from textloc.data import auto_masks as am
from textloc.data.dataset import MultiConceptDataset, build_concept
from textloc.errors import TLInputError

SIZE = 32


def _box(top: int, left: int, side: int, size: int = SIZE) -> torch.Tensor:
    mask = torch.zeros(size, size, dtype=torch.bool)
    mask[top : top + side, left : left + side] = True
    return mask


def _blob(cy: float, cx: float, sigma: float, size: int = SIZE) -> torch.Tensor:
    """A smooth bump, like an upsampled attention map."""
    y, x = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
    return torch.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * sigma**2))


# ---------------------------------------------------------------------------------------------- thresholds


def test_otsu_splits_a_bimodal_map() -> None:
    generator = torch.Generator().manual_seed(0)
    inside = _box(8, 8, 12)
    values = torch.where(inside, 0.75, 0.2) + 0.04 * torch.randn(SIZE, SIZE, generator=generator)
    soft = values.clamp(0, 1)
    cut = am.otsu_threshold(soft)
    assert cut.shape == () and 0.3 < cut < 0.65
    assert torch.equal(am.threshold_maps(soft, 0.0), inside)


def test_otsu_runs_per_map_and_a_fixed_threshold_is_used_as_given() -> None:
    low = torch.where(_box(0, 0, 10), 0.3, 0.0)
    high = torch.where(_box(0, 0, 10), 1.0, 0.6)
    cuts = am.otsu_threshold(torch.stack([low, high]))
    assert cuts.shape == (2,) and cuts[0] < 0.3 and 0.6 < cuts[1] < 1.0
    assert am.threshold_maps(torch.stack([low, high]), 0.5).sum((-2, -1)).tolist() == [0, SIZE * SIZE]
    with pytest.raises(TLInputError, match="threshold"):
        am.threshold_maps(low, 1.5)


def test_the_stronger_word_wins_a_shared_pixel() -> None:
    first, second = _box(4, 4, 12), _box(10, 10, 12)  # overlap: rows/cols 10..15
    soft = torch.stack([_blob(9, 9, 6), _blob(16, 16, 6)])[None]
    masks = am.exclusive(torch.stack([first, second])[None], soft)[0]
    assert not (masks[0] & masks[1]).any()
    assert torch.equal(masks[0] | masks[1], first | second)  # nothing claimed is lost
    assert masks[0, 11, 11] and masks[1, 15, 15]  # each wins the shared pixels nearer its own peak
    assert torch.equal(masks[0] & ~second, first & ~second)  # unshared pixels stay


# ---------------------------------------------------------------------------------------------- components


@pytest.fixture(params=["union_find", "pooling"])
def labelling(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run the component tests with kornia's exact labelling and with the fallback for older kornia."""
    if request.param == "pooling":
        monkeypatch.setattr(am, "label_components", am._labels_by_pooling)
    return request.param


def test_fill_holes_fills_enclosed_background_only(labelling: str) -> None:
    ring = _box(4, 4, 14) & ~_box(8, 8, 6)
    open_c = _box(4, 18, 12) & ~_box(8, 22, 12)  # a C open to the right edge: not a hole
    filled = am.fill_holes(torch.stack([ring, open_c]))
    assert torch.equal(filled[0], _box(4, 4, 14))
    assert torch.equal(filled[1], open_c)


def test_keep_largest_keeps_each_masks_biggest_piece(labelling: str) -> None:
    small, big = _box(2, 2, 4), _box(12, 12, 10)
    other_small, other_big = _box(20, 20, 3), _box(1, 10, 8)
    kept = am.keep_largest(torch.stack([small | big, other_small | other_big, torch.zeros(SIZE, SIZE, dtype=bool)]))
    assert torch.equal(kept[0], big) and torch.equal(kept[1], other_big) and not kept[2].any()


def test_labels_without_union_find_match_kornias() -> None:
    """The fallback for older kornia: exact on a long winding shape that a fixed pooling count splits."""
    snake = torch.zeros(SIZE, SIZE, dtype=torch.bool)
    snake[::4] = True
    snake[1::8, -1] = snake[2::8, -1] = snake[3::8, -1] = True
    snake[5::8, 0] = snake[6::8, 0] = snake[7::8, 0] = True
    binary = torch.stack([snake, _box(3, 3, 5) | _box(20, 20, 5)])
    pooled = am._labels_by_pooling(binary)
    assert pooled[0][snake].unique().numel() == 1  # one component
    assert pooled[1][binary[1]].unique().numel() == 2
    assert not set(pooled[0].unique().tolist()) & set(pooled[1].unique().tolist()) - {0}
    exact = am.label_components(binary)
    for plane in range(2):  # same partition: labels map one to one
        pairs = torch.stack([pooled[plane][binary[plane]], exact[plane][binary[plane]]]).unique(dim=1)
        assert pairs.shape[1] == pairs[0].unique().numel() == pairs[1].unique().numel()


# ---------------------------------------------------------------------------------------------- masks


def test_masks_from_maps_gives_one_clean_mask_per_word_that_never_overlap(labelling: str) -> None:
    speck = torch.zeros(SIZE, SIZE)
    speck[28, 2] = 1.0  # a one-pixel hot spot: opening removes it
    ball = (_blob(9, 9, 4) + speck).clamp(0, 1)
    box = _blob(20, 22, 5)
    soft = torch.stack([torch.stack([ball, box]), torch.stack([box, ball])])  # 2 photos, 2 words
    masks = am.masks_from_maps(soft)
    assert masks.shape == (2, 2, SIZE, SIZE) and masks.dtype == torch.float32
    assert set(masks.unique().tolist()) <= {0.0, 1.0}
    assert (masks.sum(1) <= 1).all()  # no pixel in two masks
    assert masks[0, 0, 9, 9] == 1 and masks[0, 1, 20, 22] == 1 and masks[0, 0, 28, 2] == 0
    assert torch.equal(masks[1], masks[0].flip(0))
    grown = am.masks_from_maps(soft, grow_pixels=2)
    assert grown[0, 0].sum() > masks[0, 0].sum() and (grown.sum(1) <= 1).all()
    feathered = am.masks_from_maps(soft, feather_pixels=3)
    assert ((feathered > 0) & (feathered < 1)).any()


def test_the_batch_is_word_major_and_chains_into_mask_target() -> None:
    """masks [W*N]: word 1 for every photo, then word 2 (Load Multi-Concept Dataset's order); Mask Target's
    mask_index k picks word k."""
    photos, words = 3, 2
    maps = torch.zeros(photos, words, SIZE, SIZE)
    for n in range(photos):
        for w in range(words):
            maps[n, w, : 4 * (n + 1), : 8 * (w + 1)] = 1.0  # a different box per (photo, word)
    batch = am.word_major(maps)
    assert batch.shape == (words * photos, SIZE, SIZE)
    for w in range(words):
        for n in range(photos):
            assert torch.equal(batch[w * photos + n], maps[n, w])
    dataset = MultiConceptDataset(name="auto", images=torch.zeros(photos, SIZE, SIZE, 3),
                                  folder_masks=torch.zeros(0, photos, SIZE, SIZE),
                                  image_names=("a.png", "b.png", "c.png"),
                                  original_sizes=((SIZE, SIZE),) * photos, resolution=SIZE)
    second = build_concept(dataset, token="tl_box", class_word="box", mask=batch, mask_index=2)
    assert torch.equal(second.masks, maps[:, 1])


def test_preview_tints_each_word_in_its_own_colour() -> None:
    images = torch.full((1, SIZE, SIZE, 3), 0.5)
    masks = torch.stack([_box(2, 2, 10), _box(16, 16, 10)]).float()[None]
    out = am.preview(images, masks)
    assert out.shape == images.shape
    centre_a, centre_b = out[0, 6, 6], out[0, 21, 21]
    assert centre_a[0] > centre_a[2] and centre_b[2] > centre_b[0]  # red-ish, blue-ish
    assert torch.equal(out[0, 0, 31], images[0, 0, 31])


# ---------------------------------------------------------------------------------------------- options


def test_caption_and_options() -> None:
    assert am.build_caption(am.DEFAULT_TEMPLATE, ["ball", "box"]) == "a photo of a ball and a box"
    assert am.build_caption("two toys: a doll, a robot", ["doll", "robot"]) == "two toys: a doll, a robot"
    assert am.parse_timesteps(" 500, 250 ,250") == [250, 500]
    for bad in ("", "fast", "0", "1000", "250, -5"):
        with pytest.raises(TLInputError, match="timesteps"):
            am.parse_timesteps(bad)
    with pytest.raises(TLInputError, match="prompt"):
        am.build_caption("  ", ["ball"])


def test_bad_inputs_stop_before_the_model_runs() -> None:
    images = torch.zeros(1, SIZE, SIZE, 3)
    never = object()  # model, clip and vae are never touched
    with pytest.raises(TLInputError, match="words: is empty"):
        am.masks_from_word_attention(never, never, never, images, " , ")
    with pytest.raises(TLInputError, match="images"):
        am.masks_from_word_attention(never, never, never, torch.zeros(SIZE, SIZE), "ball")
    with pytest.raises(TLInputError, match="feather"):
        am.masks_from_word_attention(never, never, never, images, "ball", feather_pixels=-1)
    with pytest.raises(TLInputError, match="threshold"):
        am.masks_from_word_attention(never, never, never, images, "ball", threshold=2.0)
