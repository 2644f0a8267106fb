"""Well-known locations of the project, the installed host and the build cache."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
COMFYUI_DIR = Path(os.environ.get("TL_COMFYUI_DIR", REPO_ROOT / ".comfyui"))
CACHE_DIR = Path(os.environ.get("TL_CACHE_DIR", REPO_ROOT / ".cache"))
SAMPLE_DATA_DIR = REPO_ROOT / "sample_data"
WORKFLOWS_DIR = REPO_ROOT / "workflows"
PACK_DIR_NAME = "comfyui-textual-localization"


def require_comfyui() -> Path:
    """Return the ComfyUI tree, or explain how to install it."""
    if not (COMFYUI_DIR / "main.py").is_file():
        raise FileNotFoundError(
            f"ComfyUI is not installed at {COMFYUI_DIR}. Run `make setup` first "
            "(or set TL_COMFYUI_DIR to an existing ComfyUI checkout)."
        )
    return COMFYUI_DIR
