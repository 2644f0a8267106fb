"""Thin ComfyUI adapters, one module per node family. Node ids never change once released."""

from comfy_api.latest import ComfyExtension, io

from .dataset_nodes import LoadMultiConceptDataset, MaskTarget

NODE_CLASSES: tuple[type[io.ComfyNode], ...] = (LoadMultiConceptDataset, MaskTarget)


class TextualLocalizationExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return list(NODE_CLASSES)
