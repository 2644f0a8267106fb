"""Put trained weights to use: K/V deltas as ComfyUI "diff" patches, tokens through the tokenizer.

Model side: exactly what the stock LoraLoaderModelOnly does with the same file, a clone of the
ModelPatcher with `("diff", (delta,))` patches (W += strength * delta when the model is loaded), so
the base model and every other branch of the graph stay as they are.

Text side: ComfyUI's tokenizer turns `embedding:NAME` into vectors read from the embeddings folders
(comfy/sd1_clip.py, `SDTokenizer._try_get_embedding`); NAME may hold a folder, and a run's tokens are
`<run>/<token>` (output/embeddings/<run>/<token>.safetensors). `clip_with_tokens` returns a CLIP clone
whose tokenizer objects are shallow copies that answer the concept tokens from memory, by the token
and by its run's name, and fall back to the stock file lookup for every other name. That makes three things possible that files alone
cannot: results held in memory (straight from the trainer), token strengths other than 1, and
several concepts applied in a chain. The incoming CLIP and its tokenizer are never modified.

Token strength s blends each learned vector v with the embedding e of the word training started
from: lerp(e, v, s). s = 1 is the learned vector exactly (what `embedding:NAME` gives), s = 0 is the
init word exactly (the token's state before training), values in between interpolate.

No ComfyUI import: ModelPatcher and CLIP are used through their public methods; folder lookups
arrive as callables from the node.
"""

from __future__ import annotations

import copy
import logging
import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

import torch

from .. import host
from ..errors import TLInputError
from ..training.kv_deltas import as_diff_patches
from ..training.run_files import EMBEDDING_SUFFIXES, SAFETENSORS, RunFiles
from ..training.token_embedding import single_token_ids, text_encoder_branches
from .files import (
    EMBEDDINGS_DIR,
    FORMAT_NAME,
    KIND_KV,
    META_FAMILY,
    META_FORMAT,
    META_KIND,
    META_PREDICTION,
    check_kv_deltas_match,
    checkpoint_dir_name,
    file_stamp,
    load_embedding,
    load_kv_deltas,
    metadata_value,
    read_metadata,
)
from .trained import TrainedWeights, same_run

log = logging.getLogger("textual_localization")

NONE = "none"

Resolve = Callable[[str], "str | Path | None"]
"""A folder lookup such as `lambda name: folder_paths.get_full_path("loras", name)`."""


# ---------------------------------------------------------------------------------------------- files


_listing_cache: dict[str, tuple[int, int, bool]] = {}


def is_weights_file(path: Path) -> bool:
    """True for a K/V file written by this pack. Reads only the header; cached by size and mtime."""
    try:
        stat = path.stat()
    except OSError:
        return False
    cached = _listing_cache.get(str(path))
    if cached and cached[:2] == (stat.st_size, stat.st_mtime_ns):
        return cached[2]
    try:
        meta = read_metadata(path)
        ok = meta.get(META_FORMAT) == FORMAT_NAME and meta.get(META_KIND) == KIND_KV
    except (ValueError, OSError):  # TLInputError is a ValueError: any unreadable file is simply not listed
        ok = False
    _listing_cache[str(path)] = (stat.st_size, stat.st_mtime_ns, ok)
    return ok


def weight_file_options(names: list[str], resolve: Resolve) -> list[str]:
    """The dropdown: "none", then every .safetensors in the loras folders that this pack wrote."""
    found = []
    for name in names:
        if not name.lower().endswith(SAFETENSORS):
            continue
        path = resolve(name)
        if path is not None and is_weights_file(Path(path)):
            found.append(name)
    return [NONE, *found]


def _has_parent_reference(name: str) -> bool:
    parts = set(PurePosixPath(name).parts) | set(PureWindowsPath(name).parts)
    return ".." in parts


