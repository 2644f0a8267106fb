"""Scores for generated images, computed the way the paper's evaluation does (method notes §5.2).

- CLIP-I: mean cosine similarity over all (generated, reference) pairs of CLIP ViT-L/14's pooled
  image feature *before* the projection (`CLIPVisionModel(...).pooler_output`).
- CLIP-T: mean cosine similarity between each generated image's projected CLIP image embedding and
  the projected text embedding of the prompt with the identifier tokens replaced by a space.
- KID: torchmetrics' KernelInceptionDistance (subset size 5 as in the paper) on 299x299 images in
  [0, 1], references as the real set; only where torchmetrics and its Inception weights exist.
- Attention overlap: the share of a token's attention inside its object's mask, and the IoU of the
  thresholded map with it (textloc.attention.localization), when maps and masks are given.

The encoders arrive as ComfyUI objects (a CLIP vision model, a CLIP) and are used through their
public methods only; nothing here imports ComfyUI.
"""

from __future__ import annotations

import re
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from kornia.geometry.transform import resize
from safetensors import safe_open
from safetensors.torch import load_file

from ..attention.localization import attention_iou, attention_mass_inside
from ..attention.token_attention import EMBEDDING_PREFIX
from ..errors import TLInputError

KID_SUBSET_SIZE = 5  # the paper's: its 5 reference photos form one subset
KID_SUBSETS = 100  # torchmetrics' default
KID_IMAGE_SIZE = 299
INCEPTION_WEIGHTS_NAME = "weights-inception-2015-12-05-6726825d.pth"  # torch-fidelity's FID Inception
CLIP_TEXT_WIDTH = 768  # CLIP ViT-L/14's text tower, the one SD1.x (and SDXL's clip_l) carries
ENCODE_CHUNK = 8
_EMBEDDING_RE = re.compile(rf"\(?{re.escape(EMBEDDING_PREFIX)}[^\s,()]+(?::[0-9.]+)?\)?", re.IGNORECASE)


@dataclass
class EvaluationScores:
    """One prompt's scores; a score that could not be computed is None and its reason is in `notes`."""

    prompt: str
    text_for_clip_t: str
    generated: int
    references: int
    clip_i: float | None = None
    clip_t: float | None = None
    kid_mean: float | None = None
    kid_std: float | None = None
    attention_inside: float | None = None
    attention_iou: float | None = None
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def as_text(self) -> str:
        def show(value: float | None, digits: int = 4) -> str:
            return "n/a" if value is None else f"{value:.{digits}f}"

        kid = show(self.kid_mean) if self.kid_std is None else f"{show(self.kid_mean)} +- {show(self.kid_std)}"
        lines = [
            f"prompt: {self.prompt}",
            f"CLIP-T text: {self.text_for_clip_t}",
            f"images: {self.generated} generated, {self.references} references",
            f"CLIP-I: {show(self.clip_i)}",
            f"CLIP-T: {show(self.clip_t)}",
            f"KID: {kid}",
            f"attention inside mask: {show(self.attention_inside, 3)}",
            f"attention IoU: {show(self.attention_iou, 3)}",
        ]
        return "\n".join(lines + [f"note: {note}" for note in self.notes])


def mean_scores(scores: list[EvaluationScores]) -> dict[str, float | None]:
    """The paper's aggregation: each metric per prompt, then the mean over prompts (Nones skipped)."""
    names = ("clip_i", "clip_t", "kid_mean", "attention_inside", "attention_iou")
    means: dict[str, float | None] = {}
    for name in names:
        values = [getattr(s, name) for s in scores if getattr(s, name) is not None]
        means[name] = sum(values) / len(values) if values else None
    return means


# ---------------------------------------------------------------------------------------------- text


def text_for_clip_t(prompt: str) -> str:
    """The prompt with every identifier token (`embedding:NAME`, with or without a weight) replaced
    by a space, so the class noun stays: 'photo of a embedding:tl_ball ball' -> 'photo of a ball'."""
    return " ".join(_EMBEDDING_RE.sub(" ", prompt).split())


