"""Where do words look while an image is sampled? Cross-attention maps per word, DAAM style.

The maps come from the same AttentionRecorder the trainer uses (textloc.attention.capture), installed on a
clone of the model for the duration of one sampling run, so the MODEL other nodes use never carries
the hook. Only the conditional rows of ComfyUI's CFG batch are recorded (`cond_rows`): the negative
prompt's attention would otherwise be mixed in.

Aggregation: an `apply_model` wrapper (ComfyUI's WrappersMP.APPLY_MODEL, chained with any other
pack's wrappers) starts a fresh recorder step before every model call whose sigma lies in the chosen
timestep range and adds that call's maps to a running sum per layer. At the end: mean over calls
per layer, mean over the layers of each chosen resolution, bilinear upsampling to the image size,
mean over the resolutions, then the mean over a word's tokens. The values are attention
probabilities (each pixel's attention over the prompt's tokens sums to 1), until normalised.

Words: a comma-separated list. A plain word (or several, "tennis racket") is looked up as its token
sequence in the tokenized prompt, every occurrence counts; a word that BPE splits into several
tokens gets the mean of its tokens. `embedding:NAME` is located by its vectors, so a learned token
is found whichever tokenizer resolved it (file or memory).

No ComfyUI import: the model, CLIP and VAE are used through their public methods, sampling arrives
as a callable from the node.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import TLInputError
from ..training.losses import default_resolutions
from ..training.token_embedding import same_entry, token_entries, word_token_entries
from .capture import AttentionRecord, AttentionRecorder, CaptureSpec, LayerKey, cond_rows, install_recorder
from .heatmap import overlay

EMBEDDING_PREFIX = "embedding:"
APPLY_MODEL_WRAPPER = "apply_model"  # comfy.patcher_extension.WrappersMP.APPLY_MODEL
WRAPPER_KEY = "textual_localization.token_attention"
NORMALIZATIONS: tuple[str, ...] = ("per word", "across words", "none")
RESOLUTIONS_AUTO = "auto"
RESOLUTIONS_ALL = "all"

SampleFn = Callable[[Any, list, list, dict], dict]
"""(model, positive, negative, latent) -> latent after sampling, e.g. nodes.common_ksampler bound to its settings."""


# ---------------------------------------------------------------------------------------------- words


@dataclass(frozen=True)
class WordTokens:
    """One requested word and the conditioning positions (attention columns) it covers."""

    word: str
    positions: tuple[int, ...]


def parse_words(text: str) -> list[str]:
    """'embedding:tl_ball, ball ,tennis racket' -> ['embedding:tl_ball', 'ball', 'tennis racket']."""
    words = [w.strip() for w in text.split(",")]
    words = [w for w in words if w]
    if not words:
        raise TLInputError("words", "is empty.", "list the words to show, separated by commas, e.g. 'embedding:tl_ball, ball'.")
    return words


def _occurrences(sequence: list[Any], pattern: list[Any]) -> list[int]:
    """Every position covered by an occurrence of `pattern` in `sequence`."""
    found: list[int] = []
    for start in range(len(sequence) - len(pattern) + 1):
        if all(same_entry(sequence[start + i], p) for i, p in enumerate(pattern)):
            found.extend(range(start, start + len(pattern)))
    return sorted(set(found))


def locate_words(clip: Any, prompt: str, words: Sequence[str]) -> list[WordTokens]:
    """The attention columns of each word in `prompt`, as ComfyUI's tokenizer lays the prompt out."""
    prompt_entries = token_entries(clip.tokenize(prompt, return_word_ids=True))
    key = next(iter(prompt_entries))  # all branches share one layout (SDXL: l and g)
    located = []
    for word in words:
        pattern = word_token_entries(clip, word)[key]
        if word.startswith(EMBEDDING_PREFIX):
            pattern = [e for e in pattern if torch.is_tensor(e)]
            if not pattern:
                raise TLInputError(
                    "words",
                    f"'{word}' is not an embedding ComfyUI can find.",
                    "check the name (Apply TL Weights' trigger output shows it) or connect the CLIP from Apply TL Weights.",
                )
        if not pattern:
            raise TLInputError("words", f"'{word}' has no tokens.", "list real words from the prompt.")
        positions = _occurrences(prompt_entries[key], pattern)
        if not positions:
            raise TLInputError(
                "words",
                f"'{word}' does not occur in the prompt '{prompt}'.",
                "list only words (or embedding:NAME tokens) that the prompt contains.",
            )
        located.append(WordTokens(word=word, positions=tuple(positions)))
    return located


# ---------------------------------------------------------------------------------------------- options


