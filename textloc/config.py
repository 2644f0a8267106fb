"""Training settings, with the authors' defaults resolved from the number of concepts.

"0 = auto" inputs follow the released training scripts: batch 2 / 3, 400 / 800 steps,
checkpoints every 50 / 100 steps, and the learning rate their --scale_lr gives on one GPU
(1e-5 x batch x 2 with prior preservation: 4e-5 for one concept, 6e-5 for two).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Literal

from .errors import TLInputError

Guidance = Literal["hard", "soft", "none"]
Precision = Literal["auto", "fp32", "bf16", "fp16"]
Checkpointing = Literal["auto", "on", "off"]
EmbeddingName = Literal["run/token", "token (overwrite)"]
CHECKPOINTING_MODES: tuple[str, ...] = ("auto", "on", "off")
# "auto" turns activation checkpointing on for GPUs smaller than this (SD1.5 at 512 px with the
# default batch needs it to fit in 8 GB) and for SDXL-sized UNets everywhere but the CPU.
CHECKPOINTING_BELOW_BYTES = 16 * 1024**3
GUIDANCE_MODES: tuple[str, ...] = ("hard", "soft", "none")
DENOISE_REGIONS: tuple[str, ...] = ("whole photo", "concepts and background", "concepts only")
PRECISIONS: tuple[str, ...] = ("auto", "fp32", "bf16", "fp16")
# How a prompt names a run's token. "run/token": `embedding:<run>/<token>`, a file of the run's own, so
# no run replaces another's. "token (overwrite)": also `embedding:<token>`, the one file every run of
# that token name shares, which the run replaces: the user asks for that by choosing it.
EMBEDDING_PER_RUN = "run/token"
EMBEDDING_SHARED = "token (overwrite)"
EMBEDDING_NAMES: tuple[str, ...] = (EMBEDDING_PER_RUN, EMBEDDING_SHARED)
BASE_LEARNING_RATE = 1e-5
DEFAULT_PROMPT = "photo of {concepts}"
DEFAULT_CONCEPT_PHRASE = "a {token} {class}"
TOKEN_MAX_LENGTH = 64  # a token becomes a file name and `embedding:NAME` in prompts


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
    lora_rank: int = 0  # also write the K/V deltas as a standard LoRA of this rank; 0: none
    embedding_name: EmbeddingName = EMBEDDING_PER_RUN
    denoise_region: str = "whole photo"  # where the instance loss looks: see losses.denoise_weights
    # Also train the class images with the empty prompt: the unconditional prediction classifier-free
    # guidance subtracts is then held where it was (the K/V deltas reach the empty prompt too).
    prior_empty_prompt: bool = False

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
        if self.lora_rank < 0:
            raise TLInputError("lora_rank", f"{self.lora_rank} is not a rank.",
                               "use 0 for no LoRA file, or a rank such as 16.")
        if self.denoise_region not in DENOISE_REGIONS:
            raise TLInputError("denoise_region", f"'{self.denoise_region}' is unknown.",
                               f"choose one of {', '.join(DENOISE_REGIONS)}.")
        if self.precision not in PRECISIONS:
            raise TLInputError("precision", f"'{self.precision}' is unknown.",
                               f"choose one of {', '.join(PRECISIONS)}.")
        if self.embedding_name not in EMBEDDING_NAMES:
            raise TLInputError("embedding_name", f"'{self.embedding_name}' is not a way to name the token.",
                               f"choose one of {', '.join(EMBEDDING_NAMES)}.")


# How ComfyUI stores the training node's widgets. The node keeps the settings an artist changes; the
# expert ones live on TL Training Options. Workflows saved with the first, all-on-one-node layout are
# mapped over by position (web/js/train_node_layout.js in the editor, headless.workflow_migration for
# the headless runner); API prompts with the old input names are read by the node itself.
TRAIN_NODE_WIDGETS: tuple[str, ...] = ("guidance", "steps", "output_name", "resume")
TRAINING_OPTIONS_WIDGETS: tuple[str, ...] = (
    "attention_weight", "learning_rate", "batch_size", "prior_weight", "seed", "checkpoint_every", "precision",
    "gradient_checkpointing", "train_token", "train_q", "prompt", "concept_phrase", "weight_decay", "grad_clip",
    "preview_every", "attention_size", "lora_rank", "embedding_name", "denoise_region",
    "prior_empty_prompt")
LEGACY_TRAIN_NODE_WIDGETS: tuple[str, ...] = (
    "guidance", "attention_weight", "steps", "learning_rate", "batch_size", "prior_weight", "seed",
    "checkpoint_every", "output_name", "resume", "precision", "gradient_checkpointing", "train_token", "train_q",
    "prompt", "concept_phrase", "weight_decay", "grad_clip", "preview_every", "attention_size")


@dataclass(frozen=True)
class WidgetRule:
    """What one widget of TL Training Options accepts, as ComfyUI checks a widget's value: its type, its
    range (numbers) or its list (dropdowns). Values mapped over from an older prompt get the same checks."""

    kind: str  # "INT", "FLOAT", "STRING", "BOOLEAN" or "COMBO"
    minimum: float | None = None
    maximum: float | None = None
    options: tuple[str, ...] = ()


_CONVERTERS = {"INT": int, "FLOAT": float, "STRING": str, "BOOLEAN": bool}  # as ComfyUI converts widget values
_KIND_WORDS = {"INT": "a whole number", "FLOAT": "a number"}  # the kinds whose conversion can fail
_OLD_PROMPT = "from an older prompt (set on the training node itself)"
_OLD_PROMPT_FIX = "or move the setting to a TL Training Options node."


def _allowed_range(rule: WidgetRule) -> str:
    if rule.minimum is not None and rule.maximum is not None:
        return f"from {rule.minimum} to {rule.maximum}"
    return f"of at least {rule.minimum}" if rule.minimum is not None else f"of at most {rule.maximum}"


def _check_old_prompt_value(name: str, value: object, rule: WidgetRule) -> object:
    """`value` converted to the widget's type; refused, naming the input, where the widget would refuse it."""
    if rule.kind == "COMBO":
        if value not in rule.options:
            raise TLInputError(name, f"'{value}' {_OLD_PROMPT} is not one of its choices.",
                               f"choose one of {', '.join(rule.options)}, {_OLD_PROMPT_FIX}")
        return value
    try:
        converted = _CONVERTERS[rule.kind](value)
    except (TypeError, ValueError, OverflowError):
        raise TLInputError(name, f"'{value}' {_OLD_PROMPT} is not {_KIND_WORDS.get(rule.kind, rule.kind)}.",
                           f"fix the value, {_OLD_PROMPT_FIX}") from None
    if rule.minimum is not None and not converted >= rule.minimum:  # `not >=` also refuses NaN
        raise TLInputError(name, f"{converted} {_OLD_PROMPT} is below TL Training Options' minimum of "
                           f"{rule.minimum}.", f"use a value {_allowed_range(rule)}, {_OLD_PROMPT_FIX}")
    if rule.maximum is not None and not converted <= rule.maximum:
        raise TLInputError(name, f"{converted} {_OLD_PROMPT} is above TL Training Options' maximum of "
                           f"{rule.maximum}.", f"use a value {_allowed_range(rule)}, {_OLD_PROMPT_FIX}")
    return converted


