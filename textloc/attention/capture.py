"""Capture cross-attention maps through ComfyUI's attn2 replace patches.

One code path serves training (maps stay in the autograd graph, so the attention loss reaches W_K
and the token embedding) and sampling-time visualisation (maps detached). Layers and calls that are
not captured keep the fused SDPA kernel; captured ones compute the probabilities explicitly, since
fused kernels never expose them.

Pure torch: the ComfyUI ModelPatcher is only used through its public methods (duck typing).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import TLInputError

LayerKey = tuple[str, int, int]
"""(block name, block number, transformer index): the key ComfyUI looks attn2 replace patches up by."""

AttnFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, dict], torch.Tensor]
"""An attn2 replace patch: (q, k, v, extra_options) -> [b, Nq, heads * dim_head]."""

RowSelector = Callable[[int, dict], "torch.Tensor | slice"]
"""(batch size, extra_options) -> the batch rows to capture, as indices or a slice."""


def first_rows(count: int) -> RowSelector:
    """Training: the instance samples are the first `count` rows of the [instance; class] batch."""

    def select(batch_size: int, extra_options: dict) -> slice:
        return slice(0, min(count, batch_size))

    return select


def cond_rows(batch_size: int, extra_options: dict) -> torch.Tensor:
    """Sampling: ComfyUI stacks equal chunks in `cond_or_uncond` order (0 = cond); keep the cond ones."""
    order = extra_options.get("cond_or_uncond") or [0]
    chunk = batch_size // len(order)
    rows = [i * chunk + j for i, kind in enumerate(order) if kind == 0 for j in range(chunk)]
    return torch.tensor(rows, dtype=torch.long)


@dataclass
class CaptureSpec:
    """What to record: which batch rows, which token columns, at which map sizes, with or without grad."""

    columns: torch.Tensor
    """LongTensor [R, C]: token positions kept for each captured row ([1, C] applies to every row)."""
    rows: RowSelector
    resolutions: set[int] | None = None
    """Map heights h to capture; None captures every layer."""
    keep_graph: bool = False
    """True keeps maps differentiable (training); False stores them detached in float32."""
    store_device: torch.device | str | None = None
    """Where detached maps are kept; None leaves them on the compute device."""
    frozen_keys: int = 0
    """Training: the first `frozen_keys` context tokens' keys and values pass no gradient. The authors
    (after Custom Diffusion) detach the start-of-text token: it is the same in every prompt and draws
    most of the attention, so a gradient through it would move what every prompt draws."""


@dataclass(frozen=True)
class AttentionRecord:
    """One captured attn2 call: the head-averaged probabilities of the kept columns."""

    layer_key: LayerKey
    height: int
    width: int
    maps: torch.Tensor
    """[R, C, h, w] float32."""


def _split_heads(t: torch.Tensor, heads: int) -> torch.Tensor:
    """[b, N, heads * d] -> [b, heads, N, d]."""
    b, n, inner = t.shape
    return t.reshape(b, n, heads, inner // heads).transpose(1, 2)


def _merge_heads(t: torch.Tensor) -> torch.Tensor:
    """[b, heads, N, d] -> [b, N, heads * d], the layout of ComfyUI's optimized attention."""
    b, heads, n, d = t.shape
    return t.transpose(1, 2).reshape(b, n, heads * d)


def sdpa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    """The fast path for calls that are not captured."""
    out = F.scaled_dot_product_attention(
        _split_heads(q, heads), _split_heads(k, heads), _split_heads(v, heads)
    )
    return _merge_heads(out)


def attention_probs(q: torch.Tensor, k: torch.Tensor, heads: int) -> torch.Tensor:
    """softmax(q k^T * dim_head^-0.5) in float32: [b, heads, Nq, Nk]. float32 keeps fp16 maps exact enough."""
    qh = _split_heads(q, heads).float()
    kh = _split_heads(k, heads).float()
    scale = qh.shape[-1] ** -0.5
    return torch.softmax(qh @ kh.transpose(-1, -2) * scale, dim=-1)


