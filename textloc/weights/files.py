"""The files training writes and the apply/load paths read: K/V deltas, token embeddings, resume checkpoints.

Everything is safetensors (never pickle), and every write is atomic: a file is written next to its
destination and moved into place with `os.replace`; a checkpoint folder is written as `<name>.tmp` and
renamed. A cancelled or crashed run therefore never leaves a half-written file under a final name. What
a killed process leaves behind (those `.tmp` files and folders) is removed when the same file is written
again or the run is resumed (`remove_killed_writes`, `repair_checkpoints`).

A power cut is covered too: the new content is flushed to the disk (fsync of the file, and of the folders
of a checkpoint) before it is renamed into place, and the folder that holds the final name is flushed
after the rename, so the disk holds the old or the new version, never a renamed file without its data.

K/V deltas use the key spelling the stock ComfyUI LoRA loader understands as a "diff" patch:
`diffusion_model.<module path>.diff`, where the module path is the model key without `.weight`
(e.g. `diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.diff`). The loader then adds
strength * delta to the base weight, so the strength slider works.

Token embeddings are stored one tensor per text encoder under ComfyUI's embedding keys
("clip_l", "clip_g", "clip_h"), each of shape [1, width], which ComfyUI's `embedding:NAME` loader reads.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import struct
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .. import __version__
from ..errors import TLInputError

FORMAT_NAME = "textual-localization"
FORMAT_VERSION = "1"

MODEL_PREFIX = "diffusion_model."
WEIGHT_SUFFIX = ".weight"
DIFF_SUFFIX = ".diff"

# Metadata keys written by `build_metadata` and read back when a file is checked against a model.
META_FORMAT = "format"
META_FORMAT_VERSION = "format_version"
META_PACK_VERSION = "pack_version"
META_KIND = "kind"
META_FAMILY = "base_model_family"
META_PREDICTION = "base_model_prediction"
META_BASE_HASH = "base_hash"

KIND_KV = "kv_deltas"
KIND_EMBEDDING = "embedding"
KIND_TRAINER_STATE = "trainer_state"

CHECKPOINT_PREFIX = "checkpoint-"
CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
TMP_SUFFIX = ".tmp"
OLD_SUFFIX = ".old"  # `checkpoint-<step>.old.tmp`: a step's previous folder while it is being replaced
CHECKPOINT_TMP_RE = re.compile(r"^(checkpoint-\d+)(\.old)?\.tmp$")
KV_FILE = "kv_deltas.safetensors"
STATE_FILE = "trainer_state.safetensors"
EMBEDDINGS_DIR = "embeddings"

NOT_SAFETENSORS = "is not a safetensors file; only safetensors are loaded, never pickle."
NOT_FINITE_FIX = "train the weights again (lower learning_rate, or precision fp32), or pick another file."
CHECKPOINT_NOT_FINITE_FIX = ("delete this checkpoint folder to resume from the one before it, or turn resume off "
                             "and train again (lower learning_rate, or precision fp32).")


# ---------------------------------------------------------------------------------------------- metadata


def build_metadata(**fields: Any) -> dict[str, str]:
    """Safetensors metadata must be str -> str: keep strings as they are, JSON-encode everything else.

    The format name, format version and pack version are always added, so a reader can tell which
    code wrote a file. Callers pass whatever describes the run (tokens, class words, guidance,
    attention weight, steps, lr, resolution, seed, base model family, base hash...).
    """
    out = {
        META_FORMAT: FORMAT_NAME,
        META_FORMAT_VERSION: FORMAT_VERSION,
        META_PACK_VERSION: __version__,
    }
    for key, value in fields.items():
        out[key] = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    return out


def metadata_value(metadata: Mapping[str, str], key: str, default: Any = None) -> Any:
    """Decode one value written by `build_metadata`: JSON when it parses as JSON, else the raw string."""
    if key not in metadata:
        return default
    raw = metadata[key]
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def kv_base_hash(base_weights: Mapping[str, torch.Tensor]) -> str:
    """sha256 of the base K/V weights a delta file was trained against: a cheap base-model fingerprint.

    Keys are visited in sorted order; each contributes its name, its shape and its values as fp32
    bytes, so the same weights give the same hash whatever dtype or device the model was loaded with.
    """
    digest = hashlib.sha256()
    for key in sorted(base_weights):
        tensor = base_weights[key].detach().to(device="cpu", dtype=torch.float32).contiguous()
        digest.update(key.encode("utf-8"))
        digest.update(json.dumps(list(tensor.shape)).encode("ascii"))
        digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()


def _check_metadata(metadata: Mapping[str, str]) -> dict[str, str]:
    """Fail early with a clear message instead of deep inside safetensors."""
    bad = [k for k, v in metadata.items() if not isinstance(k, str) or not isinstance(v, str)]
    if bad:
        raise TypeError(f"safetensors metadata must map str to str; bad entries: {bad} (use build_metadata)")
    return dict(metadata)


# ---------------------------------------------------------------------------------------------- file io


def _tmp_name_pattern(path: Path) -> re.Pattern[str]:
    """The names `_atomic_path` gives the temporary files of `path`: `.<name>.<8 hex>.tmp`."""
    return re.compile(rf"^\.{re.escape(path.name)}\.[0-9a-f]{{8}}{re.escape(TMP_SUFFIX)}$")


def remove_killed_writes(path: Path) -> list[Path]:
    """Delete temporary files that earlier writes of `path` left behind when their process was killed.

    A kill (SIGKILL, power cut) skips the clean-up of `_atomic_path`, so its half-written `.tmp`
    would stay forever. Only temporaries of this very file are touched, never another file's.
    """
    path = Path(path)
    if not path.parent.is_dir():
        return []
    pattern = _tmp_name_pattern(path)
    removed = [child for child in path.parent.iterdir() if pattern.match(child.name) and child.is_file()]
    for child in removed:
        child.unlink(missing_ok=True)
    return removed


def fsync_file(path: Path) -> None:
    """Flush a written file's data to the disk, so that a rename after it never outlives its content."""
    fd = os.open(path, os.O_RDWR | getattr(os, "O_BINARY", 0))  # Windows flushes only writable handles
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_folder(path: Path) -> None:
    """Flush a folder's entries (names created or renamed in it) to the disk.

    Windows cannot open a folder for this; NTFS journals its renames itself.
    """
    if os.name == "nt":
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def _atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path in the destination folder; move it over `path` only if the body succeeds.

    The new content is flushed to the disk before the rename and the folder after it, so a power cut
    leaves the old or the new file. Writing a file again also removes the leftovers of earlier writes
    of it that were killed midway.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_killed_writes(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}{TMP_SUFFIX}")
    try:
        yield tmp
        fsync_file(tmp)
        os.replace(tmp, path)
        fsync_folder(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def atomic_file(path: Path) -> Iterator[Path]:
    """A path to write `path`'s new content to (e.g. with PIL); it replaces `path` only when the block succeeds."""
    with _atomic_path(Path(path)) as tmp:
        yield tmp


def file_stamp(path: Path) -> tuple[int, int]:
    """(size, mtime in ns): what changes when a file is rewritten, for cache keys and node fingerprints."""
    stat = Path(path).stat()
    return stat.st_size, stat.st_mtime_ns


def atomic_write_text(path: Path, text: str) -> None:
    """Write a text file so that readers see the old or the new content, never half of it."""
    with _atomic_path(Path(path)) as tmp:
        tmp.write_text(text, encoding="utf-8")


def _first_non_finite(tensors: Mapping[str, torch.Tensor]) -> tuple[str, int, int] | None:
    """(name, non-finite count, size) of the first tensor holding NaN or inf, or None."""
    for name, tensor in tensors.items():
        if tensor.is_floating_point():
            bad = int((~torch.isfinite(tensor)).sum())
            if bad:
                return name, bad, tensor.numel()
    return None


def save_tensors(path: Path, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> None:
    """Atomic safetensors write of contiguous CPU tensors; never one holding NaN or inf (it samples black)."""
    meta = _check_metadata(metadata)
    data = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    bad = _first_non_finite(data)
    if bad is not None:
        raise ValueError(f"refusing to write {path}: tensor '{bad[0]}' holds {bad[1]} NaN or infinite value(s)")
    with _atomic_path(Path(path)) as tmp:
        save_file(data, str(tmp), metadata=meta)


def _read_header(path: Path) -> dict[str, Any]:
    """Parse the safetensors header ourselves so that every way a file can be wrong gets its own message.

    Layout: 8-byte little-endian header length N, then N bytes of JSON, then the tensor data.
    """
    what = str(path)
    if not path.exists():
        raise TLInputError(what, "the file does not exist.", "check the file name and folder.")
    if not path.is_file():
        raise TLInputError(what, "is a folder, not a file.", "select a .safetensors file.")
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(9)
        if len(head) < 9:
            raise TLInputError(what, f"{NOT_SAFETENSORS} (only {size} bytes)", "select a .safetensors file.")
        (header_len,) = struct.unpack("<Q", head[:8])
        if head[8:9] != b"{":
            raise TLInputError(what, NOT_SAFETENSORS, "select a .safetensors file written by this pack.")
        if 8 + header_len > size:
            raise TLInputError(
                what,
                f"is truncated or corrupt: its header needs {8 + header_len} bytes but the file has {size}.",
                "write the file again (a copy or download may have stopped early).",
            )
        f.seek(8)
        raw = f.read(header_len)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as err:
        raise TLInputError(what, f"is corrupt: its header is not valid JSON ({err}).", "write the file again.") from None
    if not isinstance(header, dict):
        raise TLInputError(what, "is corrupt: its header is not a JSON object.", "write the file again.")
    data_len = size - 8 - header_len
    for name, info in header.items():
        if name == "__metadata__":
            continue
        end = info.get("data_offsets", [0, 0])[1] if isinstance(info, dict) else 0
        if end > data_len:
            raise TLInputError(
                what,
                f"is truncated or corrupt: tensor '{name}' ends at byte {end} of a {data_len}-byte data block.",
                "write the file again (a copy or download may have stopped early).",
            )
    return header


def _load_tensors(path: Path, not_finite_fix: str = NOT_FINITE_FIX) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Validated safetensors read (CPU tensors + metadata), with TLInputErrors for bad files.

    A tensor holding NaN or inf is refused here, for every kind of file: applied or resumed, such
    weights make every sampled image black.
    """
    path = Path(path)
    header = _read_header(path)
    metadata = header.get("__metadata__") or {}
    try:
        tensors = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise TLInputError(str(path), f"is corrupt and could not be read ({err}).", "write the file again.") from None
    bad = _first_non_finite(tensors)
    if bad is not None:
        raise TLInputError(
            str(path),
            f"tensor '{bad[0]}' holds {bad[1]} NaN or infinite value(s) (of {bad[2]}); weights like these "
            "make every image black.",
            not_finite_fix,
        )
    return tensors, dict(metadata)


def read_metadata(path: Path) -> dict[str, str]:
    """The metadata of a safetensors file, without loading its tensors."""
    return dict(_read_header(Path(path)).get("__metadata__") or {})


# ---------------------------------------------------------------------------------------------- K/V deltas


def kv_file_key(model_key: str) -> str:
    """`diffusion_model.X.weight` -> `diffusion_model.X.diff` (the stock LoRA loader's diff spelling)."""
    if not model_key.startswith(MODEL_PREFIX) or not model_key.endswith(WEIGHT_SUFFIX):
        raise ValueError(f"expected a model key like 'diffusion_model.<module>.weight', got '{model_key}'")
    return model_key[: -len(WEIGHT_SUFFIX)] + DIFF_SUFFIX


def kv_model_key(file_key: str) -> str:
    """`diffusion_model.X.diff` -> `diffusion_model.X.weight`."""
    if not file_key.startswith(MODEL_PREFIX) or not file_key.endswith(DIFF_SUFFIX):
        raise ValueError(f"expected a file key like 'diffusion_model.<module>.diff', got '{file_key}'")
    return file_key[: -len(DIFF_SUFFIX)] + WEIGHT_SUFFIX


def save_kv_deltas(
    path: Path,
    deltas: Mapping[str, torch.Tensor],
    metadata: Mapping[str, str],
    dtype: torch.dtype = torch.float16,
) -> None:
    """Write K/V weight deltas (keyed by model key) as a file the stock LoraLoaderModelOnly applies."""
    tensors = {kv_file_key(k): v.detach().to(dtype) for k, v in deltas.items()}
    save_tensors(Path(path), tensors, {**metadata, META_KIND: KIND_KV})


def load_kv_deltas(
    path: Path, not_finite_fix: str = NOT_FINITE_FIX
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read a K/V delta file back as {model key: delta} plus its metadata (NaN or inf is refused)."""
    path = Path(path)
    tensors, metadata = _load_tensors(path, not_finite_fix)
    if not tensors:
        raise TLInputError(str(path), "contains no tensors.", "select a K/V weights file written by the trainer.")
    deltas: dict[str, torch.Tensor] = {}
    for key, value in tensors.items():
        if not (key.startswith(MODEL_PREFIX) and key.endswith(DIFF_SUFFIX)):
            raise TLInputError(
                str(path),
                f"has key '{key}', which is not a K/V delta ('diffusion_model.<module>.diff').",
                "select a K/V weights file written by the trainer (an embedding file goes to the embeddings folder).",
            )
        deltas[kv_model_key(key)] = value
    return deltas, metadata


def check_kv_deltas_match(
    deltas: Mapping[str, torch.Tensor],
    model_shapes: Mapping[str, Sequence[int]],
    metadata: Mapping[str, str],
    what: str,
    model_family: str = "",
) -> None:
    """Refuse a delta file that does not fit the model (e.g. SDXL weights on SD1.5), naming both sides."""
    file_family = metadata.get(META_FAMILY, "unknown")
    model_family = model_family or "unknown"
    missing = sorted(k for k in deltas if k not in model_shapes)
    if missing:
        raise TLInputError(
            what,
            f"has {len(missing)} K/V layer(s) the model does not have (e.g. '{missing[0]}'); "
            f"the file was trained on a '{file_family}' model, this model is '{model_family}'.",
            "load the checkpoint the weights were trained on (same family and architecture).",
        )
    for key in sorted(deltas):
        file_shape = tuple(deltas[key].shape)
        model_shape = tuple(model_shapes[key])
        if file_shape != model_shape:
            raise TLInputError(
                what,
                f"delta '{key}' has shape {file_shape} but the model's weight has shape {model_shape}; "
                f"the file was trained on a '{file_family}' model, this model is '{model_family}'.",
                "load the checkpoint the weights were trained on (same family and architecture).",
            )


# ---------------------------------------------------------------------------------------------- embeddings


def save_embedding(
    path: Path,
    vectors: Mapping[str, torch.Tensor],
    metadata: Mapping[str, str],
    dtype: torch.dtype = torch.float32,
) -> None:
    """Write a token embedding ({"clip_l": [1, 768], ...}) usable as `embedding:NAME` in a prompt.

    Stored as fp32 by default: the file is tiny and ComfyUI computes the embedding layer output in
    fp32, so the stock path reproduces the trained vector exactly.
    """
    if not vectors:
        raise ValueError("an embedding needs at least one vector")
    tensors = {}
    for key, value in vectors.items():
        tensors[key] = value.detach().to(dtype).reshape(-1, value.shape[-1])
    save_tensors(Path(path), tensors, {**metadata, META_KIND: KIND_EMBEDDING})


def load_embedding(
    path: Path, not_finite_fix: str = NOT_FINITE_FIX
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read an embedding file: {encoder key: [n, width]} plus metadata (NaN or inf is refused)."""
    path = Path(path)
    tensors, metadata = _load_tensors(path, not_finite_fix)
    if not tensors:
        raise TLInputError(str(path), "contains no tensors.", "select an embedding file written by the trainer.")
    for key, value in tensors.items():
        if value.ndim != 2:
            raise TLInputError(
                str(path),
                f"tensor '{key}' has shape {tuple(value.shape)}, expected [tokens, width].",
                "select an embedding file written by the trainer.",
            )
    return tensors, metadata


# ---------------------------------------------------------------------------------------------- checkpoints


def capture_rng(generators: Mapping[str, torch.Generator] | None = None) -> dict[str, torch.Tensor]:
    """The RNG states a resumed run needs: torch CPU, every CUDA device, and the trainer's generators."""
    rng = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for index, state in enumerate(torch.cuda.get_rng_state_all()):
            rng[f"torch_cuda.{index}"] = state
    for name, gen in (generators or {}).items():
        rng[f"generator.{name}"] = gen.get_state()
    return rng


def restore_rng(rng: Mapping[str, torch.Tensor], generators: Mapping[str, torch.Generator] | None = None) -> None:
    """Put back the states saved by `capture_rng` (CUDA states only for devices that exist now)."""
    if "torch_cpu" in rng:
        torch.set_rng_state(rng["torch_cpu"])
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            key = f"torch_cuda.{index}"
            if key in rng:
                torch.cuda.set_rng_state(rng[key], index)
    for name, gen in (generators or {}).items():
        key = f"generator.{name}"
        if key in rng:
            gen.set_state(rng[key])


@dataclass
class TrainingCheckpoint:
    """Everything one resume checkpoint folder holds, loaded into memory."""

    path: Path
    step: int
    kv_deltas: dict[str, torch.Tensor]
    token_vectors: dict[str, dict[str, torch.Tensor]]
    param_names: list[str]
    optimizer_state: dict[str, dict[str, Any]]
    param_groups: list[dict[str, Any]]
    rng: dict[str, torch.Tensor]
    metadata: dict[str, str]
    loss_history: list[dict[str, Any]] = field(default_factory=list)


def checkpoint_dir_name(step: int) -> str:
    return f"{CHECKPOINT_PREFIX}{step:06d}"


def _embedding_file_name(index: int, token: str) -> str:
    """A safe, unique file name for a token such as '<new1>' (the real name lives in the metadata)."""
    safe = re.sub(r"[^A-Za-z0-9_-]+", "_", token).strip("_") or "token"
    return f"{index:02d}_{safe}.safetensors"


def _optimizer_tensors(
    optimizer: torch.optim.Optimizer, param_names: Sequence[str]
) -> tuple[dict[str, torch.Tensor], dict[str, dict[str, Any]], list[dict[str, Any]]]:
    """Split the optimizer state into named tensors, JSON scalars and JSON param groups (no pickle)."""
    state_dict = optimizer.state_dict()
    groups = state_dict["param_groups"]
    count = sum(len(g["params"]) for g in groups)
    if count != len(param_names) or len(set(param_names)) != len(param_names):
        raise ValueError(f"param_names must name each of the optimizer's {count} parameters once, in order")
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, per_param in state_dict["state"].items():
        name = param_names[index]
        for key, value in per_param.items():
            if torch.is_tensor(value):
                tensors[f"optimizer.{name}.{key}"] = value
            else:
                scalars.setdefault(name, {})[key] = value
    named_groups = []
    for group in groups:
        named = {k: (list(v) if isinstance(v, tuple) else v) for k, v in group.items() if k != "params"}
        named["params"] = [param_names[i] for i in group["params"]]
        named_groups.append(named)
    return tensors, scalars, named_groups


def save_training_checkpoint(
    folder: Path,
    step: int,
    kv_deltas: Mapping[str, torch.Tensor],
    token_vectors: Mapping[str, Mapping[str, torch.Tensor]],
    optimizer: torch.optim.Optimizer,
    param_names: Sequence[str],
    rng: Mapping[str, torch.Tensor],
    metadata: Mapping[str, str],
    loss_history: Sequence[Mapping[str, Any]],
) -> Path:
    """Write `folder/checkpoint-<step>/` atomically: K/V deltas, one embedding per token, trainer state.

    Everything is kept in fp32 so that a resumed run continues exactly where it stopped.
    """
    folder = Path(folder)
    repair_checkpoints(folder)
    final = folder / checkpoint_dir_name(step)
    tmp = final.with_name(final.name + TMP_SUFFIX)
    tmp.mkdir(parents=True)
    try:
        save_kv_deltas(tmp / KV_FILE, kv_deltas, metadata, dtype=torch.float32)
        token_files: dict[str, str] = {}
        for index, (token, vectors) in enumerate(token_vectors.items()):
            file_name = _embedding_file_name(index, token)
            save_embedding(tmp / EMBEDDINGS_DIR / file_name, vectors, {**metadata, "token": token})
            token_files[token] = file_name
        opt_tensors, opt_scalars, groups = _optimizer_tensors(optimizer, param_names)
        tensors = dict(opt_tensors)
        tensors.update({f"rng.{k}": v for k, v in rng.items()})
        state_meta = {
            META_KIND: KIND_TRAINER_STATE,
            META_FORMAT: FORMAT_NAME,
            META_FORMAT_VERSION: FORMAT_VERSION,
            META_PACK_VERSION: __version__,
            "step": str(step),
            "param_names": json.dumps(list(param_names)),
            "param_groups": json.dumps(groups),
            "optimizer_scalars": json.dumps(opt_scalars),
            "optimizer_class": type(optimizer).__name__,
            "token_files": json.dumps(token_files),
            "loss_history": json.dumps(list(loss_history)),
            "run_metadata": json.dumps(dict(metadata)),
        }
        save_tensors(tmp / STATE_FILE, tensors, state_meta)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _fsync_tree(tmp)  # every file and folder of the new checkpoint is on the disk before it gets its name
    old = None
    if final.exists():  # a directory cannot be replaced in one step: a kill here is undone by repair_checkpoints
        old = final.with_name(final.name + OLD_SUFFIX + TMP_SUFFIX)
        os.replace(final, old)
    os.replace(tmp, final)
    fsync_folder(folder)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _fsync_tree(root: Path) -> None:
    """Flush every file and folder under `root`, and `root` itself, to the disk."""
    for current, _, file_names in os.walk(root, topdown=False):
        for name in file_names:
            fsync_file(Path(current) / name)
        fsync_folder(Path(current))


def load_training_checkpoint(folder: Path) -> TrainingCheckpoint:
    """Read a folder written by `save_training_checkpoint`."""
    folder = Path(folder)
    if not (folder / STATE_FILE).is_file():
        raise TLInputError(
            str(folder),
            f"is not a training checkpoint (no {STATE_FILE}).",
            "point resume at a run folder or a checkpoint-<step> folder written by the trainer.",
        )
    kv_deltas, _ = load_kv_deltas(folder / KV_FILE, CHECKPOINT_NOT_FINITE_FIX)
    kv_deltas = {k: v.float() for k, v in kv_deltas.items()}
    tensors, meta = _load_tensors(folder / STATE_FILE, CHECKPOINT_NOT_FINITE_FIX)
    try:
        param_names = json.loads(meta["param_names"])
        groups = json.loads(meta["param_groups"])
        scalars = json.loads(meta["optimizer_scalars"])
        token_files = json.loads(meta["token_files"])
        loss_history = json.loads(meta["loss_history"])
        run_metadata = json.loads(meta["run_metadata"])
        step = int(meta["step"])
    except (KeyError, ValueError) as err:
        raise TLInputError(
            str(folder / STATE_FILE), f"has missing or unreadable trainer metadata ({err}).", "resume from another checkpoint."
        ) from None
    token_vectors = {
        token: load_embedding(folder / EMBEDDINGS_DIR / file_name, CHECKPOINT_NOT_FINITE_FIX)[0]
        for token, file_name in token_files.items()
    }
    optimizer_state: dict[str, dict[str, Any]] = {name: dict(values) for name, values in scalars.items()}
    rng: dict[str, torch.Tensor] = {}
    for key, value in tensors.items():
        if key.startswith("rng."):
            rng[key[len("rng.") :]] = value
        elif key.startswith("optimizer."):
            name, state_key = key[len("optimizer.") :].rsplit(".", 1)
            optimizer_state.setdefault(name, {})[state_key] = value
    return TrainingCheckpoint(
        path=folder,
        step=step,
        kv_deltas=kv_deltas,
        token_vectors=token_vectors,
        param_names=param_names,
        optimizer_state=optimizer_state,
        param_groups=groups,
        rng=rng,
        metadata=run_metadata,
        loss_history=loss_history,
    )


def restore_optimizer(
    optimizer: torch.optim.Optimizer, checkpoint: TrainingCheckpoint, param_names: Sequence[str]
) -> None:
    """Load the checkpoint's optimizer state into `optimizer`, whose parameters are named by `param_names`."""
    if sorted(param_names) != sorted(checkpoint.param_names):
        extra = sorted(set(checkpoint.param_names) - set(param_names))
        lacking = sorted(set(param_names) - set(checkpoint.param_names))
        raise TLInputError(
            str(checkpoint.path),
            f"was saved for other trainable weights (only in the checkpoint: {extra[:3]}, only now: {lacking[:3]}).",
            "resume with the same base model, concepts and trained layers, or start a new run.",
        )
    current_groups = optimizer.state_dict()["param_groups"]
    if len(current_groups) != len(checkpoint.param_groups):
        raise TLInputError(
            str(checkpoint.path),
            f"has {len(checkpoint.param_groups)} optimizer groups, the trainer now has {len(current_groups)}.",
            "resume with the same settings, or start a new run.",
        )
    index = {name: i for i, name in enumerate(param_names)}
    groups = []
    for current, saved in zip(current_groups, checkpoint.param_groups, strict=True):
        group = {}
        for key, value in saved.items():
            if key == "params":
                group[key] = [index[name] for name in value]
            elif isinstance(current.get(key), tuple) and isinstance(value, list):
                group[key] = tuple(value)
            else:
                group[key] = value
        if sorted(group["params"]) != sorted(current["params"]):
            raise TLInputError(
                str(checkpoint.path),
                "groups its weights differently from the trainer now.",
                "resume with the same settings, or start a new run.",
            )
        groups.append(group)
    state = {index[name]: dict(values) for name, values in checkpoint.optimizer_state.items()}
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def _is_complete_checkpoint(folder: Path) -> bool:
    """The trainer state is written last, atomically: a folder holding it holds everything."""
    return (folder / STATE_FILE).is_file()


def _checkpoint_leftovers(folder: Path) -> dict[Path, re.Match[str]]:
    """The `checkpoint-<step>.tmp` and `.old.tmp` folders in a checkpoints folder, with their name matches."""
    if not folder.is_dir():
        return {}
    return {child: match for child in sorted(folder.iterdir())
            if child.is_dir() and (match := CHECKPOINT_TMP_RE.match(child.name))}


def _interrupted_replacements(folder: Path) -> dict[Path, Path]:
    """{missing `checkpoint-<step>`: the complete folder that goes back under that name} for every step
    whose re-save was killed between its two renames (the old folder moved aside, the new one not yet in place).

    The new folder wins when it is complete, else the old one. Nothing is moved here.
    """
    restorable: dict[Path, Path] = {}
    for child, match in _checkpoint_leftovers(folder).items():
        final = folder / match.group(1)
        if not match.group(2) or final.exists():
            continue
        new = final.with_name(final.name + TMP_SUFFIX)
        if _is_complete_checkpoint(new):
            restorable[final] = new
        elif _is_complete_checkpoint(child):
            restorable[final] = child
    return restorable


def repair_checkpoints(checkpoints_dir: Path) -> None:
    """Finish or undo what a killed `save_training_checkpoint` left in a folder, and remove its leftovers.

    Re-saving a step moves the old `checkpoint-<step>` aside to `.old.tmp` before the new folder is
    renamed into place; a kill between the two renames leaves neither under the step's name. Then the
    complete new folder is moved into place, or else the old one is moved back. Every other
    `checkpoint-<step>.tmp` or `.old.tmp` folder is an unfinished write or a replaced step and is deleted.
    Only this run's checkpoint folder is touched.
    """
    folder = Path(checkpoints_dir)
    leftovers = _checkpoint_leftovers(folder)
    restored = _interrupted_replacements(folder)
    for final, source in restored.items():
        os.replace(source, final)
    if restored:
        fsync_folder(folder)
    for child in leftovers:
        if child.exists():
            shutil.rmtree(child, ignore_errors=True)


def has_checkpoint_to_resume(checkpoints_dir: Path) -> bool:
    """Whether resuming would find a checkpoint: a complete one, or one that `repair_checkpoints` puts
    back (a re-save killed between its two renames). Read-only, so listing runs never moves a folder
    that a running training may be writing."""
    folder = Path(checkpoints_dir)
    return latest_checkpoint(folder) is not None or bool(_interrupted_replacements(folder))


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The highest-step complete checkpoint folder in `run_dir` (unfinished `.tmp` folders are ignored)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return None
    best: tuple[int, Path] | None = None
    for child in run_dir.iterdir():
        match = CHECKPOINT_RE.match(child.name)
        if match is None or not _is_complete_checkpoint(child):
            continue
        step = int(match.group(1))
        if best is None or step > best[0]:
            best = (step, child)
    return best[1] if best else None
