"""Train a new identifier token's embedding through ComfyUI's own text encoder, without editing ComfyUI.

The CLIP object comes from ComfyUI and is used by duck typing only (this module never imports ComfyUI):
- `clip.tokenize(text, return_word_ids=True)` returns {branch: [chunk, ...]}, each chunk a list of
  `(token, weight, word_id)` entries; the branch keys are "l" (SD1.x), "h" (SD2.x), "l" and "g" (SDXL).
- A token entry may be a tensor instead of an int: ComfyUI's `process_tokens` then splices that vector
  into the token embeddings with `torch.cat`, so gradients flow back into it. A trainable vector is
  therefore trained simply by putting its `nn.Parameter` into the token list.
- Each branch has a tokenizer `clip.tokenizer.clip_<key>` whose `embedding_key` ("clip_l", "clip_g",
  "clip_h") is the key ComfyUI reads from an embedding file, and an encoder
  `clip.cond_stage_model.clip_<key>` whose `transformer.get_input_embeddings()` is the token table.

How ComfyUI numbers word ids (comfy/sd1_clip.py `SDTokenizer.tokenize_with_weights`, 0.3.75): the prompt
is first split into weight segments (`(text:1.2)` groups) and at `embedding:NAME` references; each
resulting piece is tokenized as one group, and every token of group i gets word id i + 1 (start, end
and padding tokens get 0). A plain prompt such as "photo of a sks doll" is ONE group, so every one of
its words has word id 1: word ids do not locate a single plain word. `build_prompt_tokens` therefore
finds the identifier's positions by tokenizing the prompt a second time with a different single-token
word in its place and comparing; this also proves that the identifier stands as its own token.

Conditioning positions: a branch's chunks (77 tokens each for CLIP) are encoded separately and
concatenated along the sequence, so position p of chunk c is position (sum of earlier chunk lengths) + p
of the conditioning. A single-vector embedding replaces exactly one token, so splicing it moves nothing.
"""

from __future__ import annotations

import re
import types
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..errors import TLInputError

Tokens = dict[str, list[list[tuple]]]

# Single-token words tried, in order, as the stand-in that reveals where an identifier sits.
PROBE_WORDS = ("dog", "cat", "car", "tree", "house")
LAYER_CLASS_NAME = "CLIPLayer"
_BAD_INIT_WORD = re.compile(r"[\s()\\:]")


# ---------------------------------------------------------------------------------------------- positions


def _chunk_offsets(chunks: list[list[tuple]]) -> list[int]:
    """Start of each chunk in the concatenated conditioning."""
    offsets, total = [], 0
    for chunk in chunks:
        offsets.append(total)
        total += len(chunk)
    return offsets


def find_word_positions(tokens: Mapping[str, list[list[tuple]]], word_index: int) -> dict[str, list[int]]:
    """Conditioning positions, per branch, of the tokens ComfyUI gave word id `word_index`.

    `tokens` must come from `clip.tokenize(text, return_word_ids=True)`. Positions count across chunks
    (see the module docstring). Word ids number weight segments and embeddings, not plain words.
    """
    out: dict[str, list[int]] = {}
    for key, chunks in tokens.items():
        positions = []
        for offset, chunk in zip(_chunk_offsets(chunks), chunks, strict=True):
            for index, entry in enumerate(chunk):
                if len(entry) < 3:
                    raise ValueError("tokens carry no word ids: tokenize with return_word_ids=True")
                if entry[2] == word_index:
                    positions.append(offset + index)
        out[key] = positions
    return out


def find_embedding_positions(tokens: Mapping[str, list[list[tuple]]]) -> dict[str, list[int]]:
    """Conditioning positions, per branch, of entries that are vectors (e.g. from `embedding:NAME`).

    Valid for single-vector embeddings, whose splice does not shift later tokens.
    """
    out: dict[str, list[int]] = {}
    for key, chunks in tokens.items():
        out[key] = [
            offset + index
            for offset, chunk in zip(_chunk_offsets(chunks), chunks, strict=True)
            for index, entry in enumerate(chunk)
            if torch.is_tensor(entry[0])
        ]
    return out


def token_entries(tokens: Mapping[str, list[list[tuple]]]) -> dict[str, list[Any]]:
    """Flatten each branch to its sequence of token entries (ints or tensors)."""
    return {key: [entry[0] for chunk in chunks for entry in chunk] for key, chunks in tokens.items()}


def word_token_entries(clip: Any, word: str) -> dict[str, list[Any]]:
    """The tokens (start, end and padding removed) that `word` becomes in each branch."""
    tokens = clip.tokenize(word, return_word_ids=True)
    return {key: [e[0] for chunk in chunks for e in chunk if e[2] != 0] for key, chunks in tokens.items()}


