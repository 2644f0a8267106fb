"""Evaluate TL Images: the paper's scores (CLIP-I, CLIP-T, KID, attention overlap) for generated images.

Thin adapter: finding and loading the encoders; the scores live in `textloc.evaluation.scores`.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import folder_paths
import torch
from comfy_api.latest import io

from ..textloc import host
from ..textloc.errors import TLInputError
from ..textloc.evaluation.scores import (
    INCEPTION_WEIGHTS_NAME,
    Encoders,
    evaluate,
    find_inception_weights,
    inception_feature_extractor,
    read_text_projection,
)
from ..textloc.training.run_files import RUN_NAME
from ..textloc.weights.files import atomic_write_text, file_stamp
from .common import CATEGORY_ROOT

NONE = "none"
KID_MODES = ("auto", "off")
_loaded: dict[str, tuple[tuple, Any]] = {}


def _load_once(kind: str, path: Path, load: Callable[[Path], Any]) -> Any:
    """What `load` made of a file, kept between runs while the file is unchanged (one per kind): a
    ViT-L/14 or an Inception network takes seconds to read. ComfyUI's model management still moves
    the CLIP vision model on and off the GPU."""
    key = (str(path), *file_stamp(path))
    if kind not in _loaded or _loaded[kind][0] != key:
        _loaded[kind] = (key, load(path))
    return _loaded[kind][1]


def _encoders(clip, clip_vision_name: str, kid: str) -> Encoders:
    encoders = Encoders(clip=clip)
    if clip_vision_name == NONE:
        encoders.missing["clip"] = ("CLIP-I and CLIP-T need a CLIP vision model: put openai/clip-vit-large-patch14's "
                                    "model.safetensors into models/clip_vision/ and pick it.")
    else:
        path = folder_paths.get_full_path("clip_vision", clip_vision_name)
        if path is None:
            raise TLInputError("clip_vision_name", f"'{clip_vision_name}' is not in models/clip_vision/.",
                               "pick a file from the list (refresh the page after adding one).")
        try:
            encoders.clip_vision = _load_once("clip_vision", Path(path), host.load_clip_vision)
        except ValueError as error:
            raise TLInputError("clip_vision_name", f"{error}.",
                               "use CLIP ViT-L/14 (openai/clip-vit-large-patch14), as the paper does.") from error
        encoders.text_projection = _load_once("text_projection", Path(path), read_text_projection)
        if encoders.text_projection is None:
            encoders.missing["clip_t"] = (f"CLIP-T needs CLIP's text projection, which {clip_vision_name} does not hold "
                                          "(an image-tower-only file): use the full model.safetensors of "
                                          "openai/clip-vit-large-patch14.")
    if kid not in KID_MODES:  # ComfyUI does not check a V3 dropdown's value
        raise TLInputError("kid", f"'{kid}' is not a KID mode.", f"choose one of {', '.join(KID_MODES)}.")
    if kid == "off":
        return encoders
    if importlib.util.find_spec("torchmetrics") is None or importlib.util.find_spec("torch_fidelity") is None:
        encoders.missing["kid"] = "KID needs the torchmetrics and torch-fidelity packages: pip install torchmetrics torch-fidelity."
        return encoders
    folders = host.inception_weight_folders()
    weights = find_inception_weights(folders)
    if weights is None:
        encoders.missing["kid"] = (f"KID needs the Inception weights {INCEPTION_WEIGHTS_NAME} (torch-fidelity's "
                                   f"release files) in {folders[0]}.")
        return encoders
    encoders.kid_features = _load_once("inception", weights, inception_feature_extractor)
    return encoders


def _number(value: float | None) -> float:
    return float("nan") if value is None else value


class EvaluateTLImages(io.ComfyNode):
    """Score generated images against the concept's photos the way the paper does."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="TL_EvaluateImages",
            display_name="Evaluate TL Images (CLIP-I, CLIP-T, KID)",
            category=f"{CATEGORY_ROOT}/evaluate",
            description=(
                "The paper's scores for images generated with a learned concept. CLIP-I: how much the images look "
                "like the reference photos (CLIP ViT-L/14 image features). CLIP-T: how well they match the prompt "
                "with the identifier removed ('photo of a embedding:tl_ball ball' -> 'photo of a ball'). KID: "
                "distance of the image sets (needs torchmetrics, torch-fidelity and their Inception weights). "
                "With attention maps and object masks also the share of the token's attention on its object. "
                "Scores that cannot be computed are NaN, and the report says why."
            ),
            is_output_node=True,
            inputs=[
                io.Image.Input("images", tooltip="The generated images of one prompt (the paper uses 50)."),
                io.Image.Input("reference_images", tooltip="Photos of the concept (the paper uses 5)."),
                io.Clip.Input("clip", tooltip=(
                    "The checkpoint's CLIP: its ViT-L/14 text tower encodes the prompt for CLIP-T (SD1.x, SDXL).")),
                io.Combo.Input("clip_vision_name", options=[NONE, *folder_paths.get_filename_list("clip_vision")],
                               default=NONE, tooltip=(
                                   "CLIP ViT-L/14 in models/clip_vision/, loaded with ComfyUI's CLIP vision loader. "
                                   "The full openai/clip-vit-large-patch14 model.safetensors also gives CLIP-T.")),
                io.String.Input("prompt", multiline=True, default="photo of a embedding:tl_ball ball",
                                tooltip="The prompt the images were generated with; embedding:NAME words are removed."),
                io.Combo.Input("kid", options=list(KID_MODES), default="auto", tooltip=(
                    "auto: compute KID when torchmetrics, torch-fidelity and the Inception weights are installed; "
                    "off: skip it.")),
                io.String.Input("save_name", default="", tooltip=(
                    "When set, the scores are also written to output/textual_localization/evaluation/<name>.json.")),
                io.Mask.Input("attention_maps", optional=True, tooltip=(
                    "Show Token Attention's maps of the learned token (one word), e.g. over the training photos.")),
                io.Mask.Input("object_masks", optional=True, tooltip=(
                    "The object's masks for those maps (one per map, or one for all), e.g. Mask Target's mask.")),
            ],
            outputs=[
                io.String.Output(display_name="report", tooltip="Every score and why any is missing."),
                io.Float.Output(display_name="clip_i", tooltip=(
                    "CLIP-I: mean cosine of CLIP ViT-L/14 image features, generated vs reference (higher = "
                    "closer to your photos); NaN when it could not be computed (the report says why).")),
                io.Float.Output(display_name="clip_t", tooltip=(
                    "CLIP-T: mean cosine of image and prompt features, the prompt without its identifier "
                    "(higher = the pictures follow the text); NaN when not computable.")),
                io.Float.Output(display_name="kid", tooltip=(
                    "KID: kernel inception distance to the reference photos (lower = closer); NaN unless "
                    "torchmetrics, torch-fidelity and Inception weights are installed.")),
                io.Float.Output(display_name="attention_inside", tooltip=(
                    "Share of the token's attention inside the object masks (1 = all of it); NaN without "
                    "attention_maps and object_masks.")),
            ],
        )

    @classmethod
    def validate_inputs(cls, clip_vision_name: str) -> bool:
        """A name missing from the list (a workflow shared from another machine) gets this pack's
        error at run time, which says where the file belongs."""
        return True

    @classmethod
    def execute(cls, images: torch.Tensor, reference_images: torch.Tensor, clip, clip_vision_name: str,
                prompt: str, kid: str, save_name: str, attention_maps: torch.Tensor | None = None,
                object_masks: torch.Tensor | None = None) -> io.NodeOutput:
        encoders = _encoders(clip, clip_vision_name, kid)
        scores = evaluate(prompt, images, reference_images, encoders, attention_maps, object_masks)
        report = scores.as_text()
        if save_name.strip():
            name = save_name.strip()
            if not RUN_NAME.match(name):
                raise TLInputError("save_name", f"'{name}' is not a usable file name.",
                                   "use letters, digits, '_', '-' or '.', starting with a letter or digit.")
            path = host.output_directory() / "textual_localization" / "evaluation" / f"{name}.json"
            atomic_write_text(path, json.dumps(scores.as_dict(), indent=2))
            report += f"\nsaved: {path}"
        return io.NodeOutput(report, _number(scores.clip_i), _number(scores.clip_t), _number(scores.kid_mean),
                             _number(scores.attention_inside), ui={"text": [report]})
