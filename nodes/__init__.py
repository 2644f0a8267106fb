"""Thin ComfyUI adapters, one module per node family. Node ids never change once released."""

from .dataset_nodes import LoadMultiConceptDataset, MaskTarget

NODE_CLASSES = (LoadMultiConceptDataset, MaskTarget)
