"""Pure parts of token training: word-id positions, placeholder substitution, autograd-safe tensors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from textloc.errors import TLInputError
from textloc.training import token_embedding as te

BOS, EOS = 49406, 49407


def _chunk(words: list[tuple[int, int]], length: int = 10, pad: int = EOS) -> list[tuple]:
    """A ComfyUI-style chunk: start token, (token, weight, word id) entries, end token, padding."""
    chunk = [(BOS, 1.0, 0)] + [(t, 1.0, w) for t, w in words] + [(EOS, 1.0, 0)]
    return chunk + [(pad, 1.0, 0)] * (length - len(chunk))


def test_word_positions_in_one_chunk() -> None:
    # "photo of a " (word id 1), an embedding (word id 2), " doll" (word id 3)
    tokens = {"l": [_chunk([(1125, 1), (539, 1), (320, 1), (48136, 2), (9286, 3)])]}
    assert te.find_word_positions(tokens, 2) == {"l": [4]}
    assert te.find_word_positions(tokens, 1) == {"l": [1, 2, 3]}
    assert te.find_word_positions(tokens, 7) == {"l": []}


def test_word_positions_count_across_chunks_and_branches() -> None:
    first = _chunk([(320, 1)] * 8)
    second = _chunk([(48136, 2), (9286, 3)])
    tokens = {"g": [first, second], "l": [list(first), list(second)]}
    assert te.find_word_positions(tokens, 2) == {"g": [11], "l": [11]}


def test_word_positions_need_word_ids() -> None:
    with pytest.raises(ValueError, match="return_word_ids"):
        te.find_word_positions({"l": [[(BOS, 1.0), (EOS, 1.0)]]}, 1)


def test_embedding_positions_find_vectors() -> None:
    vec = torch.zeros(768)
    chunk = _chunk([(1125, 1), (320, 1)])
    chunk.insert(3, (vec, 1.0, 2))
    second = _chunk([(320, 3)])
    second[1] = (vec, 1.0, 4)
    assert te.find_embedding_positions({"l": [chunk[:10], second]}) == {"l": [3, 11]}


def test_substitute_replaces_every_placeholder_once() -> None:
    text = "photo of a <new1> bucket and a <new10> doll, <new1>"
    out = te._substitute(text, {"<new1>": "sks", "<new10>": "toy"})
    assert out == "photo of a sks bucket and a toy doll, sks"
    assert te._count_placeholders(text, {"<new1>": 0, "<new10>": 0}) == {"<new1>": 2, "<new10>": 1}
    assert te._count_placeholders("a <new10> doll", {"<new1>": 0, "<new10>": 0}) == {"<new1>": 0, "<new10>": 1}


def test_same_entry_compares_vectors_by_value() -> None:
    assert te.same_entry(5, 5) and not te.same_entry(5, 6)
    assert te.same_entry(torch.ones(3), torch.ones(3))
    assert not te.same_entry(torch.ones(3), torch.zeros(3))
    assert not te.same_entry(torch.ones(3), 1)


def test_make_autograd_safe_swaps_inference_tensors_keeping_values() -> None:
    with torch.inference_mode():
        layer = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
        layer.eval()
    before = {k: v.clone() for k, v in layer.state_dict().items()}
    old_weight = layer[0].weight
    x = torch.randn(2, 4, requires_grad=True)
    with pytest.raises(RuntimeError, match="[Ii]nference tensor"):
        layer(x).sum().backward()

    replaced = te.make_autograd_safe(layer)
    assert replaced == 2 + 2 + 3  # Linear weight/bias, BatchNorm weight/bias, 3 BatchNorm buffers
    assert layer[0].weight is not old_weight
    assert not layer[0].weight.requires_grad
    assert all(not t.is_inference() for t in layer.state_dict().values())
    after = layer.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    layer(x).sum().backward()
    assert x.grad is not None
    assert te.make_autograd_safe(layer) == 0  # normal tensors are left alone


def test_trainable_token_names_state_and_resume() -> None:
    token = te.TrainableToken(
        placeholder="<new1>", init_word="sks",
        vectors={"clip_l": nn.Parameter(torch.zeros(1, 4)), "clip_g": nn.Parameter(torch.zeros(1, 6))},
        branch_keys={"l": "clip_l", "g": "clip_g"},
    )
    assert [n for n, _ in token.named_parameters()] == ["token.<new1>.clip_l", "token.<new1>.clip_g"]
    held = token.vectors["clip_l"]
    token.load_state({"clip_l": torch.ones(1, 4), "clip_g": torch.full((1, 6), 2.0)})
    assert token.vectors["clip_l"] is held and torch.equal(held.detach(), torch.ones(1, 4))
    state = token.state()
    state["clip_g"] += 1
    assert torch.equal(token.vectors["clip_g"].detach(), torch.full((1, 6), 2.0))
    with pytest.raises(TLInputError, match="encoders"):
        token.load_state({"clip_l": torch.ones(1, 4)})