class AttentionRecorder:
    """Holds a CaptureSpec and the maps recorded since the last `begin_step()`.

    Each layer is recorded once per step. A captured layer that runs again in the same step (a
    gradient-checkpoint recompute during backward, or a second model call while sampling) repeats
    exactly the same computation, since non-reentrant checkpointing checks that recomputation saves
    the same tensors, but its map is not stored again.
    """

    def __init__(self, spec: CaptureSpec) -> None:
        self.spec = spec
        self._records: list[AttentionRecord] = []
        self._seen: set[LayerKey] = set()

    def begin_step(self) -> None:
        """Forget the previous step's maps. Call before each forward pass whose maps you want."""
        self._records = []
        self._seen = set()

    def records(self) -> list[AttentionRecord]:
        """The maps recorded in this step, in forward order."""
        return list(self._records)

    def _captured_rows(
        self, q: torch.Tensor, extra_options: dict, hw: tuple[int, int]
    ) -> torch.Tensor | None:
        """The batch rows to capture in this call, or None for the fast path."""
        if self.spec.resolutions is not None and hw[0] not in self.spec.resolutions:
            return None
        if hw[0] * hw[1] != q.shape[1]:
            return None
        rows = self.spec.rows(q.shape[0], extra_options)
        if isinstance(rows, slice):
            rows = torch.arange(q.shape[0], device=q.device)[rows]
        rows = rows.to(device=q.device, dtype=torch.long)
        return rows if rows.numel() else None

    def _columns(self, row_count: int, key_length: int, device: torch.device) -> torch.Tensor:
        columns = self.spec.columns.to(device=device, dtype=torch.long)
        if columns.ndim != 2 or columns.shape[0] not in (1, row_count):
            raise ValueError(
                f"CaptureSpec.columns must be [R, C] with R = 1 or {row_count} captured rows, "
                f"got {tuple(columns.shape)}"
            )
        if columns.numel() and (columns.min() < 0 or columns.max() >= key_length):
            raise ValueError(f"token columns {columns.tolist()} out of range for {key_length} context tokens")
        return columns.expand(row_count, -1)

    def _maps(self, probs: torch.Tensor, rows: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        """The selected rows and columns of [b, heads, Nq, Nk], averaged over heads: [R, C, h, w]."""
        picked = probs[rows]
        r, heads, nq, _ = picked.shape
        columns = self._columns(r, probs.shape[-1], probs.device)
        index = columns[:, None, None, :].expand(r, heads, nq, columns.shape[1])
        maps = picked.gather(-1, index).mean(dim=1).transpose(1, 2).reshape(r, -1, *hw)
        if not self.spec.keep_graph:
            maps = maps.detach().to(self.spec.store_device or maps.device, torch.float32)
        return maps

    def _store(self, layer_key: LayerKey, maps: torch.Tensor) -> None:
        if layer_key not in self._seen:
            self._seen.add(layer_key)
            self._records.append(AttentionRecord(layer_key, maps.shape[-2], maps.shape[-1], maps))

    def patch(self, layer_key: LayerKey, previous: AttnFn | None = None) -> AttnFn:
        """The attn2 replace function for one layer; `previous` (another pack's patch) keeps producing the output."""

        def attn2(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, extra_options: dict) -> torch.Tensor:
            frozen = self.spec.frozen_keys
            if frozen and torch.is_grad_enabled():
                k = torch.cat([k[:, :frozen].detach(), k[:, frozen:]], dim=1)
                v = torch.cat([v[:, :frozen].detach(), v[:, frozen:]], dim=1)
            heads = int(extra_options["n_heads"])
            hw = (int(extra_options["activations_shape"][-2]), int(extra_options["activations_shape"][-1]))
            rows = self._captured_rows(q, extra_options, hw)
            if rows is None:
                return previous(q, k, v, extra_options) if previous else sdpa_attention(q, k, v, heads)
            if previous is not None:
                with torch.set_grad_enabled(self.spec.keep_graph and torch.is_grad_enabled()):
                    self._store(layer_key, self._maps(attention_probs(q, k, heads), rows, hw))
                return previous(q, k, v, extra_options)
            probs = attention_probs(q, k, heads)
            out = _merge_heads(probs @ _split_heads(v, heads).float()).to(q.dtype)
            self._store(layer_key, self._maps(probs, rows, hw))
            return out

        return attn2


_ATTN2_PATTERN = re.compile(
    r"^(?:(?P<block>input_blocks|output_blocks)\.(?P<number>\d+)|middle_block)\.\d+"
    r"\.transformer_blocks\.(?P<depth>\d+)\.attn2$"
)
_BLOCK_NAMES = {"input_blocks": "input", "output_blocks": "output"}


def attn2_layer_keys(diffusion_model: torch.nn.Module) -> list[LayerKey]:
    """Every attn2 layer's patch key, in forward order.

    UNetModel sets transformer_options["block"] to ("input", i), ("middle", 0) or ("output", i)
    and SpatialTransformer sets "block_index" to the depth index t; BasicTransformerBlock looks the
    replace patch up as (block[0], block[1], block_index).
    """
    keys: list[LayerKey] = []
    for name, _ in diffusion_model.named_modules():
        match = _ATTN2_PATTERN.match(name)
        if match is None:
            continue
        depth = int(match["depth"])
        if match["block"]:
            key = (_BLOCK_NAMES[match["block"]], int(match["number"]), depth)
        else:
            key = ("middle", 0, depth)  # UNetModel numbers the whole middle block 0
        if key not in keys:
            keys.append(key)
    return keys


def install_recorder(model_patcher: Any, recorder: AttentionRecorder) -> None:
    """Register the recorder on every attn2 layer of an already cloned ModelPatcher.

    A patch another pack registered earlier (under the 3-part key or the 2-part block key, which
    ComfyUI falls back to) is wrapped, so its output is kept.
    """
    diffusion_model = getattr(model_patcher.model, "diffusion_model", None)
    keys = attn2_layer_keys(diffusion_model) if isinstance(diffusion_model, torch.nn.Module) else []
    if not keys:
        raise TLInputError(
            "model",
            "model has no cross-attention (attn2) layers; Textual Localization needs an SD1.x/SD2.x/SDXL UNet.",
            "connect the MODEL output of an SD1.x, SD2.x or SDXL checkpoint loader.",
        )
    existing = (
        model_patcher.model_options.get("transformer_options", {}).get("patches_replace", {}).get("attn2", {})
    )
    for key in keys:
        previous = existing.get(key, existing.get(key[:2]))
        model_patcher.set_model_attn2_replace(recorder.patch(key, previous), *key)