def legacy_settings(node_inputs: dict[str, object], rules: Mapping[str, WidgetRule]) -> dict[str, object]:
    """The expert settings an API prompt of the old layout gives the training node itself.

    Those prompts name them as the node's own inputs, which ComfyUI does not check (the node no longer
    declares them), so each value gets the checks of its TL Training Options widget (`rules`) here.
    """
    settings: dict[str, object] = {}
    for name in TRAINING_OPTIONS_WIDGETS:
        if name not in node_inputs or isinstance(node_inputs[name], list):  # a list is a link: not a value
            continue
        settings[name] = _check_old_prompt_value(name, node_inputs[name], rules[name])
    return settings


def _expand(prompt: str, concept_phrase: str, concepts: Sequence[tuple[str, str]]) -> str:
    phrases = [concept_phrase.replace("{token}", word).replace("{class}", cls) for word, cls in concepts]
    return prompt.replace("{concepts}", " and ".join(phrases))


def instance_prompt(config: TrainConfig, concepts: Sequence[tuple[str, str]]) -> str:
    """'photo of a <w1> ball and a <w2> box' from (token, class) pairs, in concept order.

    Refuses a token that the rest of the prompt also spells (see `check_token_clashes`).
    """
    check_token_clashes(concepts, config.prompt, config.concept_phrase)
    return _expand(config.prompt, config.concept_phrase, concepts)