# ---------------------------------------------------------------------------------------------- CLIP


def _unit(features: torch.Tensor) -> torch.Tensor:
    return F.normalize(features.float(), dim=-1)


def mean_pairwise_cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean cosine similarity over all pairs of rows of a [N, D] and b [M, D]."""
    return (_unit(a) @ _unit(b).T).mean().item()


def clip_image_features(clip_vision: Any, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(pooled before projection, projected embedding) per image of an IMAGE batch [N, H, W, 3].

    ComfyUI's ClipVisionModel.encode_image resizes the short side to 224 and centre-crops, as CLIP's
    own processor does. It returns the projected `image_embeds` and the encoder's last hidden state;
    the pooled feature the paper's CLIP-I uses (HF's pooler_output) is the class token of that state
    after the model's post-layernorm, which is applied here as CLIPVision.forward does.
    """
    post_layernorm = clip_vision.model.vision_model.post_layernorm
    pooled, projected = [], []
    with torch.no_grad():
        for start in range(0, images.shape[0], ENCODE_CHUNK):
            out = clip_vision.encode_image(images[start : start + ENCODE_CHUNK])
            device = next(post_layernorm.parameters()).device
            pooled.append(post_layernorm(out["last_hidden_state"][:, 0].to(device)).float().cpu())
            projected.append(out["image_embeds"].float().cpu())
    return torch.cat(pooled), torch.cat(projected)


def read_text_projection(path: Path) -> torch.Tensor | None:
    """CLIP's text projection P (text_embeds = pooled @ P) from a full CLIP file, else None.

    openai/clip-vit-large-patch14's model.safetensors stores it as `text_projection.weight` (a
    Linear, so P is its transpose); the original OpenAI layout stores `text_projection` as P.
    """
    with safe_open(str(path), framework="pt") as handle:
        keys = set(handle.keys())
        if "text_projection.weight" in keys:
            return handle.get_tensor("text_projection.weight").float().T.contiguous()
        if "text_projection" in keys:
            return handle.get_tensor("text_projection").float()
    return None


def _clip_l(clip: Any) -> tuple[Any, Any]:
    """The CLIP ViT-L/14 text tower of a ComfyUI CLIP and its tokenizer (SD1.x, SDXL's clip_l)."""
    model = getattr(clip.cond_stage_model, "clip_l", None)
    tokenizer = getattr(clip.tokenizer, "clip_l", None)
    if model is None or tokenizer is None:
        raise TLInputError(
            "clip",
            "has no CLIP ViT-L/14 text encoder (clip_l); CLIP-T is defined with ViT-L/14's text tower "
            "(SD2.x checkpoints carry OpenCLIP ViT-H instead).",
            "connect an SD1.x or SDXL checkpoint's CLIP, or load clip_l.safetensors with Load CLIP.",
        )
    return model, tokenizer


def clip_text_features(clip: Any, texts: list[str], projection: torch.Tensor) -> torch.Tensor:
    """Projected CLIP text embeddings [N, D] from the CLIP's own ViT-L/14 text tower.

    The pooled feature is taken before ComfyUI's own text projection (SD1.x files do not carry one)
    and projected with `projection` from the CLIP file the image side uses.
    """
    model, tokenizer = _clip_l(clip)
    if projection.shape[0] != CLIP_TEXT_WIDTH or getattr(model, "num_layers", 12) != 12:
        raise TLInputError(
            "clip", f"its clip_l text tower does not fit the CLIP file's text projection {tuple(projection.shape)}.",
            "use CLIP ViT-L/14 on both sides (openai/clip-vit-large-patch14).",
        )
    clip.load_model()
    pooled = []
    model.set_clip_options({"projected_pooled": False})
    try:
        for text in texts:
            _, pooled_one = model.encode_token_weights(tokenizer.tokenize_with_weights(text))
            pooled.append(pooled_one.float().cpu()[:1])
    finally:
        model.reset_clip_options()
    return torch.cat(pooled) @ projection


