"""Import ComfyUI's libraries in-process (tests, fixture builders) without a GPU or a server.

ComfyUI picks its device and its attention kernel when `comfy.model_management` is first imported
(`nodes` imports it), and only falls back to the CPU when `args.cpu` is set; `nodes.py` also puts
`comfy/` first on sys.path, which hides the top-level `utils` package unless it was imported before.
This module sets those flags first, then imports in that order.
"""

from __future__ import annotations

import sys

from .paths import require_comfyui

_booted = False


def boot_comfy(cpu: bool | None = None, pytorch_attention: bool = False) -> None:
    """Make `import comfy...`, `nodes`, `folder_paths` work in this process.

    `pytorch_attention` sets ComfyUI's own --use-pytorch-cross-attention (SDPA) before ComfyUI
    chooses its kernel. Only the first call in a process decides; a later one changes nothing.
    """
    global _booted
    if _booted:
        return
    root = str(require_comfyui())
    # ComfyUI's `nodes.py` must win over this repository's `nodes/` package (the pack's adapters,
    # only ever imported by ComfyUI as part of the pack): put ComfyUI first on the path.
    if root in sys.path:
        sys.path.remove(root)
    sys.path.insert(0, root)
    shadow = sys.modules.get("nodes")
    if shadow is not None and not str(getattr(shadow, "__file__", "")).startswith(root):
        del sys.modules["nodes"]
    import comfy.options

    comfy.options.enable_args_parsing(False)
    from comfy.cli_args import args

    if cpu is None:
        import torch

        cpu = not torch.cuda.is_available()
    args.cpu = bool(cpu)
    if pytorch_attention:
        args.use_pytorch_cross_attention = True
    import utils.extra_config  # noqa: F401  (must precede `nodes`, see module docstring)

    import nodes  # noqa: F401  (ComfyUI's nodes.py, cached now, whatever joins sys.path later)

    _booted = True