_WORD = re.compile(r"\w+")


def prompt_words(text: str) -> list[str]:
    """The runs of letters, digits and '_' in `text`: what a token name could collide with."""
    return _WORD.findall(text)


def suggest_token(token: str, taken: Sequence[str]) -> str:
    """A valid token name that clashes with none of `taken`, e.g. tl_ball for 'ball'.

    It stays within TOKEN_MAX_LENGTH: the prefix and any counter take the place of the name's end.
    """
    base = token if token.lower().startswith("tl_") else f"tl_{token}"
    candidate, counter = base[:TOKEN_MAX_LENGTH], 2
    while any(_clash(candidate, word) for word in taken):
        suffix = f"_{counter}"
        candidate, counter = base[:TOKEN_MAX_LENGTH - len(suffix)] + suffix, counter + 1
    return candidate


def _clash(token: str, word: str) -> str | None:
    """How `token` collides with `word`: CLIP lowercases, so equal words clash whatever their case;
    the trainer puts the vector on every place the token's text occurs, so a word holding it clashes too."""
    if token.lower() == word.lower():
        return "equals"
    if token in word:
        return "is part of"
    return None


def check_token_clashes(concepts: Sequence[tuple[str, str]], prompt: str | None = None,
                        concept_phrase: str | None = None) -> None:
    """Refuse a token that another part of the training prompt also spells.

    The trainer replaces every occurrence of a token's text by the trainable vector and puts the
    attention loss on the first, so a token equal to its class word ('ball' for class 'ball'), to
    another concept's token or class word, or to a word of the prompt template ('photo') would train
    and localize the wrong word. Only the concept's own {token} slot may hold it. `concepts` are
    (token, class word) pairs. Without `prompt` (Mask Target, where the trainer's prompt is not yet
    known) only the concepts' tokens and class words are compared.
    """
    template = DEFAULT_PROMPT if prompt is None else prompt
    phrase = DEFAULT_CONCEPT_PHRASE if concept_phrase is None else concept_phrase
    expanded = _expand(template, phrase, concepts)
    shown = f"the default training prompt '{expanded}'" if prompt is None else f"the training prompt '{expanded}'"
    # (word, how to name it, whether it belongs to the prompt template) for every word that is not a token slot
    fixed: list[tuple[str, str, bool]] = []
    if prompt is not None:
        fixed += [(w, f"'{w}' in the prompt '{template}'", True)
                  for w in prompt_words(template.replace("{concepts}", " "))]
        fixed += [(w, f"'{w}' in the concept_phrase '{phrase}'", True)
                  for w in prompt_words(phrase.replace("{token}", " ").replace("{class}", " "))]
    taken = [w for t, c in concepts for w in (t, *prompt_words(c))] + [w for w, _, _ in fixed]
    for index, (token, class_word) in enumerate(concepts):
        others = [concept for i, concept in enumerate(concepts) if i != index]
        # the later of two equal tokens is the one to rename
        places = [(t, f"'{t}', the token of another concept", False)
                  for t, _ in concepts[:index] if t.lower() == token.lower()]
        places += [(w, f"'{w}' in its class word '{class_word}'", False) for w in prompt_words(class_word)]
        places += [(w, f"'{w}' in the class word '{c}' of the concept '{t}'", False)
                   for t, c in others for w in prompt_words(c)]
        for word, described, in_template in places + fixed:
            relation = _clash(token, word)
            if relation is None:
                continue
            also = f", or take '{word}' out of the prompt" if in_template else ""
            raise TLInputError(
                "token",
                f"'{token}' {relation} {described}, so {shown} spells it more than once: every occurrence "
                "would become the learned vector and the attention loss would land on the wrong word. Only "
                "the concept's own place in the prompt may hold its token.",
                f"rename the token, e.g. {suggest_token(token, taken)}{also}.",
            )


def use_checkpointing(mode: str, device_type: str, device_memory_bytes: int, unet_parameters: int) -> bool:
    """Resolve "auto": on for GPUs under 16 GB and for SDXL-sized UNets (over 2e9 parameters) on GPUs."""
    if mode != "auto":
        return mode == "on"
    if device_type == "cpu":
        return False
    return device_memory_bytes < CHECKPOINTING_BELOW_BYTES or unet_parameters > 2_000_000_000