# ---------------------------------------------------------------------------------------------- KID


def kid_images(images: torch.Tensor) -> torch.Tensor:
    """IMAGE [N, H, W, 3] in [0, 1] -> [N, 3, 299, 299] uint8, what torch-fidelity's Inception takes."""
    batch = images[..., :3].movedim(-1, 1).float()
    batch = resize(batch, (KID_IMAGE_SIZE, KID_IMAGE_SIZE), interpolation="bilinear", antialias=True)
    return (batch.clamp(0, 1) * 255).round().to(torch.uint8)


def find_inception_weights(folders: list[Path]) -> Path | None:
    """torch-fidelity's Inception weights (.pth, or a .safetensors copy) in the given folders."""
    stem = Path(INCEPTION_WEIGHTS_NAME).stem
    for folder in folders:
        for name in (INCEPTION_WEIGHTS_NAME, f"{stem}.safetensors"):
            if (Path(folder) / name).is_file():
                return Path(folder) / name
    return None


def read_inception_weights(path: Path) -> dict[str, torch.Tensor]:
    """The Inception state dict from a .safetensors file, or a .pth read with weights_only=True, which
    refuses pickled code (torch-fidelity itself would unpickle the file without that guard)."""
    try:
        if path.suffix.lower() == ".safetensors":
            return load_file(str(path))
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - every unreadable file gets the same advice
        raise TLInputError(str(path), f"could not be read as plain Inception weights ({error}).",
                           f"use torch-fidelity's released {INCEPTION_WEIGHTS_NAME} or a safetensors copy of it.") from error
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise TLInputError(str(path), "does not hold a plain state dict of tensors.",
                           f"use torch-fidelity's released {INCEPTION_WEIGHTS_NAME}.")
    return state


def inception_feature_extractor(weights: Path) -> torch.nn.Module:
    """torch-fidelity's FID/KID Inception v3 (2048 features), through torchmetrics, from a local file.

    torch-fidelity loads weights from a path only; it gets a copy written here from the checked tensors.
    """
    from torchmetrics.image.fid import NoTrainInceptionV3

    state = read_inception_weights(Path(weights))
    with tempfile.TemporaryDirectory() as folder:
        checked = Path(folder) / INCEPTION_WEIGHTS_NAME
        torch.save(state, checked)
        try:
            return NoTrainInceptionV3(name="inception-v3-compat", features_list=["2048"],
                                      feature_extractor_weights_path=str(checked))
        except RuntimeError as error:  # load_state_dict: missing or misshapen tensors
            raise TLInputError(str(weights), f"does not fit torch-fidelity's Inception v3 ({error}).",
                               f"use torch-fidelity's released {INCEPTION_WEIGHTS_NAME}.") from error


def kid_score(
    references: torch.Tensor,
    generated: torch.Tensor,
    features: Callable[[torch.Tensor], torch.Tensor] | torch.nn.Module,
    subset_size: int = KID_SUBSET_SIZE,
    subsets: int = KID_SUBSETS,
    seed: int = 0,
) -> tuple[float, float]:
    """(kid_mean, kid_std) with torchmetrics' KernelInceptionDistance; `features` maps the uint8
    [N, 3, 299, 299] batches to [N, D] features. The subsets are drawn from a fixed seed."""
    from torchmetrics.image.kid import KernelInceptionDistance

    count = min(references.shape[0], generated.shape[0])
    if count < 2:
        raise TLInputError("images", f"KID needs at least 2 generated and 2 reference images; got {count}.",
                           "generate a batch of images (the paper uses 50 per prompt against 5 references).")
    module = features if isinstance(features, torch.nn.Module) else _FeatureModule(features)
    with warnings.catch_warnings():  # "saves all features in a buffer": a handful of images here
        warnings.simplefilter("ignore", UserWarning)
        metric = KernelInceptionDistance(feature=module, subsets=subsets, subset_size=min(subset_size, count))
    with torch.no_grad():
        metric.update(kid_images(references), real=True)
        metric.update(kid_images(generated), real=False)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            mean, std = metric.compute()
    return mean.item(), std.item()


