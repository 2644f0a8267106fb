"""What a training run hands to the Apply node: K/V deltas, token vectors and their metadata."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

# Metadata keys that identify one training run; two files belong to the same run when all keys present
# in both agree (the trainer writes the same values into all of a run's files). Files from before
# `run_name` was recorded are told apart by the others.
RUN_KEYS = (
    "run_name", "tokens", "class_words", "init_words", "guidance", "attention_weight", "prior_weight", "steps",
    "learning_rate", "batch_size", "resolution", "seed", "prompt", "base_hash", "dataset",
)


def same_run(a: Mapping[str, str], b: Mapping[str, str], ignore: tuple[str, ...] = ()) -> bool:
    """True when the metadata of two files says one run wrote both (`ignore`: keys not compared)."""
    shared = [k for k in RUN_KEYS if k in a and k in b and k not in ignore]
    return bool(shared) and all(a[k] == b[k] for k in shared)


@dataclass(frozen=True, eq=False)
class TrainedWeights:
    kv_deltas: dict[str, torch.Tensor] = field(repr=False)  # model key (…attn2.to_k.weight) -> delta
    token_vectors: dict[str, dict[str, torch.Tensor]] = field(repr=False)  # token -> {clip_l: vector, …}
    metadata: dict[str, str]
    kv_path: Path | None = None
    embedding_paths: dict[str, Path] = field(default_factory=dict)
    # token -> what follows `embedding:` in a prompt for it (`tl_ball_run/tl_ball`); the token itself when absent
    embedding_names: dict[str, str] = field(default_factory=dict)

    @property
    def tokens(self) -> list[str]:
        return list(self.token_vectors)

    def embedding_name(self, token: str) -> str:
        return self.embedding_names.get(token, token)