def single_token_ids(clip: Any, word: str) -> dict[str, int]:
    """The one token id `word` is in every branch, or a TLInputError naming the word."""
    fix = "choose a single-token word such as 'sks'."
    if not word or _BAD_INIT_WORD.search(word) or word.startswith("embedding:"):
        raise TLInputError("init word", f"'{word}' must be one plain word (no spaces, brackets or ':').", fix)
    ids: dict[str, int] = {}
    for key, found in word_token_entries(clip, word).items():
        if len(found) != 1 or not isinstance(found[0], int):
            raise TLInputError("init word", f"'{word}' is {len(found)} tokens for text encoder '{key}'.", fix)
        ids[key] = found[0]
    return ids


# ---------------------------------------------------------------------------------------------- branches


@dataclass(frozen=True)
class Branch:
    """One text encoder of a CLIP object: its tokenize key, embedding-file key and encoder module."""

    key: str
    file_key: str
    encoder: Any


def text_encoder_branches(clip: Any) -> dict[str, Branch]:
    """Map each tokenize key ("l", "g", "h") to the embedding-file key and encoder ComfyUI pairs with it."""
    branches: dict[str, Branch] = {}
    for key in clip.tokenize("", return_word_ids=True):
        attr = next((a for a in (f"clip_{key}", key) if hasattr(clip.tokenizer, a)), None)
        encoder = getattr(clip.cond_stage_model, attr, None) if attr else None
        if attr is None or encoder is None or not hasattr(encoder, "transformer"):
            raise TLInputError(
                "CLIP",
                f"text encoder branch '{key}' is not a CLIP text encoder this pack can train.",
                "use an SD1.x, SD2.x or SDXL checkpoint.",
            )
        file_key = getattr(getattr(clip.tokenizer, attr), "embedding_key", attr)
        branches[key] = Branch(key=key, file_key=file_key, encoder=encoder)
    return branches


def _embedding_row(encoder: Any, token_id: int, device: torch.device | str) -> torch.Tensor:
    """A detached fp32 copy of one row of the encoder's input embedding table."""
    table = encoder.transformer.get_input_embeddings().weight
    # The loader ran in inference mode: a view of its table (`table[id]`) outside it is refused by some
    # torch versions (2.11: "Inference tensors do not track version counter"); index_select copies.
    with torch.inference_mode(False), torch.no_grad():
        index = torch.tensor([token_id], device=table.device)
        return torch.index_select(table, 0, index).to(device=device, dtype=torch.float32).clone()


# ---------------------------------------------------------------------------------------------- tokens


@dataclass
class TrainableToken:
    """One concept's identifier: a trainable vector per text encoder, keyed like an embedding file."""

    placeholder: str
    init_word: str
    vectors: dict[str, nn.Parameter]
    branch_keys: dict[str, str] = field(default_factory=dict)  # tokenize key -> file key

    @classmethod
    def from_clip(
        cls, clip: Any, placeholder: str, init_word: str = "sks", device: torch.device | str = "cpu"
    ) -> TrainableToken:
        """Start from a copy of `init_word`'s embedding row in every encoder (as Custom Diffusion does).

        The vectors are fp32 on `device`; ComfyUI moves them onto the encoder's device when it splices
        them in, and gradients flow back across that move, so CPU vectors work with a GPU encoder.
        """
        if not placeholder or placeholder.isspace():
            raise TLInputError("token", "the identifier token is empty.", "enter a token such as '<new1>'.")
        ids = single_token_ids(clip, init_word)
        vectors: dict[str, nn.Parameter] = {}
        branch_keys: dict[str, str] = {}
        for key, branch in text_encoder_branches(clip).items():
            vectors[branch.file_key] = nn.Parameter(_embedding_row(branch.encoder, ids[key], device))
            branch_keys[key] = branch.file_key
        return cls(placeholder=placeholder, init_word=init_word, vectors=vectors, branch_keys=branch_keys)

    def parameters(self) -> list[nn.Parameter]:
        return list(self.vectors.values())

    def named_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """Stable names (for optimizer checkpoints): `token.<placeholder>.<file key>`."""
        return [(f"token.{self.placeholder}.{key}", p) for key, p in self.vectors.items()]

    def state(self) -> dict[str, torch.Tensor]:
        """Detached CPU copies, ready for `weights.save_embedding`."""
        return {key: p.detach().to("cpu").clone() for key, p in self.vectors.items()}

    def load_state(self, vectors: Mapping[str, torch.Tensor]) -> None:
        """Overwrite the vectors in place (resume), keeping the Parameter objects the optimizer holds."""
        if set(vectors) != set(self.vectors):
            raise TLInputError(
                f"token '{self.placeholder}'",
                f"saved vectors are for encoders {sorted(vectors)}, this model has {sorted(self.vectors)}.",
                "resume with the same base model family.",
            )
        with torch.no_grad():
            for key, param in self.vectors.items():
                param.copy_(vectors[key].reshape(param.shape))


