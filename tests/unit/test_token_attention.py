"""Show Token Attention's pure parts: words, options, aggregation over calls, layers, sizes and tokens."""

from __future__ import annotations

import pytest
import torch

from textloc.attention import token_attention as ta
from textloc.attention.capture import AttentionRecord
from textloc.errors import TLInputError


def test_words_are_split_on_commas_and_trimmed() -> None:
    assert ta.parse_words(" embedding:tl_ball, ball ,, tennis racket ") == ["embedding:tl_ball", "ball", "tennis racket"]
    with pytest.raises(TLInputError, match="words"):
        ta.parse_words(" , ")


def test_occurrences_cover_every_token_of_every_match() -> None:
    assert ta._occurrences([1, 5, 6, 2, 5, 6], [5, 6]) == [1, 2, 4, 5]
    assert ta._occurrences([1, 2, 3], [4]) == []
    vector = torch.ones(3)
    assert ta._occurrences([1, vector.clone(), 2], [vector]) == [1]
    assert ta._occurrences([1, torch.zeros(3), 2], [vector]) == []


def test_resolution_choice_defaults_to_the_trainers_levels() -> None:
    assert ta.choose_resolutions("auto", [8, 4, 2, 8]) == [4, 2]
    assert ta.choose_resolutions("", [8]) == [8]
    assert ta.choose_resolutions("all", [2, 8, 4]) == [8, 4, 2]
    assert ta.choose_resolutions(" 2, 8 ", [8, 4, 2]) == [8, 2]
    for bad in ("16", "x", "8,16"):
        with pytest.raises(TLInputError, match="8, 4, 2"):
            ta.choose_resolutions(bad, [8, 4, 2])


def test_timestep_range_must_be_increasing_within_0_1() -> None:
    ta.check_timestep_range(0.0, 1.0)
    for start, end in ((0.5, 0.5), (0.6, 0.4), (-0.1, 0.5), (0.0, 1.5)):
        with pytest.raises(TLInputError, match="start_percent"):
            ta.check_timestep_range(start, end)


def _record(key: tuple[str, int, int], maps: torch.Tensor) -> AttentionRecord:
    return AttentionRecord(key, maps.shape[-2], maps.shape[-1], maps)


def test_accumulator_averages_each_layer_over_the_calls() -> None:
    acc = ta.AttentionAccumulator(columns=[4, 5])
    first, second = torch.rand(2, 2, 4, 4), torch.rand(2, 2, 4, 4)
    acc.add([_record(("input", 1, 0), first), _record(("middle", 0, 0), first[..., :2, :2])])
    acc.add([])  # an uncond-only call records nothing
    acc.add([_record(("input", 1, 0), second)])
    means = {r.layer_key: r for r in acc.layer_means()}
    assert acc.calls == 2
    torch.testing.assert_close(means[("input", 1, 0)].maps, (first + second) / 2)
    torch.testing.assert_close(means[("middle", 0, 0)].maps, first[..., :2, :2])
    assert means[("middle", 0, 0)].height == 2
    with pytest.raises(RuntimeError, match="shape changed"):
        acc.add([_record(("input", 1, 0), torch.rand(1, 2, 4, 4))])


def test_sigma_range_is_inclusive() -> None:
    acc = ta.AttentionAccumulator(columns=[1], sigma_high=10.0, sigma_low=1.0)
    assert acc.in_range(torch.tensor([10.0, 10.0])) and acc.in_range(1.0) and acc.in_range(torch.tensor(5.0))
    assert not acc.in_range(torch.tensor([10.5])) and not acc.in_range(0.5)


def test_maps_average_layers_per_size_then_sizes_then_tokens() -> None:
    fine_a = torch.zeros(1, 3, 4, 4)
    fine_b = torch.full((1, 3, 4, 4), 2.0)
    coarse = torch.zeros(1, 3, 2, 2)
    coarse[0, 0, 0, 0] = 4.0  # column 0 looks at the top-left corner at the coarse level
    records = [_record(("input", 1, 0), fine_a), _record(("output", 5, 0), fine_b), _record(("middle", 0, 0), coarse)]
    per_column = ta.column_maps(records, [4, 2], (8, 8))
    assert per_column.shape == (1, 3, 8, 8)
    assert torch.allclose(per_column[0, 1], torch.full((8, 8), 0.5))  # (mean 1.0 + 0.0) / 2
    assert per_column[0, 0, 0, 0] > per_column[0, 0, 7, 7]

    words = [ta.WordTokens("a", (5,)), ta.WordTokens("b c", (6, 9))]
    per_word = ta.word_maps(per_column, [5, 6, 9], words)
    assert per_word.shape == (1, 2, 8, 8)
    torch.testing.assert_close(per_word[0, 0], per_column[0, 0])
    torch.testing.assert_close(per_word[0, 1], (per_column[0, 1] + per_column[0, 2]) / 2)
    with pytest.raises(ValueError, match="resolution 8"):
        ta.column_maps(records, [8], (8, 8))


def test_normalisation_modes() -> None:
    maps = torch.stack([torch.linspace(0.1, 0.2, 16).view(4, 4), torch.linspace(0.0, 0.4, 16).view(4, 4)])[None]
    per_word = ta.normalize_maps(maps, "per word")
    assert torch.allclose(per_word.amin(dim=(-2, -1)), torch.zeros(1, 2))
    assert torch.allclose(per_word.amax(dim=(-2, -1)), torch.ones(1, 2), atol=1e-5)
    across = ta.normalize_maps(maps, "across words")
    assert across[0, 0].max() < 0.6 and torch.isclose(across[0, 1].max(), torch.tensor(1.0), atol=1e-5)
    assert torch.equal(ta.normalize_maps(maps, "none"), maps)
    with pytest.raises(TLInputError, match="normalization"):
        ta.normalize_maps(maps, "log")


def test_result_orders_masks_and_overlays_image_major() -> None:
    images = torch.stack([torch.zeros(4, 4, 3), torch.ones(4, 4, 3)])
    maps = torch.rand(2, 3, 4, 4)
    result = ta.TokenAttention(images=images, maps=maps, words=[ta.WordTokens(w, (1,)) for w in "abc"],
                               resolutions=[2], calls=4)
    assert torch.equal(result.masks[4], maps[1, 1])
    overlays = result.overlays(alpha=0.5)
    assert overlays.shape == (6, 4, 4, 3)
    assert overlays[:3].max() <= 0.5 and overlays[3:].min() >= 0.5  # images 0 then image 1 under the heat