def choose_resolutions(option: str, available: Sequence[int]) -> list[int]:
    """'auto' (every level but the finest, like the trainer), 'all', or map sizes like '16,8'."""
    sizes = sorted(set(available), reverse=True)
    text = option.strip().lower()
    if text in ("", RESOLUTIONS_AUTO):
        return default_resolutions(sizes)
    if text == RESOLUTIONS_ALL:
        return sizes
    try:
        wanted = sorted({int(part) for part in text.split(",") if part.strip()}, reverse=True)
    except ValueError:
        wanted = []
    missing = [s for s in wanted if s not in sizes]
    if not wanted or missing:
        raise TLInputError(
            "resolutions",
            f"'{option}' does not name recorded map sizes; this image gave {', '.join(map(str, sizes))}.",
            "write auto, all, or some of those sizes separated by commas.",
        )
    return wanted


def check_timestep_range(start_percent: float, end_percent: float) -> None:
    if not 0.0 <= start_percent < end_percent <= 1.0:
        raise TLInputError(
            "start_percent/end_percent",
            f"{start_percent} to {end_percent} is not a range within 0..1.",
            "use start_percent < end_percent, e.g. 0.0 and 1.0 for the whole run.",
        )


# ---------------------------------------------------------------------------------------------- recording


def _no_rows(batch_size: int, extra_options: dict) -> torch.Tensor:
    return torch.zeros(0, dtype=torch.long)


