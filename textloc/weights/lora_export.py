"""The trained K/V deltas as a standard low-rank LoRA file, so any LoRA loader can use a result.

Each delta W (out x in) is factored by its SVD, W = U S V^T, and cut to `rank` r:
up = U[:, :r] sqrt(S[:r]) and down = sqrt(S[:r]) V[:r]^T (the singular values split evenly, so
neither factor leaves fp16's range), alpha = r so that the loader's scale alpha / r is 1. A rank at
or above min(out, in) keeps a layer exact (up to fp16 rounding); the cut is the best rank-r
approximation in the Frobenius norm (Eckart-Young), and its relative error is recorded per layer.

Where the rank is small against the layer (r <= min(out, in) / RANDOMIZED_SVD_MAX_SHARE), the top r
singular triplets come from torch's randomized SVD (torch.svd_lowrank, Halko et al. 2011) with 2r + 8
columns and 2 power iterations: on deltas with the spectra of trained ones its error is the exact
cut's within 0.001 % on a CPU (0.22 % at most on a GPU's looser fp32), at a fraction of the time (an exact
SVD of one of SDXL's 1280 x 2048 layers takes 1-2 s on a CPU thread, the randomized one at rank 16 30 ms).
bench/lora_svd.py measures both per layer shape and rank (bench/README.md). The
random draw is seeded inside a fork of the generator, so an export is repeatable and leaves the
caller's random state as it was.

Keys follow the kohya format with the model's own module names:
`lora_unet_<module path, dots as underscores>.lora_down.weight / .lora_up.weight / .alpha`, e.g.
`lora_unet_input_blocks_1_1_transformer_blocks_0_attn2_to_k.lora_down.weight`. ComfyUI maps these
names for SD1.x, SD2.x and SDXL alike, A1111/Forge find them (their "lora_unet" -> "diffusion_model"
rule), diffusers converts them (its SGM block mapping), and kohya's SDXL LoRAs use the same names.
Tensors are stored in fp16, as nearly every shared LoRA is.

The token embedding is not bundled into the LoRA ("bundle_emb.<token>.string_to_param.*", which
A1111 reads) because ComfyUI's LoRA loaders report such keys as "lora key not loaded". Nor is it put
beside the LoRA: every LoRA list would then offer it as a LoRA. The pair is the LoRA and the run's own
token file, `output/embeddings/<run>/<token>.safetensors`, which ComfyUI's embedding lookup reads as
`embedding:<run>/<token>` (written here when the trainer's copy is missing). The LoRA's metadata names
that file (`embeddings`) and the prompt to type (`trigger`).

An export never replaces another run's file: a file of the same name is replaced only when its
metadata says it came from the same run (e.g. the run exported again after a resume).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import torch

from ..errors import TLInputError
from ..training.run_files import PACK_FOLDER, RUN_NAME, RunFiles
from .files import (
    META_KIND,
    MODEL_PREFIX,
    NOT_FINITE_FIX,
    WEIGHT_SUFFIX,
    build_metadata,
    metadata_value,
    read_metadata,
    save_embedding,
    save_tensors,
)
from .trained import TrainedWeights, same_run

LORA_PREFIX = "lora_unet_"
DOWN_SUFFIX = ".lora_down.weight"
UP_SUFFIX = ".lora_up.weight"
ALPHA_SUFFIX = ".alpha"
LORA_DTYPE = torch.float16
KIND_KV_LORA = "kv_lora"
# The largest rank any supported family's K/V layer can use: a layer's limit is its smaller side, at most
# 768 on SD1.x (text width), 1024 on SD2.x and 1280 on SDXL (1280 x 2048). A larger rank keeps every layer
# exact, as its own limit does.
MAX_RANK = 1280
# The randomized SVD serves ranks up to a layer's smaller side / this share; above, the exact SVD is as fast.
RANDOMIZED_SVD_MAX_SHARE = 4
RANDOMIZED_SVD_OVERSAMPLING = 2  # columns drawn per kept rank, plus a few (q = 2r + 8)
RANDOMIZED_SVD_EXTRA_COLUMNS = 8
RANDOMIZED_SVD_POWER_ITERATIONS = 2
RANDOMIZED_SVD_SEED = 0
SVD_RULE = (f"torch.svd_lowrank (q = {RANDOMIZED_SVD_OVERSAMPLING} x rank + {RANDOMIZED_SVD_EXTRA_COLUMNS}, "
            f"{RANDOMIZED_SVD_POWER_ITERATIONS} power iterations, seed {RANDOMIZED_SVD_SEED}) where rank <= smaller "
            f"side / {RANDOMIZED_SVD_MAX_SHARE}, else torch.linalg.svd")

Factors = tuple[torch.Tensor, torch.Tensor]


def lora_module_name(model_key: str) -> str:
    """`diffusion_model.X.Y.weight` -> `lora_unet_X_Y` (the kohya name of the module ComfyUI maps back)."""
    if not model_key.startswith(MODEL_PREFIX) or not model_key.endswith(WEIGHT_SUFFIX):
        raise ValueError(f"expected a model key like 'diffusion_model.<module>.weight', got '{model_key}'")
    return LORA_PREFIX + model_key[len(MODEL_PREFIX): -len(WEIGHT_SUFFIX)].replace(".", "_")


def check_rank(rank: int) -> int:
    """A LoRA needs at least one rank; say so by the input's name instead of failing inside the SVD."""
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise TLInputError("rank", f"{rank!r} is not a usable LoRA rank; it must be a whole number of 1 or more.",
                           "set rank to 1 or more (16 is the usual size; a rank at or above a layer's "
                           "smaller side keeps that layer exact).")
    return rank


