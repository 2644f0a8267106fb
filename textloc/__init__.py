"""Textual Localization as a library: data, masks, attention capture, losses, training, weights.

Pure torch + kornia + safetensors. ComfyUI is reached only through `textloc.host`.
"""

__version__ = "0.1.0"
