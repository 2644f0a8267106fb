"""Activation checkpointing of the UNet's layers for the duration of training.

Each layer of the input/middle/output blocks (res blocks, transformers, up/downsamplers) is re-run
during backward instead of keeping its activations, trading about a third more compute for a large
cut in memory. ComfyUI's UNet calls these layers one by one (`forward_timestep_embed`), never the
blocks' own forward, so the layers are what gets wrapped, as ComfyUI's own trainer does. Attention
maps are taken from the first forward only (the recorder ignores the re-runs).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint


def unet_blocks(diffusion_model: nn.Module) -> list[nn.Module]:
    """The UNet's top-level blocks (input_blocks[i], middle_block, output_blocks[i])."""
    blocks: list[nn.Module] = []
    for name in ("input_blocks", "output_blocks"):
        blocks.extend(getattr(diffusion_model, name, []))
    middle = getattr(diffusion_model, "middle_block", None)
    if middle is not None:
        blocks.append(middle)
    return blocks


def checkpointed_layers(diffusion_model: nn.Module) -> list[nn.Module]:
    """The modules ComfyUI's UNet calls one by one: each block's layers (a block that is no sequence: itself)."""
    layers: list[nn.Module] = []
    for block in unet_blocks(diffusion_model):
        layers.extend(block.children() if isinstance(block, nn.Sequential) else [block])
    return layers


def _snapshot(value: Any) -> Any:
    """ComfyUI passes one transformer_options dict through the whole UNet and moves its "block" entry
    on as it goes: a layer re-run during backward must see the entries of its first run."""
    return dict(value) if isinstance(value, dict) else value


def _checkpointed(forward: Any, *args: Any, **kwargs: Any) -> Any:
    if not torch.is_grad_enabled():
        return forward(*args, **kwargs)
    args = tuple(_snapshot(a) for a in args)
    kwargs = {k: _snapshot(v) for k, v in kwargs.items()}
    return checkpoint(forward, *args, use_reentrant=False, **kwargs)


@contextmanager
def gradient_checkpointing(diffusion_model: nn.Module, enabled: bool = True) -> Iterator[None]:
    """Wrap the layers' forwards (instance attributes only; the classes are not touched)."""
    if not enabled:
        yield
        return
    layers = checkpointed_layers(diffusion_model)
    previous = [layer.__dict__.get("forward") for layer in layers]
    for layer in layers:
        layer.forward = partial(_checkpointed, layer.forward)
    try:
        yield
    finally:
        for layer, forward in zip(layers, previous, strict=True):
            if forward is None:
                del layer.forward
            else:
                layer.forward = forward
