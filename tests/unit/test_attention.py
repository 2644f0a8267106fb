"""The attn2 recorder on random q/k/v and small torch modules: same output, right maps, right graph."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

from textloc.attention.capture import (
    AttentionRecorder,
    CaptureSpec,
    attn2_layer_keys,
    cond_rows,
    first_rows,
    sdpa_attention,
)

HEADS, DIM_HEAD, H, W, NK = 2, 4, 2, 3, 5
KEY = ("input", 1, 0)


def extra(batch: int = 3, h: int = H, w: int = W, cond_or_uncond: list[int] | None = None) -> dict:
    return {
        "n_heads": HEADS,
        "dim_head": DIM_HEAD,
        "activations_shape": [batch, 8, h, w],
        "cond_or_uncond": cond_or_uncond or [0],
        "transformer_index": 0,
        "block": KEY[:2],
        "block_index": KEY[2],
    }


def qkv(batch: int = 3, nq: int = H * W, grad: bool = False, seed: int = 0) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    shapes = [(batch, nq, HEADS * DIM_HEAD), (batch, NK, HEADS * DIM_HEAD), (batch, NK, HEADS * DIM_HEAD)]
    return tuple(torch.randn(s, generator=gen).requires_grad_(grad) for s in shapes)


def recorder(
    columns: list[list[int]], rows=None, keep_graph: bool = False, resolutions=None
) -> AttentionRecorder:
    spec = CaptureSpec(torch.tensor(columns), rows or first_rows(2), resolutions, keep_graph)
    return AttentionRecorder(spec)


def manual_probs(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """[b, heads, Nq, Nk], one head at a time."""
    out = []
    for head in range(HEADS):
        cols = slice(head * DIM_HEAD, (head + 1) * DIM_HEAD)
        scores = q[..., cols] @ k[..., cols].transpose(1, 2) / DIM_HEAD**0.5
        out.append(scores.softmax(-1))
    return torch.stack(out, dim=1)


def test_explicit_path_equals_sdpa() -> None:
    q, k, v = qkv()
    rec = recorder([[1, 3]])
    out = rec.patch(KEY)(q, k, v, extra())
    assert len(rec.records()) == 1
    assert out.shape == q.shape
    torch.testing.assert_close(out, sdpa_attention(q, k, v, HEADS), atol=1e-5, rtol=0)
    reference = manual_probs(q, k) @ v.view(3, NK, HEADS, DIM_HEAD).transpose(1, 2)
    torch.testing.assert_close(out, reference.transpose(1, 2).reshape(3, H * W, -1), atol=1e-5, rtol=0)


def test_records_only_kept_rows_and_columns_averaged_over_heads() -> None:
    q, k, v = qkv()
    rec = recorder([[1, 3], [4, 0]])
    rec.patch(KEY)(q, k, v, extra())
    (record,) = rec.records()
    assert (record.layer_key, record.height, record.width) == (KEY, H, W)
    assert record.maps.shape == (2, 2, H, W) and record.maps.dtype == torch.float32
    probs = manual_probs(q, k).mean(dim=1)  # [b, Nq, Nk]
    expected = torch.stack([probs[0][:, [1, 3]], probs[1][:, [4, 0]]]).transpose(1, 2).reshape(2, 2, H, W)
    torch.testing.assert_close(record.maps, expected, atol=1e-6, rtol=0)


def test_query_grid_is_row_major() -> None:
    q, k, v = qkv(batch=1)
    rec = recorder([[2]], rows=first_rows(1))
    rec.patch(KEY)(q, k, v, extra(batch=1))
    probs = manual_probs(q, k).mean(dim=1)[0, :, 2]
    assert rec.records()[0].maps[0, 0, 1, 2].item() == pytest.approx(probs[1 * W + 2].item(), abs=1e-6)


def test_one_column_row_applies_to_every_captured_row() -> None:
    q, k, v = qkv()
    rec = recorder([[0, 2]], rows=first_rows(3))
    rec.patch(KEY)(q, k, v, extra())
    assert rec.records()[0].maps.shape == (3, 2, H, W)


def test_columns_out_of_range_are_rejected() -> None:
    q, k, v = qkv()
    with pytest.raises(ValueError, match="out of range"):
        recorder([[NK]]).patch(KEY)(q, k, v, extra())


def test_cond_rows_follow_cond_or_uncond_chunks() -> None:
    assert cond_rows(4, {"cond_or_uncond": [1, 0]}).tolist() == [2, 3]
    assert cond_rows(6, {"cond_or_uncond": [0, 1, 0]}).tolist() == [0, 1, 4, 5]
    q, k, v = qkv(batch=4)
    rec = recorder([[1]], rows=cond_rows)
    rec.patch(KEY)(q, k, v, extra(batch=4, cond_or_uncond=[1, 0]))
    probs = manual_probs(q, k).mean(dim=1)[2:, :, 1]
    torch.testing.assert_close(rec.records()[0].maps.reshape(2, -1), probs, atol=1e-6, rtol=0)


def test_call_without_wanted_rows_is_not_recorded_and_not_marked_seen() -> None:
    q, k, v = qkv(batch=2)
    rec = recorder([[1]], rows=cond_rows)
    fn = rec.patch(KEY)
    fn(q, k, v, extra(batch=2, cond_or_uncond=[1]))
    assert rec.records() == []
    fn(q, k, v, extra(batch=2, cond_or_uncond=[0]))
    assert len(rec.records()) == 1


def test_uncaptured_resolution_uses_sdpa(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    sdpa = F.scaled_dot_product_attention

    def counting(*args, **kwargs):
        calls.append(1)
        return sdpa(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", counting)
    q, k, v = qkv()
    rec = recorder([[1]], resolutions={4})
    out = rec.patch(KEY)(q, k, v, extra())
    assert rec.records() == [] and calls == [1]
    torch.testing.assert_close(
        out,
        (manual_probs(q, k) @ v.view(3, NK, HEADS, DIM_HEAD).transpose(1, 2))
        .transpose(1, 2)
        .reshape(3, H * W, -1),
        atol=1e-5,
        rtol=0,
    )
    q4, k4, v4 = qkv(nq=16)
    rec.patch(KEY)(q4, k4, v4, extra(h=4, w=4))
    assert [r.height for r in rec.records()] == [4] and calls == [1]


def test_each_layer_recorded_once_per_step() -> None:
    q, k, v = qkv()
    rec = recorder([[1]])
    fn = rec.patch(KEY)
    fn(q, k, v, extra())
    out_again = fn(q, k, v, extra())  # a gradient-checkpoint recompute
    assert len(rec.records()) == 1
    torch.testing.assert_close(out_again, sdpa_attention(q, k, v, HEADS), atol=1e-5, rtol=0)
    rec.patch(("output", 3, 0))(q, k, v, extra())
    assert len(rec.records()) == 2
    rec.begin_step()
    assert rec.records() == []
    fn(q, k, v, extra())
    assert len(rec.records()) == 1


class CrossAttention(nn.Module):
    """q/k/v projections around an attn2 replace function, as BasicTransformerBlock calls it."""

    def __init__(self, fn) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.to_q = nn.Linear(5, HEADS * DIM_HEAD)
        self.to_k = nn.Linear(7, HEADS * DIM_HEAD)
        self.to_v = nn.Linear(7, HEADS * DIM_HEAD)
        self.fn = fn

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        return self.fn(self.to_q(x), self.to_k(context), self.to_v(context), extra(x.shape[0]))


@pytest.mark.parametrize("wrap_previous", [False, True])
def test_gradient_checkpoint_recompute_neither_records_again_nor_breaks(wrap_previous: bool) -> None:
    gen = torch.Generator().manual_seed(2)
    x, context = torch.randn(3, H * W, 5, generator=gen), torch.randn(3, NK, 7, generator=gen)
    weights = torch.randn(2, 2, H, W, generator=gen)
    grads = []
    for use_checkpoint in (False, True):
        rec = recorder([[1, 3]], keep_graph=True)
        previous = (lambda q, k, v, eo: sdpa_attention(q, k, v, HEADS)) if wrap_previous else None
        layer = CrossAttention(rec.patch(KEY, previous))
        rec.begin_step()
        if use_checkpoint:
            out = torch.utils.checkpoint.checkpoint(layer, x, context, use_reentrant=False)
        else:
            out = layer(x, context)
        (out.square().mean() + (rec.records()[0].maps * weights).sum()).backward()
        assert len(rec.records()) == 1
        grads.append([p.grad.clone() for p in (layer.to_q.weight, layer.to_k.weight, layer.to_v.weight)])
    for plain, checkpointed in zip(*grads, strict=True):
        torch.testing.assert_close(checkpointed, plain)


def test_keep_graph_lets_the_map_loss_reach_q_and_k() -> None:
    q, k, v = qkv(grad=True)
    rec = recorder([[1, 3]], keep_graph=True)
    rec.patch(KEY)(q, k, v, extra())
    maps = rec.records()[0].maps
    weights = torch.randn(maps.shape, generator=torch.Generator().manual_seed(1))
    (maps * weights).sum().backward()
    assert q.grad is not None and q.grad[:2].abs().sum() > 0 and q.grad[2].abs().sum() == 0
    assert k.grad is not None and k.grad.abs().sum() > 0
    assert v.grad is None


def test_the_start_tokens_key_and_value_pass_no_gradient_in_training_only() -> None:
    """The authors detach the start-of-text token's K and V (method notes §2.9): it is the same in every
    prompt, so a gradient through it would move what every prompt draws. The output is unchanged."""
    q, k, v = qkv(grad=True)
    frozen = AttentionRecorder(CaptureSpec(torch.tensor([[1]]), first_rows(2), None, True, frozen_keys=1))
    plain = recorder([[1]], keep_graph=True)
    out = frozen.patch(KEY)(q, k, v, extra())
    torch.testing.assert_close(out, plain.patch(KEY)(q, k, v, extra()))
    (out.square().sum() + frozen.records()[0].maps.sum()).backward()
    assert k.grad[:, 0].abs().sum() == 0 and v.grad[:, 0].abs().sum() == 0
    assert k.grad[:, 1:].abs().sum() > 0 and v.grad[:, 1:].abs().sum() > 0
    # every call is covered, captured or not (an uncaptured resolution takes the SDPA path)
    q2, k2, v2 = qkv(grad=True, seed=3)
    uncaptured = AttentionRecorder(CaptureSpec(torch.tensor([[1]]), first_rows(2), {99}, True, frozen_keys=1))
    uncaptured.patch(KEY)(q2, k2, v2, extra()).square().sum().backward()
    assert uncaptured.records() == [] and k2.grad[:, 0].abs().sum() == 0 and k2.grad[:, 1:].abs().sum() > 0


def test_without_keep_graph_maps_are_detached_but_output_still_differentiable() -> None:
    q, k, v = qkv(grad=True)
    rec = AttentionRecorder(CaptureSpec(torch.tensor([[1]]), first_rows(2), None, False, "cpu"))
    out = rec.patch(KEY)(q, k, v, extra())
    maps = rec.records()[0].maps
    assert not maps.requires_grad and maps.grad_fn is None and maps.device.type == "cpu"
    out.sum().backward()
    assert q.grad is not None and v.grad is not None


def test_half_precision_output_keeps_q_dtype_and_maps_are_float32() -> None:
    q, k, v = (t.to(torch.bfloat16) for t in qkv())
    rec = recorder([[1]])
    out = rec.patch(KEY)(q, k, v, extra())
    assert out.dtype == torch.bfloat16 and rec.records()[0].maps.dtype == torch.float32
    torch.testing.assert_close(
        out.float(), sdpa_attention(q.float(), k.float(), v.float(), HEADS), atol=2e-2, rtol=0
    )


def test_previous_patch_output_is_kept_and_maps_still_recorded() -> None:
    calls = []

    def previous(q, k, v, extra_options):
        calls.append(extra_options["block"])
        return torch.full_like(q, 7.0)

    q, k, v = qkv(grad=True)
    rec = recorder([[1]], keep_graph=True)
    fn = rec.patch(KEY, previous)
    out = fn(q, k, v, extra())
    torch.testing.assert_close(out, torch.full_like(q, 7.0))
    assert calls == [KEY[:2]] and len(rec.records()) == 1
    assert rec.records()[0].maps.requires_grad
    out_again = fn(q, k, v, extra())  # not captured: previous patch alone
    torch.testing.assert_close(out_again, torch.full_like(q, 7.0))
    assert len(calls) == 2 and len(rec.records()) == 1


class Attn(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.to_k = nn.Linear(2, 2)


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn1 = Attn()
        self.attn2 = Attn()


class Transformer(nn.Module):
    def __init__(self, depth: int) -> None:
        super().__init__()
        self.transformer_blocks = nn.ModuleList(Block() for _ in range(depth))


def level(*layers: nn.Module) -> nn.Sequential:
    return nn.Sequential(*layers)


class SmallUNet(nn.Module):
    """The module layout of an ldm UNet: input_blocks / middle_block / output_blocks."""

    def __init__(self) -> None:
        super().__init__()
        self.input_blocks = nn.ModuleList(
            [
                level(nn.Conv2d(1, 1, 1)),
                level(nn.Identity(), Transformer(1)),
                level(nn.Identity()),
                level(nn.Identity(), Transformer(2)),
            ]
        )
        self.middle_block = level(nn.Identity(), Transformer(3), nn.Identity())
        self.output_blocks = nn.ModuleList(
            [
                level(nn.Identity()),
                level(nn.Identity(), Transformer(1), nn.Identity()),
                level(nn.Identity(), Transformer(2)),
            ]
        )


def test_attn2_layer_keys_follow_the_module_tree() -> None:
    assert attn2_layer_keys(SmallUNet()) == [
        ("input", 1, 0),
        ("input", 3, 0),
        ("input", 3, 1),
        ("middle", 0, 0),
        ("middle", 0, 1),
        ("middle", 0, 2),
        ("output", 1, 0),
        ("output", 2, 0),
        ("output", 2, 1),
    ]


def test_attn2_layer_keys_empty_without_cross_attention() -> None:
    assert attn2_layer_keys(nn.Sequential(nn.Linear(2, 2))) == []
