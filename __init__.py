"""ComfyUI entry point of the Textual Localization node pack (V3 schema)."""

from comfy_api.latest import ComfyExtension, io

from .nodes import NODE_CLASSES

WEB_DIRECTORY = "./web"


class TextualLocalizationExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return list(NODE_CLASSES)


async def comfy_entrypoint() -> TextualLocalizationExtension:
    return TextualLocalizationExtension()