@dataclass
class PromptTokens:
    """A tokenized prompt with trainable vectors spliced in, and where each identifier sits."""

    tokens: Tokens
    positions: dict[str, list[int]]  # placeholder -> conditioning positions (attention columns)
    text: str  # the prompt as tokenized, identifiers written as their init words


def _placeholder_pattern(names: Iterable[str]) -> re.Pattern[str]:
    """Longest first, so that '<new1>' never matches inside '<new10>'."""
    return re.compile("|".join(re.escape(n) for n in sorted(names, key=len, reverse=True)))


def _substitute(template: str, words: Mapping[str, str]) -> str:
    """Replace every placeholder by its word in one pass."""
    return _placeholder_pattern(words).sub(lambda m: words[m.group(0)], template)


def _count_placeholders(template: str, names: Mapping[str, Any]) -> dict[str, int]:
    """How often each placeholder occurs as a whole placeholder (not inside a longer one)."""
    count = dict.fromkeys(names, 0)
    for match in _placeholder_pattern(names).finditer(template):
        count[match.group(0)] += 1
    return count


def _probe_word(clip: Any, avoid: set[int]) -> tuple[str, dict[str, int]]:
    """A single-token word whose id differs from every id in `avoid`, in every branch."""
    for word in PROBE_WORDS:
        try:
            ids = single_token_ids(clip, word)
        except TLInputError:
            continue
        if not set(ids.values()) & avoid:
            return word, ids
    raise RuntimeError("no single-token probe word found for this tokenizer")


def _diff_positions(base: list[Any], probe: list[Any]) -> list[int]:
    return [i for i, (a, b) in enumerate(zip(base, probe, strict=True)) if not same_entry(a, b)]


def same_entry(a: Any, b: Any) -> bool:
    """Ints compare by value; vectors (from `embedding:NAME`, reloaded per tokenize) by value too."""
    if torch.is_tensor(a) and torch.is_tensor(b):
        return a.shape == b.shape and torch.equal(a, b)
    if torch.is_tensor(a) or torch.is_tensor(b):
        return False
    return a == b


def _is_id(entry: Any, token_id: int) -> bool:
    return isinstance(entry, int) and entry == token_id


def build_prompt_tokens(
    clip: Any, template_text: str, placeholders: Mapping[str, TrainableToken]
) -> PromptTokens:
    """Tokenize a prompt and put each concept's trainable vectors where its identifier stands.

    Each placeholder is written as its init word and tokenized by ComfyUI (so weights, chunking and
    embeddings behave as in CLIPTextEncode); then that token entry is replaced, in every branch, by the
    concept's vector for that branch. Positions are found by re-tokenizing with a different word in
    the placeholder's place, which also checks that the placeholder stands as a word of its own.
    """
    if not placeholders:
        raise ValueError("build_prompt_tokens needs at least one placeholder")
    count = _count_placeholders(template_text, placeholders)
    for name in placeholders:
        if count[name] == 0:
            raise TLInputError(
                "prompt template",
                f"'{template_text}' does not contain the token '{name}'.",
                f"write '{name}' in the prompt where the concept should appear, e.g. 'photo of a {name} doll'.",
            )
    init_words = {name: tok.init_word for name, tok in placeholders.items()}
    text = _substitute(template_text, init_words)
    base_tokens = clip.tokenize(text, return_word_ids=True)
    base_ids = token_entries(base_tokens)
    init_ids = {name: single_token_ids(clip, tok.init_word) for name, tok in placeholders.items()}
    avoid = {i for ids in init_ids.values() for i in ids.values()}
    probe, probe_ids = _probe_word(clip, avoid)

    positions: dict[str, list[int]] = {}
    for name in placeholders:
        probe_text = _substitute(template_text, {**init_words, name: probe})
        other = token_entries(clip.tokenize(probe_text, return_word_ids=True))
        found: dict[str, list[int]] = {}
        for key, seq in base_ids.items():
            diff = _diff_positions(seq, other[key]) if len(seq) == len(other[key]) else None
            ok = (
                diff is not None
                and len(diff) == count[name]
                and all(_is_id(seq[i], init_ids[name][key]) and _is_id(other[key][i], probe_ids[key]) for i in diff)
            )
            if not ok:
                raise TLInputError(
                    "prompt template",
                    f"the token '{name}' in '{template_text}' does not stand as a word of its own.",
                    f"put spaces around '{name}' (punctuation right after it is fine).",
                )
            found[key] = diff
        first = next(iter(found.values()))
        if any(p != first for p in found.values()):
            raise RuntimeError(f"text encoders disagree on where '{name}' is: {found}")
        positions[name] = first

    tokens: Tokens = {key: [list(chunk) for chunk in chunks] for key, chunks in base_tokens.items()}
    for name, tok in placeholders.items():
        for key, chunks in tokens.items():
            vector = tok.vectors[tok.branch_keys[key]]
            offsets = _chunk_offsets(chunks)
            for pos in positions[name]:
                c = max(i for i, o in enumerate(offsets) if o <= pos)
                entry = chunks[c][pos - offsets[c]]
                chunks[c][pos - offsets[c]] = (vector, *entry[1:])
    return PromptTokens(tokens=tokens, positions=positions, text=text)