@dataclass
class AttentionAccumulator:
    """Sums one sampling run's cond-row maps per layer, over every model call in a sigma range."""

    columns: list[int]
    sigma_high: float = float("inf")
    sigma_low: float = 0.0
    recorder: AttentionRecorder = field(init=False)
    calls: int = 0
    _sums: dict[LayerKey, torch.Tensor] = field(default_factory=dict)
    _counts: dict[LayerKey, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        spec = CaptureSpec(columns=torch.tensor([self.columns], dtype=torch.long), rows=cond_rows,
                           keep_graph=False, store_device="cpu")
        self.recorder = AttentionRecorder(spec)

    def reset(self) -> None:
        """Forget the sums, so one hooked clone can record several runs (one per photo) in turn."""
        self.calls = 0
        self._sums = {}
        self._counts = {}

    def install(self, model_patcher: Any) -> None:
        """Hook a ModelPatcher clone: the recorder on every attn2 layer, the wrapper around apply_model."""
        install_recorder(model_patcher, self.recorder)
        model_patcher.add_wrapper_with_key(APPLY_MODEL_WRAPPER, WRAPPER_KEY, self._apply_model)

    def in_range(self, sigma: torch.Tensor | float) -> bool:
        value = float(sigma.flatten()[0]) if torch.is_tensor(sigma) else float(sigma)
        return self.sigma_low <= value <= self.sigma_high

    def _apply_model(self, executor: Callable[..., torch.Tensor], *args: Any, **kwargs: Any) -> torch.Tensor:
        sigma = args[1] if len(args) > 1 else kwargs["t"]
        active = self.in_range(sigma)
        self.recorder.spec.rows = cond_rows if active else _no_rows
        self.recorder.begin_step()
        out = executor(*args, **kwargs)
        if active:
            self.add(self.recorder.records())
        return out

    def add(self, records: Sequence[AttentionRecord]) -> None:
        """Add one model call's maps ([R, C, h, w] per layer)."""
        if records:
            self.calls += 1
        for record in records:
            key = record.layer_key
            if key in self._sums and self._sums[key].shape != record.maps.shape:
                raise RuntimeError(f"layer {key}: map shape changed from {tuple(self._sums[key].shape)} "
                                   f"to {tuple(record.maps.shape)} during one run")
            self._sums[key] = self._sums.get(key, 0) + record.maps.float()
            self._counts[key] = self._counts.get(key, 0) + 1

    def layer_means(self) -> list[AttentionRecord]:
        """Per layer, the mean map over the recorded calls."""
        return [AttentionRecord(key, s.shape[-2], s.shape[-1], s / self._counts[key]) for key, s in self._sums.items()]


# ---------------------------------------------------------------------------------------------- maps


def column_maps(records: Sequence[AttentionRecord], resolutions: Sequence[int], size: tuple[int, int]) -> torch.Tensor:
    """[R, C, H, W]: per resolution the mean over its layers, upsampled; then the mean over resolutions."""
    per_resolution = []
    for height in resolutions:
        maps = [r.maps for r in records if r.height == height]
        if not maps:
            raise ValueError(f"no maps recorded at resolution {height}")
        mean = torch.stack(maps).mean(dim=0)
        per_resolution.append(F.interpolate(mean, size=size, mode="bilinear", align_corners=False))
    return torch.stack(per_resolution).mean(dim=0)


def word_maps(columns_maps: torch.Tensor, columns: Sequence[int], words: Sequence[WordTokens]) -> torch.Tensor:
    """[R, C, H, W] per column -> [R, words, H, W], each word the mean over its tokens."""
    index = {c: i for i, c in enumerate(columns)}
    return torch.stack(
        [columns_maps[:, [index[p] for p in w.positions]].mean(dim=1) for w in words], dim=1
    )


def check_normalization(mode: str) -> None:
    if mode not in NORMALIZATIONS:
        raise TLInputError("normalization", f"'{mode}' is unknown.", f"choose one of {', '.join(NORMALIZATIONS)}.")


def normalize_maps(maps: torch.Tensor, mode: str, eps: float = 1e-8) -> torch.Tensor:
    """[R, words, H, W] -> 0..1. 'per word': each map min-max; 'across words': one min-max per image,
    so words stay comparable; 'none': the raw attention probabilities."""
    check_normalization(mode)
    if mode == "per word":
        low = maps.amin(dim=(-2, -1), keepdim=True)
        high = maps.amax(dim=(-2, -1), keepdim=True)
    elif mode == "across words":
        low = maps.amin(dim=(-3, -2, -1), keepdim=True)
        high = maps.amax(dim=(-3, -2, -1), keepdim=True)
    else:
        return maps.clamp(0.0, 1.0)
    return ((maps - low) / (high - low + eps)).clamp(0.0, 1.0)


# ---------------------------------------------------------------------------------------------- the run


@dataclass
class TokenAttention:
    images: torch.Tensor  # IMAGE [B, H, W, 3]
    maps: torch.Tensor  # [B, words, H, W], normalised
    words: list[WordTokens]
    resolutions: list[int]
    calls: int  # model calls recorded

    @property
    def masks(self) -> torch.Tensor:
        """MASK [B * words, H, W], image-major: image 0's words, then image 1's ..."""
        return self.maps.reshape(-1, *self.maps.shape[-2:])

    def overlays(self, alpha: float = 0.55) -> torch.Tensor:
        """IMAGE [B * words, H, W, 3] in the same order as `masks`."""
        count = len(self.words)
        return overlay(self.images.repeat_interleave(count, dim=0), self.masks, alpha)


def encode_prompt(clip: Any, text: str) -> list:
    """CONDITIONING exactly as CLIPTextEncode builds it."""
    return clip.encode_from_tokens_scheduled(clip.tokenize(text))


def sigma_range(model: Any, start_percent: float, end_percent: float) -> tuple[float, float]:
    """(high, low) sigma of a start/end percent of the schedule, as ComfyUI's timestep ranges count it."""
    sampling = model.get_model_object("model_sampling")
    return float(sampling.percent_to_sigma(start_percent)), float(sampling.percent_to_sigma(end_percent))


def show_token_attention(
    model: Any,
    clip: Any,
    vae: Any,
    prompt: str,
    negative: str,
    words: str,
    latent: dict,
    sample: SampleFn,
    resolutions: str = RESOLUTIONS_AUTO,
    start_percent: float = 0.0,
    end_percent: float = 1.0,
    normalization: str = "per word",
) -> TokenAttention:
    """Sample `latent` with `sample` on a hooked clone of `model`; return images and per-word maps.

    The images equal a plain run's up to rounding: captured layers compute their attention explicitly
    in fp32 (fused kernels never expose the probabilities).
    """
    check_timestep_range(start_percent, end_percent)
    check_normalization(normalization)
    located = locate_words(clip, prompt, parse_words(words))
    columns = sorted({p for w in located for p in w.positions})
    high, low = sigma_range(model, start_percent, end_percent)
    accumulator = AttentionAccumulator(columns, sigma_high=high, sigma_low=low)
    hooked = model.clone()
    accumulator.install(hooked)
    out = sample(hooked, encode_prompt(clip, prompt), encode_prompt(clip, negative), latent)
    images = vae.decode(out["samples"])
    records = accumulator.layer_means()
    if not records:
        raise TLInputError(
            "start_percent/end_percent",
            f"no sampling step fell between {start_percent} and {end_percent} of the schedule.",
            "widen the range (0.0 to 1.0 records every step).",
        )
    chosen = choose_resolutions(resolutions, [r.height for r in records])
    per_column = column_maps(records, chosen, (images.shape[1], images.shape[2]))
    maps = normalize_maps(word_maps(per_column, columns, located), normalization)
    if maps.shape[0] != images.shape[0]:
        raise RuntimeError(f"recorded {maps.shape[0]} conditional rows for {images.shape[0]} images")
    return TokenAttention(images=images, maps=maps, words=located, resolutions=chosen, calls=accumulator.calls)