def randomized_svd_columns(rank: int) -> int:
    """How many random columns the randomized SVD draws for `rank`: enough for every kept direction to
    converge in 2 power iterations on trained deltas' slowly falling spectra (bench/lora_svd.py)."""
    return RANDOMIZED_SVD_OVERSAMPLING * rank + RANDOMIZED_SVD_EXTRA_COLUMNS


def uses_randomized_svd(shape: tuple[int, ...], rank: int, device: torch.device) -> bool:
    """Whether the top `rank` triplets of a matrix of `shape` come from the randomized SVD.

    Only where it is measured faster (a rank of at most a quarter of the smaller side, drawing fewer
    columns than that side has) and where its random draw can be seeded without touching another
    device's generator (CPU and CUDA).
    """
    smaller_side = min(shape)
    return (device.type in ("cpu", "cuda") and rank * RANDOMIZED_SVD_MAX_SHARE <= smaller_side
            and randomized_svd_columns(rank) < smaller_side)


@contextmanager
def _seeded_random_state(device: torch.device) -> Iterator[None]:
    """Seed the generator torch.svd_lowrank draws from (the device's default one) inside a fork of it,
    so the same delta gives the same factors and the caller's random state is restored afterwards."""
    if device.type == "cpu":
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(RANDOMIZED_SVD_SEED)
            yield
        return
    index = device.index if device.index is not None else torch.cuda.current_device()
    with torch.random.fork_rng(devices=[index], device_type="cuda"):
        torch.cuda.default_generators[index].manual_seed(RANDOMIZED_SVD_SEED)
        yield