def resolve_weights_name(name: str, resolve: Resolve, folders: list[str] | None = None) -> Path:
    """The file a dropdown value names, refusing anything outside ComfyUI's loras folders."""
    fix = "pick a file from the weights list (files in models/loras/ or output/loras/)."
    if _has_parent_reference(name) or PurePosixPath(name).is_absolute() or PureWindowsPath(name).is_absolute():
        raise TLInputError("weights", f"'{name}' points outside ComfyUI's loras folders.", fix)
    path = resolve(name)
    if path is None:
        where = f" ({', '.join(folders)})" if folders else ""
        raise TLInputError(
            "weights",
            f"'{name}' was not found in ComfyUI's loras folders{where}.",
            "train the weights first, or copy the .safetensors file into models/loras/, then refresh the page.",
        )
    path = Path(path)
    if path.suffix.lower() != SAFETENSORS:
        raise TLInputError(
            str(path), "is not a .safetensors file; only safetensors are loaded, never pickle.", fix
        )
    return path


def _run_name(kv_path: Path, metadata: Mapping[str, str]) -> str:
    """The run a K/V file comes from: as recorded, else the file's name (the trainer names it after the run)."""
    return metadata.get("run_name") or kv_path.stem


def _embedding_file_names(token: str, kv_path: Path, metadata: Mapping[str, str]) -> list[str]:
    """The names a K/V file's token may have in the embeddings folders, the run's own first:
    `<run>/<token>` (every run since runs got their own folder), then `<token>` (older runs, or a run
    asked to overwrite it)."""
    return [f"{_run_name(kv_path, metadata)}/{token}", token]


def weights_fingerprint(name: str, resolve: Resolve, find_embedding: Resolve) -> tuple | str:
    """Size and mtime of a K/V file and of its tokens' embedding files.

    Resuming a run rewrites its K/V file under the same name, training a token again rewrites its
    embedding file, and users copy files over old ones: without this, ComfyUI would keep serving the
    weights it loaded before, because the dropdown value did not change. Unreadable names give the name itself, and the
    node's error follows when it runs.
    """
    try:
        found = resolve(name)
        if found is None:
            return name
        paths = [Path(found)]
        metadata = read_metadata(paths[0])
        tokens = metadata_value(metadata, "tokens", [])
        for token in tokens if isinstance(tokens, list) else []:
            for file_name in _embedding_file_names(token, paths[0], metadata):
                embedding = find_embedding(f"{file_name}{SAFETENSORS}")
                if embedding is not None:
                    paths.append(Path(embedding))
        return tuple((str(p), *file_stamp(p)) for p in paths)
    except (OSError, ValueError):
        return name


def _checkpoint_embeddings(kv_path: Path, metadata: Mapping[str, str], output_dir: Path | None) -> list[Path]:
    """The embedding files in the run's final checkpoint (the trainer always writes one at the end)."""
    steps = metadata_value(metadata, "steps")
    if output_dir is None or not isinstance(steps, int):
        return []
    folder = (RunFiles(_run_name(kv_path, metadata), output_dir).checkpoints_dir / checkpoint_dir_name(steps)
              / EMBEDDINGS_DIR)
    return sorted(folder.glob(f"*{SAFETENSORS}")) if folder.is_dir() else []


