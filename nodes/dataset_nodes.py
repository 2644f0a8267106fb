"""Dataset nodes: load a multi-concept photo set and attach one concept (token + mask) to it.

Thin adapters: reading, checks and mask work live in `textloc.data.dataset` / `textloc.data.masks`.
"""

from __future__ import annotations

from pathlib import Path

import folder_paths
import torch
from comfy_api.latest import io, ui

from ..textloc.data.dataset import build_concept, folder_fingerprint, load_class_images, load_dataset
from ..textloc.data.masks import overlay
from ..textloc.data.set_folders import folder_choices
from .common import CATEGORY_ROOT, DATASET_TYPE

TLDataset = io.Custom(DATASET_TYPE)


class LoadMultiConceptDataset(io.ComfyNode):
    """Read photos and their per-concept masks from a folder under input/ or a bundled sample set."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="TL_LoadMultiConceptDataset",
            display_name="Load Multi-Concept Dataset",
            category=f"{CATEGORY_ROOT}/dataset",
            description=(
                "Loads photos that each show several objects, plus one segmentation mask per object "
                "(mask_1, mask_2, ...). Photos and masks are resized and cropped together to a square, "
                "so they stay aligned. Connect the dataset to one Mask Target per concept you want to learn."
            ),
            inputs=[
                io.Combo.Input(
                    "folder",
                    options=folder_choices(folder_paths.get_input_subfolders()),
                    tooltip=(
                        "A sub-folder of ComfyUI's input/ folder, or one of the pack's read-only sample sets "
                        "([sample] shapes_pair ...). Layouts: NAME/resized/*.png with masks in "
                        "NAME/mask_1/, NAME/mask_2/ (the paper's layout), or a flat folder with "
                        "photo.png + photo_mask_1.png, photo_mask_2.png. Refresh the page after adding a folder."
                    ),
                ),
                io.Int.Input(
                    "resolution",
                    default=512,
                    min=64,
                    max=2048,
                    step=8,
                    tooltip=(
                        "Side of the square training images. The shorter side is resized to this, then the "
                        "centre is cropped. 512 matches the paper (512x512 photos and masks, SD1.5). Use 768 "
                        "or 1024 only for models trained at that size; larger needs more memory."
                    ),
                ),
                io.Float.Input(
                    "mask_threshold",
                    default=0.5,
                    min=0.01,
                    max=0.99,
                    step=0.01,
                    tooltip=(
                        "Mask pixels brighter than this count as the object, after resizing. 0.5 suits "
                        "black/white masks (the paper's masks are binary). Lower it to keep more of a soft "
                        "mask's edge, raise it to keep only its core."
                    ),
                ),
            ],
            outputs=[
                TLDataset.Output(
                    display_name="dataset",
                    tooltip="Photos and folder masks for Mask Target (one Mask Target per concept).",
                ),
                io.Image.Output(
                    display_name="images",
                    tooltip="The resized, cropped photos [N,H,W,3], sorted by file name. Use this order for MASK inputs.",
                ),
                io.Mask.Output(
                    display_name="masks",
                    tooltip=(
                        "All folder masks as one batch: every photo's mask_1, then every photo's mask_2, ... "
                        "(all black when the folder has no masks)."
                    ),
                ),
                io.Int.Output(
                    display_name="mask_count",
                    tooltip="How many masks each photo has (mask_1..mask_K); 0 when the folder has none.",
                ),
            ],
        )

    @classmethod
    def fingerprint_inputs(cls, folder: str, **_: object) -> tuple | str:
        """Edited photos or masks re-run the node; ComfyUI would otherwise keep its cached result."""
        return folder_fingerprint(Path(folder_paths.get_input_directory()), folder)

    @classmethod
    def execute(cls, folder: str, resolution: int, mask_threshold: float) -> io.NodeOutput:
        input_root = Path(folder_paths.get_input_directory())
        dataset = load_dataset(input_root, folder, resolution=resolution, mask_threshold=mask_threshold)
        return io.NodeOutput(dataset, dataset.images, dataset.folder_masks_batch(), dataset.num_folder_masks)


class MaskTarget(io.ComfyNode):
    """Name one concept of the dataset and pick the mask that supervises its attention."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="TL_MaskTarget",
            display_name="Mask Target",
            category=f"{CATEGORY_ROOT}/dataset",
            description=(
                "Adds one concept to the dataset: a new token (used as embedding:TOKEN in prompts), its class "
                "word, and the mask its cross-attention should match during training. Chain one Mask Target "
                "per concept. The preview shows the mask over every photo."
            ),
            inputs=[
                TLDataset.Input("dataset", tooltip="From Load Multi-Concept Dataset or another Mask Target."),
                io.Int.Input(
                    "mask_index",
                    default=1,
                    min=1,
                    max=64,
                    tooltip=(
                        "Which folder mask marks this concept: 1 = mask_1, 2 = mask_2, ... In the paper's "
                        "pairs the first-named object is mask_1. With a connected mask that holds several masks "
                        "per photo (the masks output of Load Multi-Concept Dataset or Masks from Word Attention: "
                        "mask 1 of every photo, then mask 2 ...) it picks the same way (2 = the second word). "
                        "Ignored when the connected mask holds one mask per photo."
                    ),
                ),
                io.String.Input(
                    "token",
                    default="tl_concept",
                    tooltip=(
                        "Name of the new token: one word of letters, digits and underscores, starting with a "
                        "letter (e.g. tl_doll). It becomes the embedding file name and embedding:tl_doll in prompts. "
                        "It must not be a word of the training prompt: not the class word (ball for a ball), "
                        "not another concept's token or class word."
                    ),
                ),
                io.String.Input(
                    "class_word",
                    default="object",
                    tooltip=(
                        "What the object is, in plain words (e.g. doll, robot toy). The paper trains with "
                        "'photo of a <token> <class word>' and uses the class word alone for prior images. "
                        "Set it for every concept."
                    ),
                ),
                io.String.Input(
                    "init_word",
                    default="sks",
                    tooltip=(
                        "One existing word whose embedding starts the new token. The paper uses sks (a rare "
                        "word). Keep it unless you have a reason, e.g. the class word for faster convergence."
                    ),
                ),
                io.Int.Input(
                    "grow",
                    default=0,
                    min=-64,
                    max=64,
                    tooltip=(
                        "Pixels to grow (positive) or shrink (negative) the mask, at the dataset resolution. "
                        "0 keeps it as drawn (the paper). Grow a little if the mask misses the object's edge."
                    ),
                ),
                io.Int.Input(
                    "feather",
                    default=0,
                    min=0,
                    max=64,
                    tooltip=(
                        "Pixels of soft edge (Gaussian blur). 0 keeps a sharp edge (the paper's masks are "
                        "binary). A few pixels forgive small mask errors."
                    ),
                ),
                io.Mask.Input(
                    "mask",
                    optional=True,
                    tooltip=(
                        "Optional masks that replace the folder masks: one per photo, in the dataset's IMAGE order "
                        "(a segmentation node, or Load Image's mask, where the painted area is the object), or "
                        "K per photo (mask 1 of every photo first, as Masks from Word Attention gives them; "
                        "mask_index picks one). "
                        "White = object. At the dataset resolution, or at the photos' size when all photos "
                        "share one size."
                    ),
                ),
                io.Image.Input(
                    "class_images",
                    optional=True,
                    tooltip=(
                        "Images of the class word for prior preservation (the paper generates 200 with the "
                        "base model from the class word alone, e.g. 'doll'). Make them in this graph: "
                        "CLIP Text Encode(class word) -> KSampler -> VAE Decode. Without class images the "
                        "trainer runs without the prior loss."
                    ),
                ),
                io.String.Input(
                    "class_images_folder",
                    default="",
                    optional=True,
                    tooltip=(
                        "Instead of class_images: a folder under input/ holding class images (e.g. "
                        "prior/doll), or a folder inside a sample set ([sample] NAME/SUB). "
                        "Empty = not used. Ignored when class_images is connected."
                    ),
                ),
            ],
            outputs=[
                TLDataset.Output(display_name="dataset", tooltip="The dataset with this concept added."),
                io.Image.Output(
                    display_name="preview", tooltip="Photos with this concept's mask tinted and outlined."
                ),
                io.Mask.Output(
                    display_name="mask", tooltip="This concept's masks after grow/feather, one per photo."
                ),
            ],
        )

    @classmethod
    def fingerprint_inputs(cls, class_images_folder: str = "", **_: object) -> tuple | str:
        """Edited class images re-run the node (the dataset input changes on its own)."""
        if not class_images_folder.strip():
            return ""
        return folder_fingerprint(Path(folder_paths.get_input_directory()), class_images_folder.strip())

    @classmethod
    def execute(
        cls,
        dataset: object,
        mask_index: int,
        token: str,
        class_word: str,
        init_word: str,
        grow: int,
        feather: int,
        mask: torch.Tensor | None = None,
        class_images: torch.Tensor | None = None,
        class_images_folder: str = "",
    ) -> io.NodeOutput:
        if class_images is None and class_images_folder.strip():
            class_images = load_class_images(
                Path(folder_paths.get_input_directory()), class_images_folder.strip(), dataset.resolution
            )
        concept = build_concept(
            dataset,
            token=token,
            class_word=class_word,
            init_word=init_word,
            mask_index=mask_index,
            grow_pixels=grow,
            feather_pixels=feather,
            mask=mask,
            class_images=class_images,
        )
        preview = overlay(dataset.images, concept.masks)
        return io.NodeOutput(
            dataset.with_concept(concept), preview, concept.masks, ui=ui.PreviewImage(preview, cls=cls)
        )