def _top_singular_triplets(matrix: torch.Tensor, kept: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(U [out, kept], S [kept], V^T [kept, in]) of the `kept` largest singular values of `matrix`."""
    if uses_randomized_svd(tuple(matrix.shape), kept, matrix.device):
        with _seeded_random_state(matrix.device):
            u, s, v = torch.svd_lowrank(matrix, q=randomized_svd_columns(kept),
                                        niter=RANDOMIZED_SVD_POWER_ITERATIONS)
        return u[:, :kept], s[:kept], v[:, :kept].T
    u, s, vh = torch.linalg.svd(matrix, full_matrices=False)
    return u[:, :kept], s[:kept], vh[:kept]


def low_rank_factors(delta: torch.Tensor, rank: int) -> Factors:
    """(up [out, r], down [r, in]) in fp32 with up @ down the best rank-r approximation of `delta`.

    r = min(rank, out, in): a rank at or above the matrix's smaller side gives the matrix back.
    The SVD runs in fp32 on the delta's own device (a GPU when the weights live there); a small rank
    takes the randomized SVD (see the module's docstring).
    """
    check_rank(rank)
    if delta.ndim != 2:
        raise ValueError(f"a K/V delta must be a matrix, got shape {tuple(delta.shape)}")
    matrix = delta.detach().to(torch.float32)
    kept = min(rank, *matrix.shape)
    u, s, vh = _top_singular_triplets(matrix, kept)
    root = s.sqrt()
    return u * root, root[:, None] * vh


def relative_error(delta: torch.Tensor, up: torch.Tensor, down: torch.Tensor) -> float:
    """||delta - up @ down||_F / ||delta||_F in fp32 (0 for a zero delta, which the factors reproduce)."""
    target = delta.detach().to(torch.float32)
    norm = torch.linalg.matrix_norm(target)
    if float(norm) == 0.0:
        return 0.0
    approx = up.to(target.device, torch.float32) @ down.to(target.device, torch.float32)
    return float(torch.linalg.matrix_norm(target - approx) / norm)


def kv_lora_tensors(
    kv_deltas: Mapping[str, torch.Tensor], rank: int, dtype: torch.dtype = LORA_DTYPE
) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """(LoRA file tensors, relative Frobenius error per model key) for K/V deltas keyed by model key.

    The errors are those of the factors as stored (in `dtype`), i.e. of what a loader applies.
    """
    check_rank(rank)
    if not kv_deltas:
        raise TLInputError("tl_result", "holds no K/V deltas to export.",
                           "connect the trainer's tl_result (or train with the K/V layers on).")
    tensors: dict[str, torch.Tensor] = {}
    errors: dict[str, float] = {}
    for model_key, delta in kv_deltas.items():
        name = lora_module_name(model_key)
        if not bool(torch.isfinite(delta).all()):
            raise TLInputError("tl_result", f"the K/V delta '{model_key}' holds NaN or infinite values "
                               "(weights like these make every image black).", NOT_FINITE_FIX)
        up, down = (f.to(dtype) for f in low_rank_factors(delta, rank))
        tensors[name + UP_SUFFIX] = up.cpu()
        tensors[name + DOWN_SUFFIX] = down.cpu()
        tensors[name + ALPHA_SUFFIX] = torch.tensor(float(down.shape[0]), dtype=dtype)
        errors[model_key] = relative_error(delta, up, down)
    return tensors, errors


def lora_file_name(base_name: str, rank: int) -> str:
    """`<base>_lora_r<rank>.safetensors`: the rank in the name, so exports of one run sit side by side."""
    return f"{base_name}_lora_r{check_rank(rank)}.safetensors"


def run_name_of(weights: TrainedWeights) -> str:
    """The training run a result comes from: as recorded, else its K/V file's name (older results)."""
    recorded = weights.metadata.get("run_name")
    if recorded:
        return recorded
    return weights.kv_path.stem if weights.kv_path is not None else "_".join(weights.tokens) or "tl"


def export_base_name(weights: TrainedWeights, file_name: str = "") -> str:
    """The name an export starts with: `file_name` if given, else the run's name."""
    name = file_name.strip() or run_name_of(weights)
    if not RUN_NAME.match(name):
        raise TLInputError("file_name", f"'{name}' is not a usable file name.",
                           "use letters, digits, '_', '-' or '.', e.g. tl_ball_run (or leave it empty for the "
                           "run's name).")
    return name


def export_path(output_dir: Path, base_name: str, rank: int) -> Path:
    """`output/loras/textual_localization/<base>_lora_r<rank>.safetensors`, beside the full K/V files."""
    return Path(output_dir) / "loras" / PACK_FOLDER / lora_file_name(base_name, rank)


def export_trigger(weights: TrainedWeights, run: RunFiles) -> str:
    """What to type for the exported LoRA's tokens: 'embedding:tl_ball_run/tl_ball ball'."""
    tokens = weights.tokens
    class_words = metadata_value(weights.metadata, "class_words", [])
    if not isinstance(class_words, list) or len(class_words) != len(tokens):
        class_words = [""] * len(tokens)
    return " and ".join(f"embedding:{run.embedding_name(t)} {c}".strip()
                        for t, c in zip(tokens, class_words, strict=True))


def _from_the_same_run(existing: Mapping[str, str], new: Mapping[str, str]) -> bool:
    """Run names are unique in an output folder, so one name means one run (resumed or not); files from
    before run names were recorded are compared by the rest of their run's metadata."""
    if "run_name" in existing and "run_name" in new:
        return existing["run_name"] == new["run_name"]
    return same_run(existing, new, ignore=("steps",))


def _refuse_another_runs_file(path: Path, run_meta: Mapping[str, str]) -> None:
    if not path.exists():
        return
    try:
        existing = read_metadata(path)
    except (OSError, ValueError):
        existing = {}
    if not _from_the_same_run(existing, run_meta):
        owner = existing.get("run_name")
        raise TLInputError(
            str(path),
            f"already exists and holds {f'run {owner!r}' if owner else 'another file'}, not this run "
            f"'{run_meta.get('run_name', '?')}'; an export never replaces another run's file.",
            "set Export TL LoRA's file_name to another name, or move that file away.",
        )


def save_kv_lora(path: Path, weights: TrainedWeights, rank: int, output_dir: Path) -> list[Path]:
    """Write `weights` as a LoRA at `path`; return it and the run's token files (LoRA first).

    The tokens stay in the run's folder of `output_dir`/embeddings (written there if missing), where no
    LoRA list looks. Writes are atomic; a file of the same name is replaced only when it came from the
    same run. The LoRA's metadata carries the run's metadata plus the rank, the per-layer relative
    error, the token files and the prompt to type.
    """
    path = Path(path)
    tensors, errors = kv_lora_tensors(weights.kv_deltas, rank)
    run = RunFiles(run_name_of(weights), Path(output_dir))
    token_files = {token: run.embedding_path(token) for token in weights.token_vectors}
    run_meta = {k: v for k, v in weights.metadata.items() if k != META_KIND}
    for file in [path, *token_files.values()]:
        _refuse_another_runs_file(file, run_meta)
    values = list(errors.values())
    kept = max(int(t.shape[0]) for key, t in tensors.items() if key.endswith(DOWN_SUFFIX))
    lora_meta = {
        **run_meta,
        **build_metadata(
            rank=rank,
            largest_rank_kept=kept,
            svd=SVD_RULE,
            lora_key_format="kohya lora_unet_<module path with _>, lora_down/lora_up/alpha, alpha = rank",
            lora_dtype=str(LORA_DTYPE).removeprefix("torch."),
            relative_errors={lora_module_name(k): round(v, 6) for k, v in errors.items()},
            relative_error_mean=round(sum(values) / len(values), 6),
            relative_error_max=round(max(values), 6),
            embeddings={token: file.relative_to(run.embeddings_root).as_posix() for token, file in token_files.items()},
            trigger=export_trigger(weights, run),
        ),
        # What kohya's own tools and the A1111/Forge info panels read to show a LoRA's size.
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(kept),
        "ss_network_alpha": str(kept),
        META_KIND: KIND_KV_LORA,
    }
    for token, file in token_files.items():
        if not file.exists():  # the trainer wrote it; a result whose file was removed gets it back
            save_embedding(file, weights.token_vectors[token], {**run_meta, "token": token})
    save_tensors(path, tensors, lora_meta)
    return [path, *token_files.values()]