def _load_token(
    token: str,
    kv_path: Path,
    metadata: Mapping[str, str],
    find_embedding: Resolve,
    output_dir: Path | None,
) -> tuple[dict[str, torch.Tensor], Path, str]:
    """(vectors, file, name a prompt reaches it by) for one token of a K/V file.

    Looked up in the embeddings folders as `<run>/<token>`, then as `<token>`, then in the run's own
    final checkpoint. A plain `<token>` file is shared by every run that trains that token, so it may
    come from another run; its metadata tells, and then the next candidate is used. A token found
    only in the checkpoint is named by the token itself, which the CLIP from Apply answers from memory.
    """
    candidates: list[tuple[Path, str]] = []
    for file_name in _embedding_file_names(token, kv_path, metadata):
        found = find_embedding(f"{file_name}{SAFETENSORS}")
        if found is not None:
            candidates.append((Path(found), file_name))
    candidates += [(path, token) for path in _checkpoint_embeddings(kv_path, metadata, output_dir)]
    foreign: list[Path] = []
    unknown: tuple[dict[str, torch.Tensor], Path, str] | None = None
    for path, name in candidates:
        vectors, meta = load_embedding(path)
        if meta.get(META_FORMAT) != FORMAT_NAME:
            unknown = unknown or (vectors, path, name)
            continue
        if meta.get("token", token) != token:
            continue
        if same_run(metadata, meta):
            if foreign:
                log.warning("%s is from another training run than %s; using %s. Plain embedding:%s prompts "
                            "without Apply TL Weights get the other run's token.", foreign[0], kv_path, path, token)
            return vectors, path, name
        foreign.append(path)
    if unknown is not None:
        log.warning("%s carries no training metadata; assuming it belongs to %s.", unknown[1], kv_path)
        return unknown
    if foreign:
        raise TLInputError(
            str(foreign[0]),
            f"holds token '{token}' from another training run than '{kv_path.name}' "
            "(the token was trained again since), and that run's own checkpoint was not found.",
            f"apply the K/V file of the run that wrote {foreign[0].name}, or train '{kv_path.stem}' again.",
        )
    own = f"{_run_name(kv_path, metadata)}/{token}{SAFETENSORS}"
    raise TLInputError(
        f"token '{token}'",
        f"the weights '{kv_path.name}' need the embedding file {own} (or {token}{SAFETENSORS} from older "
        "runs), which is not in ComfyUI's embeddings folders.",
        f"copy {own} (written by the trainer in output/embeddings/) into models/embeddings/, keeping its folder.",
    )


def load_weights_file(kv_path: Path, find_embedding: Resolve, output_dir: Path | None = None) -> TrainedWeights:
    """Read a K/V file and its tokens' embeddings into the object the trainer hands out."""
    deltas, metadata = load_kv_deltas(kv_path)
    if metadata.get(META_FORMAT) != FORMAT_NAME or metadata.get(META_KIND) != KIND_KV:
        raise TLInputError(
            str(kv_path),
            "is not a Textual Localization K/V file (its metadata does not name this pack).",
            "use the stock LoraLoaderModelOnly for other LoRA files.",
        )
    tokens = metadata_value(metadata, "tokens", [])
    if not isinstance(tokens, list) or not tokens or not all(isinstance(t, str) for t in tokens):
        raise TLInputError(str(kv_path), "names no tokens in its metadata.", "train the weights again with this pack.")
    vectors: dict[str, dict[str, torch.Tensor]] = {}
    paths: dict[str, Path] = {}
    names: dict[str, str] = {}
    for token in tokens:
        vectors[token], paths[token], names[token] = _load_token(token, kv_path, metadata, find_embedding,
                                                                 output_dir)
    return TrainedWeights(kv_deltas=deltas, token_vectors=vectors, metadata=metadata, kv_path=kv_path,
                          embedding_paths=paths, embedding_names=names)


# ---------------------------------------------------------------------------------------------- checks


def _metadata_list(weights: TrainedWeights, key: str) -> list[str]:
    value = metadata_value(weights.metadata, key, [])
    return [str(v) for v in value] if isinstance(value, list) else []


def model_kv_shapes(model: Any) -> dict[str, tuple[int, ...]]:
    """Shapes of every attn2 projection weight of a ModelPatcher, by model key."""
    return {
        name: tuple(param.shape)
        for name, param in model.model.named_parameters()
        if ".attn2." in name and name.endswith(".weight")
    }