# ---------------------------------------------------------------------------------------------- training


def _out_of_place_forward(self: nn.Module, x: torch.Tensor, mask=None, optimized_attention=None) -> torch.Tensor:
    """ComfyUI's CLIPLayer.forward with `x = x + ...` instead of `x += ...`, so autograd can go back through it."""
    x = x + self.self_attn(self.layer_norm1(x), mask, optimized_attention)
    x = x + self.mlp(self.layer_norm2(x))
    return x


def _clip_layers(model: nn.Module) -> list[nn.Module]:
    layers = [m for m in model.modules() if type(m).__name__ == LAYER_CLASS_NAME]
    for layer in layers:
        if not all(hasattr(layer, a) for a in ("self_attn", "layer_norm1", "mlp", "layer_norm2")):
            raise RuntimeError(f"{LAYER_CLASS_NAME} has an unexpected structure; this ComfyUI version is unsupported")
    return layers


def make_autograd_safe(module: nn.Module) -> int:
    """Swap inference-mode parameters and buffers for normal tensors with the same values.

    ComfyUI's executor loads models inside `torch.inference_mode()`, and autograd refuses to save such
    tensors for backward. Replacing `.data` is not enough (no version counter), so the Parameter objects
    themselves are replaced: the tensor objects change, their values stay bit-identical, requires_grad
    stays False. Normal tensors are left alone. Returns how many tensors were replaced.
    """
    replaced = 0
    with torch.inference_mode(False), torch.no_grad():
        for sub in module.modules():
            for name, param in list(sub._parameters.items()):
                if param is not None and param.is_inference():
                    sub._parameters[name] = nn.Parameter(param.clone(), requires_grad=False)
                    replaced += 1
            for name, buf in list(sub._buffers.items()):
                if buf is not None and buf.is_inference():
                    sub._buffers[name] = buf.clone()
                    replaced += 1
    return replaced


@contextmanager
def trainable_text_encoder(clip: Any) -> Iterator[None]:
    """Make `clip` trainable for token embeddings for the duration of the block.

    On entry the CLIP is loaded, its inference tensors are made autograd-safe (permanent, values
    unchanged) and every CLIPLayer instance gets an out-of-place forward (ComfyUI's adds in place,
    which breaks backward into the token vectors). The original forwards are restored on exit, also
    when the block raises.
    """
    layers = _clip_layers(clip.cond_stage_model)
    if not layers:
        raise TLInputError("CLIP", "has no CLIP text encoder layers to train through.", "use an SD1.x, SD2.x or SDXL checkpoint.")
    with torch.inference_mode(False):
        if hasattr(clip, "load_model"):
            clip.load_model()
        make_autograd_safe(clip.cond_stage_model)
    missing = object()
    saved = []
    try:
        for layer in layers:
            saved.append((layer, layer.__dict__.get("forward", missing)))
            layer.forward = types.MethodType(_out_of_place_forward, layer)
        yield
    finally:
        for layer, previous in reversed(saved):
            if previous is missing:
                layer.__dict__.pop("forward", None)
            else:
                layer.forward = previous


def is_trainable(clip: Any) -> bool:
    """True inside `trainable_text_encoder(clip)`."""
    layers = _clip_layers(clip.cond_stage_model)
    return bool(layers) and all(
        getattr(layer.__dict__.get("forward"), "__func__", None) is _out_of_place_forward for layer in layers
    )


def encode(clip: Any, tokens: Mapping[str, list[list[tuple]]]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(cond, pooled) with autograd on, so gradients reach the spliced token vectors.

    Uses ComfyUI's own `encode_from_tokens` (it adds no no_grad), so clip-skip and the encoder's
    options behave as in CLIPTextEncode. Must run inside `trainable_text_encoder(clip)`.
    """
    if not is_trainable(clip):
        raise RuntimeError("encode() for training must run inside trainable_text_encoder(clip)")
    with torch.inference_mode(False), torch.enable_grad():
        cond, pooled = clip.encode_from_tokens(dict(tokens), return_pooled=True)
    return cond, pooled
