"""What a training run hands to the Apply node: K/V deltas, token vectors and their metadata."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch


@dataclass(frozen=True, eq=False)
class TrainedWeights:
    kv_deltas: dict[str, torch.Tensor] = field(repr=False)  # model key (…attn2.to_k.weight) -> delta
    token_vectors: dict[str, dict[str, torch.Tensor]] = field(repr=False)  # token -> {clip_l: vector, …}
    metadata: dict[str, str]
    kv_path: Path | None = None
    embedding_paths: dict[str, Path] = field(default_factory=dict)

    @property
    def tokens(self) -> list[str]:
        return list(self.token_vectors)
