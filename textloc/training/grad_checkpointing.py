"""Activation checkpointing of the UNet's blocks for the duration of training.

Each input/middle/output block's forward is re-run during backward instead of keeping its
activations, trading about a third more compute for a large cut in memory. Attention maps are
taken from the first forward only (the recorder ignores the re-runs).
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


def _checkpointed(forward: Any, *args: Any, **kwargs: Any) -> Any:
    if not torch.is_grad_enabled():
        return forward(*args, **kwargs)
    return checkpoint(forward, *args, use_reentrant=False, **kwargs)


@contextmanager
def gradient_checkpointing(diffusion_model: nn.Module, enabled: bool = True) -> Iterator[None]:
    """Wrap the blocks' forwards (instance attributes only; the classes are not touched)."""
    if not enabled:
        yield
        return
    blocks = unet_blocks(diffusion_model)
    previous = [block.__dict__.get("forward") for block in blocks]
    for block in blocks:
        block.forward = partial(_checkpointed, block.forward)
    try:
        yield
    finally:
        for block, forward in zip(blocks, previous, strict=True):
            if forward is None:
                del block.forward
            else:
                block.forward = forward
