"""Two reference ways of getting attention maps, for comparison with the pack's recorder.

- naive: explicit softmax attention in EVERY attention layer (self-attention attn1 and
  cross-attention attn2, at every resolution) and every full probability tensor
  [batch, heads, queries, keys] kept for the step, the way a prompt-to-prompt style
  AttentionStore collects maps. The loss still reads the same token maps, so the training
  objective is unchanged; only the capture costs differ.
- plain: no capture at all, the fused SDPA kernel in every layer (Custom Diffusion as such).
  The step still gets maps of the right shapes (zeros), so the trainer runs unchanged with
  guidance "none"; it must not be used with an attention loss.

The pack's own recorder computes probabilities explicitly only in the attn2 layers the loss
reads, keeps only the identifier tokens' columns, and uses SDPA everywhere else.
"""

from __future__ import annotations

from typing import Any

import torch

from textloc.attention.capture import (
    AttentionRecord,
    AttentionRecorder,
    AttnFn,
    LayerKey,
    _merge_heads,
    _split_heads,
    attn2_layer_keys,
)


def explicit_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """(output [b, N, heads * d], probabilities [b, heads, Nq, Nk]) in the inputs' dtype."""
    qh, kh, vh = _split_heads(q, heads), _split_heads(k, heads), _split_heads(v, heads)
    probs = torch.softmax(qh @ kh.transpose(-1, -2) * qh.shape[-1] ** -0.5, dim=-1)
    return _merge_heads(probs @ vh), probs


class NaiveRecorder(AttentionRecorder):
    """Explicit attention in every layer; every full probability tensor is kept until the next step."""

    def __init__(self, spec: Any) -> None:
        super().__init__(spec)
        self.store: list[torch.Tensor] = []

    def begin_step(self) -> None:
        super().begin_step()
        self.store = []

    def stored_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.store)

    def _keep(self, probs: torch.Tensor) -> None:
        self.store.append(probs if self.spec.keep_graph else probs.detach())

    def patch(self, layer_key: LayerKey, previous: AttnFn | None = None) -> AttnFn:
        def attn2(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, extra_options: dict) -> torch.Tensor:
            heads = int(extra_options["n_heads"])
            hw = (int(extra_options["activations_shape"][-2]), int(extra_options["activations_shape"][-1]))
            out, probs = explicit_attention(q, k, v, heads)
            self._keep(probs)
            rows = self._captured_rows(q, extra_options, hw)
            if rows is not None:
                self._store(layer_key, self._maps(probs, rows, hw).float())
            return out

        return attn2

    def self_patch(self) -> AttnFn:
        def attn1(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, extra_options: dict) -> torch.Tensor:
            out, probs = explicit_attention(q, k, v, int(extra_options["n_heads"]))
            self._keep(probs)
            return out

        return attn1


class NoCaptureRecorder(AttentionRecorder):
    """SDPA in every layer; records() hands out zero maps of the shapes a capture would give."""

    def __init__(self, spec: Any, shapes: list[tuple[LayerKey, int, int]]) -> None:
        super().__init__(spec)
        self.shapes = shapes

    def _captured_rows(self, q: torch.Tensor, extra_options: dict, hw: tuple[int, int]) -> None:
        return None

    def records(self) -> list[AttentionRecord]:
        rows = self.spec.rows(1 << 30, {})
        count = rows.stop if isinstance(rows, slice) else len(rows)
        columns = self.spec.columns.shape[1]
        wanted = self.spec.resolutions
        return [AttentionRecord(key, h, w, torch.zeros(count, columns, h, w))
                for key, h, w in self.shapes if wanted is None or h in wanted]


def _install(trainer: Any, recorder: AttentionRecorder, with_self_attention: bool) -> None:
    """Replace the trainer's recorder patches on its ModelPatcher clone (no wrapping of the old ones)."""
    patcher = trainer.patcher
    for key in attn2_layer_keys(trainer.base_model.diffusion_model):
        patcher.set_model_attn2_replace(recorder.patch(key, None), *key)
        if with_self_attention and isinstance(recorder, NaiveRecorder):
            patcher.set_model_attn1_replace(recorder.self_patch(), *key)
    trainer.recorder = recorder


def use_naive_capture(trainer: Any) -> None:
    """Turn a prepared trainer (after discover_resolutions) into the naive-capture variant."""
    _install(trainer, NaiveRecorder(trainer.recorder.spec), with_self_attention=True)


def use_no_capture(trainer: Any) -> None:
    """Turn a prepared trainer (after discover_resolutions) into plain Custom Diffusion (guidance none only)."""
    if trainer.config.guidance != "none" and trainer.config.attention_weight > 0:
        raise ValueError("the no-capture variant has no attention maps: use it with guidance 'none' only")
    shapes = [(r.layer_key, r.height, r.width) for r in trainer.recorder.records()]
    _install(trainer, NoCaptureRecorder(trainer.recorder.spec, shapes), with_self_attention=False)
