"""ComfyUI entry point of the Textual Localization node pack (V3 schema).

ComfyUI is imported only when ComfyUI asks for the nodes, so tooling (pytest, linters) can
import this folder as a plain package.
"""

WEB_DIRECTORY = "./web"


async def comfy_entrypoint():  # noqa: ANN201  (returns a ComfyExtension)
    from .nodes import TextualLocalizationExtension

    return TextualLocalizationExtension()