class _FeatureModule(torch.nn.Module):
    def __init__(self, extract: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.extract = extract

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.extract(images)


# ---------------------------------------------------------------------------------------------- all


@dataclass
class Encoders:
    """What the scores need; a missing piece skips its score with a note saying how to get it."""

    clip_vision: Any | None = None
    clip: Any | None = None
    text_projection: torch.Tensor | None = None
    kid_features: Callable[[torch.Tensor], torch.Tensor] | torch.nn.Module | None = None
    missing: dict[str, str] = field(default_factory=dict)  # score name -> why it is not computed


def _check_images(images: torch.Tensor, name: str) -> None:
    if images.ndim != 4 or images.shape[-1] < 3 or images.shape[0] == 0:
        raise TLInputError(name, f"is not a batch of RGB images (shape {tuple(images.shape)}).",
                           "connect an IMAGE output, e.g. VAE Decode or Load Image.")


def evaluate(
    prompt: str,
    generated: torch.Tensor,
    references: torch.Tensor,
    encoders: Encoders,
    attention_maps: torch.Tensor | None = None,
    object_masks: torch.Tensor | None = None,
    reference_pooled: torch.Tensor | None = None,
) -> EvaluationScores:
    """Every score the encoders allow for one prompt's generated images against the reference photos.

    `reference_pooled` (clip_image_features(...)[0] of the references) spares encoding the same
    photos again for every prompt.
    """
    _check_images(generated, "images")
    _check_images(references, "reference_images")
    text = text_for_clip_t(prompt)
    scores = EvaluationScores(prompt=prompt, text_for_clip_t=text, generated=generated.shape[0],
                              references=references.shape[0])
    scores.notes.extend(encoders.missing.values())
    if encoders.clip_vision is not None:
        gen_pooled, gen_projected = clip_image_features(encoders.clip_vision, generated)
        if reference_pooled is None:
            reference_pooled = clip_image_features(encoders.clip_vision, references)[0]
        scores.clip_i = mean_pairwise_cosine(gen_pooled, reference_pooled)
        if encoders.clip is not None and encoders.text_projection is not None:
            text_embedding = clip_text_features(encoders.clip, [text], encoders.text_projection)
            if text_embedding.shape[-1] != gen_projected.shape[-1]:
                raise TLInputError(
                    "clip_vision", f"its image embedding ({gen_projected.shape[-1]}) and the text embedding "
                    f"({text_embedding.shape[-1]}) differ in size: they are not one CLIP model.",
                    "use the full CLIP ViT-L/14 file (openai/clip-vit-large-patch14).")
            scores.clip_t = mean_pairwise_cosine(gen_projected, text_embedding)
    if encoders.kid_features is not None:
        scores.kid_mean, scores.kid_std = kid_score(references, generated, encoders.kid_features)
    if attention_maps is not None and object_masks is not None:
        maps, masks = _paired_maps(attention_maps, object_masks)
        scores.attention_inside = attention_mass_inside(maps, masks).mean().item()
        scores.attention_iou = attention_iou(maps, masks).mean().item()
    elif (attention_maps is None) != (object_masks is None):
        scores.notes.append("attention overlap needs both attention_maps and object_masks.")
    return scores


def _paired_maps(maps: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Maps [N, H, W] and masks [M, h, w]: one mask per map, or one mask for all."""
    if maps.ndim == 2:
        maps = maps[None]
    if masks.ndim == 2:
        masks = masks[None]
    if masks.shape[0] not in (1, maps.shape[0]):
        raise TLInputError("object_masks", f"holds {masks.shape[0]} masks for {maps.shape[0]} attention maps.",
                           "give one mask per map (same order) or a single mask for all.")
    if masks.shape[0] == 1:
        masks = masks.expand(maps.shape[0], -1, -1)
    return maps.float(), masks.float()
