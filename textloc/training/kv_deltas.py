"""Trainable deltas for the cross-attention projections, attached as ComfyUI weight wrappers.

The base weights are never written: ComfyUI's cast_bias_weight calls each module's
`weight_function`s on the fly (W' = W + delta), so the model cached by the loader node stays
untouched and the same deltas later become plain "diff" patches.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from ..errors import TLInputError

ATTN2_PROJECTION = re.compile(r"(?:^|\.)attn2\.to_(q|k|v)$")


class WeightDelta(nn.Module):
    """W -> W + delta, with the move/memory hooks ComfyUI's ModelPatcher calls on wrappers."""

    def __init__(self, shape: torch.Size, device: torch.device | None = None) -> None:
        super().__init__()
        self.delta = nn.Parameter(torch.zeros(shape, dtype=torch.float32, device=device))

    def __call__(self, weight: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return weight + self.delta.to(weight.dtype)

    def passive_memory_usage(self) -> int:
        return self.delta.nelement() * self.delta.element_size()

    def move_to(self, device: torch.device) -> int:
        self.to(device=device)
        return self.passive_memory_usage()


def projection_module_names(diffusion_model: nn.Module, projections: Iterable[str] = ("k", "v")) -> list[str]:
    """Names (inside the UNet) of every attn2 to_q/to_k/to_v Linear asked for, in module order."""
    wanted = set(projections)
    names = []
    for name, module in diffusion_model.named_modules():
        match = ATTN2_PROJECTION.search(name)
        if match and match.group(1) in wanted and getattr(module, "weight", None) is not None:
            names.append(name)
    return names


def attach_deltas(model_patcher: Any, projections: Iterable[str] = ("k", "v")) -> dict[str, WeightDelta]:
    """Give every attn2 projection of a cloned ModelPatcher a zero delta; keys are model keys."""
    diffusion_model = model_patcher.model.diffusion_model
    names = projection_module_names(diffusion_model, projections)
    if not names:
        raise TLInputError(
            "model", "has no cross-attention (attn2) layers to train.",
            "connect an SD1.x, SD2.x or SDXL checkpoint (UNet models with text cross-attention).")
    modules = dict(diffusion_model.named_modules())
    deltas: dict[str, WeightDelta] = {}
    for name in names:
        weight = modules[name].weight
        key = f"diffusion_model.{name}.weight"
        delta = WeightDelta(weight.shape, device=weight.device)
        model_patcher.add_weight_wrapper(key, delta)
        deltas[key] = delta
    return deltas


def delta_tensors(deltas: dict[str, WeightDelta]) -> dict[str, torch.Tensor]:
    """Detached copies of the current deltas (model key -> tensor), for files and patches."""
    return {key: d.delta.detach().clone() for key, d in deltas.items()}


def as_diff_patches(tensors: dict[str, torch.Tensor]) -> dict[str, tuple[str, tuple[torch.Tensor]]]:
    """The form ModelPatcher.add_patches takes: W += strength * delta at load time."""
    return {key: ("diff", (tensor,)) for key, tensor in tensors.items()}
