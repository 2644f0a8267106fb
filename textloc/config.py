"""Training settings, with the authors' defaults resolved from the number of concepts.

"0 = auto" inputs follow the released training scripts: batch 2 / 3, 400 / 800 steps,
checkpoints every 50 / 100 steps, and the learning rate their --scale_lr gives on one GPU
(1e-5 x batch x 2 with prior preservation: 4e-5 for one concept, 6e-5 for two).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from .errors import TLInputError

Guidance = Literal["hard", "soft", "none"]
Precision = Literal["auto", "fp32", "bf16", "fp16"]
Checkpointing = Literal["auto", "on", "off"]
CHECKPOINTING_MODES: tuple[str, ...] = ("auto", "on", "off")
# "auto" turns activation checkpointing on for GPUs smaller than this (SD1.5 at 512 px with the
# default batch needs it to fit in 8 GB) and for SDXL-sized UNets everywhere but the CPU.
CHECKPOINTING_BELOW_BYTES = 16 * 1024**3
GUIDANCE_MODES: tuple[str, ...] = ("hard", "soft", "none")
PRECISIONS: tuple[str, ...] = ("auto", "fp32", "bf16", "fp16")
BASE_LEARNING_RATE = 1e-5
DEFAULT_PROMPT = "photo of {concepts}"
DEFAULT_CONCEPT_PHRASE = "a {token} {class}"


@dataclass(frozen=True)
class TrainConfig:
    guidance: Guidance = "hard"
    attention_weight: float = 1.0
    prior_weight: float = 1.0
    steps: int = 0
    learning_rate: float = 0.0
    batch_size: int = 0
    checkpoint_every: int = 0
    seed: int = 42
    weight_decay: float = 1e-2
    grad_clip: float = 1.0
    train_token: bool = True
    train_q: bool = False
    prompt: str = DEFAULT_PROMPT
    concept_phrase: str = DEFAULT_CONCEPT_PHRASE
    precision: Precision = "auto"
    gradient_checkpointing: Checkpointing = "auto"
    attention_size: int = 0
    preview_every: int = 10

    def resolved(self, num_concepts: int, with_prior: bool, resolution: int) -> TrainConfig:
        """Fill every "0 = auto" field with the authors' value for this many concepts."""
        if num_concepts < 1:
            raise TLInputError("dataset", "defines no target concept.",
                               "add a Mask Target node between the dataset loader and the trainer.")
        batch = self.batch_size or 1 + num_concepts
        return replace(
            self,
            batch_size=batch,
            steps=self.steps or 400 * num_concepts,
            checkpoint_every=self.checkpoint_every or 50 * num_concepts,
            learning_rate=self.learning_rate or BASE_LEARNING_RATE * batch * (2 if with_prior else 1),
            attention_size=self.attention_size or min(256, resolution // 2),
        )

    def validate(self) -> None:
        if self.guidance not in GUIDANCE_MODES:
            raise TLInputError("guidance", f"'{self.guidance}' is not a guidance mode.",
                               f"choose one of {', '.join(GUIDANCE_MODES)}.")
        if "{concepts}" not in self.prompt:
            raise TLInputError("prompt", f"'{self.prompt}' has no {{concepts}} placeholder.",
                               f"write it like '{DEFAULT_PROMPT}'.")
        for field_name in ("{token}", "{class}"):
            if field_name not in self.concept_phrase:
                raise TLInputError("concept_phrase", f"'{self.concept_phrase}' has no {field_name}.",
                                   f"write it like '{DEFAULT_CONCEPT_PHRASE}'.")
        if self.gradient_checkpointing not in CHECKPOINTING_MODES:
            raise TLInputError("gradient_checkpointing", f"'{self.gradient_checkpointing}' is unknown.",
                               f"choose one of {', '.join(CHECKPOINTING_MODES)}.")
        if self.precision not in PRECISIONS:
            raise TLInputError("precision", f"'{self.precision}' is unknown.",
                               f"choose one of {', '.join(PRECISIONS)}.")


def instance_prompt(config: TrainConfig, concepts: list[tuple[str, str]]) -> str:
    """'photo of a <w1> ball and a <w2> box' from (word, class) pairs, in concept order."""
    phrases = [config.concept_phrase.replace("{token}", word).replace("{class}", cls)
               for word, cls in concepts]
    return config.prompt.replace("{concepts}", " and ".join(phrases))


def use_checkpointing(mode: str, device_type: str, device_memory_bytes: int, unet_parameters: int) -> bool:
    """Resolve "auto": on for GPUs under 16 GB and for SDXL-sized UNets (over 2e9 parameters) on GPUs."""
    if mode != "auto":
        return mode == "on"
    if device_type == "cpu":
        return False
    return device_memory_bytes < CHECKPOINTING_BELOW_BYTES or unet_parameters > 2_000_000_000
