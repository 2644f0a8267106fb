"""Thin ComfyUI adapters, one module per node family. Node ids never change once released."""

import os

import folder_paths
from comfy_api.latest import ComfyExtension, io

from . import web_routes  # noqa: F401  (adds the training-history route)
from .apply_nodes import ApplyTLWeights
from .attention_nodes import ShowTokenAttention
from .auto_mask_nodes import MasksFromWordAttention
from .dataset_nodes import LoadMultiConceptDataset, MaskTarget
from .evaluation_nodes import EvaluateTLImages
from .lora_nodes import ExportTLLoRA
from .train_nodes import TrainingOptions, TrainTextualLocalization

NODE_CLASSES: tuple[type[io.ComfyNode], ...] = (LoadMultiConceptDataset, MasksFromWordAttention, MaskTarget,
                                                 TrainTextualLocalization, TrainingOptions, ApplyTLWeights, ShowTokenAttention,
                                                 EvaluateTLImages, ExportTLLoRA)

# Trained tokens are written to output/embeddings/<run>/; like output/loras for LoRAs (added by ComfyUI
# itself), output/embeddings joins the embedding search path so `embedding:<run>/<token>` works in any prompt.
folder_paths.add_model_folder_path("embeddings", os.path.join(folder_paths.get_output_directory(), "embeddings"))


class TextualLocalizationExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return list(NODE_CLASSES)