def check_weights_fit(model: Any, clip: Any, weights: TrainedWeights, what: str) -> None:
    """Refuse weights for another architecture before anything is patched."""
    family = host.model_family(model)
    file_family = str(weights.metadata.get(META_FAMILY, ""))
    check_kv_deltas_match(weights.kv_deltas, model_kv_shapes(model), weights.metadata, what, family)
    if file_family and file_family.lower() != family.lower():
        log.warning("%s was trained on a '%s' model and is applied to a '%s' model with the same layer shapes.",
                    what, file_family, family)
    prediction, file_prediction = host.model_prediction(model), str(weights.metadata.get(META_PREDICTION, ""))
    if file_prediction and file_prediction != prediction:  # files from before this was recorded have none
        raise TLInputError(
            what, f"was trained on a '{file_family}' model that predicts {file_prediction}; this '{family}' model "
            f"predicts {prediction} (same layers, another objective: the deltas would not fit it).",
            "load the checkpoint the weights were trained on (e.g. SD2 768-v for v_prediction, SD2 base for eps).")
    widths = {b.file_key: b.encoder.transformer.get_input_embeddings().weight.shape[-1]
              for b in text_encoder_branches(clip).values()}
    for token, vectors in weights.token_vectors.items():
        for file_key, width in widths.items():
            vector = vectors.get(file_key)
            if vector is None or vector.shape[-1] != width:
                got = "nothing" if vector is None else f"width {vector.shape[-1]}"
                raise TLInputError(
                    f"token '{token}'",
                    f"needs a '{file_key}' vector of width {width} for this text encoder, the weights have {got}; "
                    f"they were trained on a '{file_family or 'different'}' model.",
                    "load the checkpoint the weights were trained on (same family).",
                )


# ---------------------------------------------------------------------------------------------- tokens


def blended_token_vectors(
    clip: Any, weights: TrainedWeights, strength: float
) -> dict[str, dict[str, torch.Tensor]]:
    """lerp(init word embedding, learned vector, strength) per token and text encoder, in fp32.

    torch.lerp is exact at both ends, so 1 returns the learned vector and 0 the init word's row.
    """
    tokens = list(weights.token_vectors)
    init_words = _metadata_list(weights, "init_words")
    if strength != 1.0 and len(init_words) != len(tokens):
        raise TLInputError("tl_result", "does not record the init word of every token.",
                           "set strength_token to 1, or train the weights again with this pack.")
    out: dict[str, dict[str, torch.Tensor]] = {}
    branches = text_encoder_branches(clip).values()
    for index, token in enumerate(tokens):
        learned = {k: v.detach().to("cpu", torch.float32).reshape(-1, v.shape[-1]) for k, v in
                   weights.token_vectors[token].items()}
        if strength == 1.0:
            out[token] = {k: v.clone() for k, v in learned.items()}
            continue
        ids = single_token_ids(clip, init_words[index])
        blended = {}
        for branch in branches:
            table = branch.encoder.transformer.get_input_embeddings().weight
            init = table[ids[branch.key]].detach().to("cpu", torch.float32).reshape(1, -1)
            vector = learned[branch.file_key]
            blended[branch.file_key] = torch.lerp(init.expand_as(vector), vector, float(strength))
        out[token] = blended
    return out


def _embedding_key(name: str) -> str:
    """`tl_ball.safetensors` and `tl_ball` name the same embedding, as in ComfyUI's lookup."""
    for suffix in EMBEDDING_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _try_get_embedding(self: Any, embedding_name: str) -> tuple[torch.Tensor | None, str]:
    """SDTokenizer._try_get_embedding, answering this pack's tokens from memory first.

    Same contract as the stock method: the name is the first word, the rest is returned as leftover
    text, and a trailing comma is tolerated.
    """
    vectors: dict[str, torch.Tensor] = self._tl_vectors
    parts = embedding_name.split()
    if parts:
        name, leftover = parts[0], " ".join(parts[1:])
        if _embedding_key(name) in vectors:
            return vectors[_embedding_key(name)].clone(), leftover
        stripped = name.strip(",")
        if stripped != name and _embedding_key(stripped) in vectors:
            return vectors[_embedding_key(stripped)].clone(), f"{name[len(stripped):]} {leftover}"
    return type(self)._try_get_embedding(self, embedding_name)


def _branch_attributes(clip: Any) -> list[str]:
    """Attribute names of the per-encoder tokenizers ("clip_l", "clip_g", ...)."""
    attrs = []
    for key in clip.tokenize("", return_word_ids=True):
        attr = next((a for a in (f"clip_{key}", key) if hasattr(clip.tokenizer, a)), None)
        if attr is None:
            raise TLInputError("clip", f"text encoder '{key}' has no tokenizer this pack can extend.",
                               "use an SD1.x, SD2.x or SDXL checkpoint.")
        attrs.append(attr)
    return attrs


def clip_with_tokens(clip: Any, vectors: Mapping[str, Mapping[str, torch.Tensor]]) -> Any:
    """A CLIP clone whose `embedding:TOKEN` resolves to the given vectors (other names: stock lookup)."""
    out = clip.clone()
    out.tokenizer = copy.copy(clip.tokenizer)
    for attr in _branch_attributes(clip):
        tokenizer = copy.copy(getattr(clip.tokenizer, attr))
        key = tokenizer.embedding_key
        known = dict(getattr(tokenizer, "_tl_vectors", {}))
        known.update({token: v[key].detach().to("cpu", torch.float32).reshape(-1, v[key].shape[-1])
                      for token, v in vectors.items()})
        tokenizer._tl_vectors = known
        tokenizer._try_get_embedding = types.MethodType(_try_get_embedding, tokenizer)
        if tokenizer.embedding_directory is None:
            tokenizer.embedding_directory = []  # `embedding:` is only parsed when a directory list exists
        setattr(out.tokenizer, attr, tokenizer)
    return out


# ---------------------------------------------------------------------------------------------- apply


@dataclass(frozen=True)
class AppliedWeights:
    model: Any
    clip: Any
    trigger: str


def trigger_text(weights: TrainedWeights) -> str:
    """What to type for the concepts: 'embedding:run/tl_ball ball and embedding:run/tl_box box'."""
    class_words = _metadata_list(weights, "class_words")
    names = [weights.embedding_name(t) for t in weights.token_vectors]
    if len(class_words) != len(names):
        return " and ".join(f"embedding:{n}" for n in names)
    return " and ".join(f"embedding:{n} {c}" for n, c in zip(names, class_words, strict=True))


def by_prompt_name(weights: TrainedWeights, vectors: Mapping[str, Mapping[str, torch.Tensor]]
                   ) -> dict[str, Mapping[str, torch.Tensor]]:
    """Each token's vectors under every name a prompt may use for it: the token and `<run>/<token>`."""
    named: dict[str, Mapping[str, torch.Tensor]] = {}
    for token, vector in vectors.items():
        named[token] = vector
        named[weights.embedding_name(token)] = vector
    return named


def apply_weights(
    model: Any, clip: Any, weights: TrainedWeights, strength_model: float, strength_token: float, what: str
) -> AppliedWeights:
    """Patched model clone, token-aware CLIP clone, trigger text. Inputs are left untouched."""
    check_weights_fit(model, clip, weights, what)
    patched = model.clone()
    if strength_model != 0:
        keys = patched.add_patches(as_diff_patches(dict(weights.kv_deltas)), strength_model)
        if len(keys) != len(weights.kv_deltas):
            raise TLInputError(what, f"only {len(keys)} of {len(weights.kv_deltas)} K/V deltas matched the model.",
                               "load the checkpoint the weights were trained on.")
    clip_out = clip_with_tokens(clip, by_prompt_name(weights, blended_token_vectors(clip, weights, strength_token)))
    return AppliedWeights(model=patched, clip=clip_out, trigger=trigger_text(weights))
