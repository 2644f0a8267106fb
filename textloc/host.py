"""The only door from textloc into ComfyUI: device choice, model loading, progress, events, folders.

Imports of ComfyUI happen inside the functions, so the rest of textloc stays importable (and
testable) without a ComfyUI installation.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger("textual_localization")


def torch_device() -> torch.device:
    import comfy.model_management as mm

    return mm.get_torch_device()


def load_for_training(model_patcher: Any) -> None:
    """Load the (cloned) model fully onto the compute device, as ComfyUI's own trainer does."""
    import comfy.model_management as mm

    mm.load_models_gpu([model_patcher], memory_required=1e20, force_full_load=True)


def load_models(patchers: list[Any]) -> None:
    import comfy.model_management as mm

    mm.load_models_gpu(patchers)


def denoise_once(model_patcher: Any, positive: list, negative: list, latent: torch.Tensor, noise: torch.Tensor,
                 sigma: float) -> torch.Tensor:
    """One model call on `latent` noised to `sigma`, through ComfyUI's own sampler (one Euler step to 0).

    The sampler brings what a bare UNet call lacks: the latent format, the model family's extra conds
    (SDXL's pooled and size vectors), patches and wrappers, device loading. cfg 1 skips the negative.
    """
    import comfy.sample
    import comfy.samplers

    sampler = comfy.samplers.sampler_object("euler")
    sigmas = torch.tensor([float(sigma), 0.0])
    return comfy.sample.sample_custom(model_patcher, noise, 1.0, sampler, sigmas, positive, negative, latent,
                                      disable_pbar=True)


def check_interrupted() -> None:
    """Raise ComfyUI's interrupt exception when the user pressed Cancel."""
    import comfy.model_management as mm

    mm.throw_exception_if_processing_interrupted()


def is_interrupt(error: BaseException) -> bool:
    import comfy.model_management as mm

    return isinstance(error, mm.InterruptProcessingException)


def progress_bar(total: int, node_id: str | None = None) -> Any:
    import comfy.utils

    return comfy.utils.ProgressBar(total, node_id=node_id)


_event_listeners: list[Callable[[str, dict[str, Any]], None]] = []


def add_event_listener(listener: Callable[[str, dict[str, Any]], None]) -> None:
    """Also hand every send_event(event, data) to listener(event, data), in the sending thread.

    The web routes keep the training history this way, so a reloaded page can redraw its chart.
    """
    if listener not in _event_listeners:
        _event_listeners.append(listener)


def send_event(event: str, data: dict[str, Any]) -> None:
    """Broadcast a websocket event to the browser (no-op when no server runs, e.g. in scripts)."""
    for listener in _event_listeners:
        listener(event, data)
    try:
        from server import PromptServer
    except ImportError:
        return
    instance = getattr(PromptServer, "instance", None)
    if instance is not None:
        instance.send_sync(event, data)


def output_directory() -> Path:
    import folder_paths

    return Path(folder_paths.get_output_directory())


def input_directory() -> Path:
    import folder_paths

    return Path(folder_paths.get_input_directory())


def embedding_folders() -> list[Path]:
    """ComfyUI's embeddings folders in the order `embedding:NAME` searches them (models/embeddings first)."""
    import folder_paths

    return [Path(folder) for folder in folder_paths.get_folder_paths("embeddings")]


def model_family(model_patcher: Any) -> str:
    """Name of ComfyUI's detected model config (e.g. SD15, SD20, SDXL)."""
    return type(model_patcher.model.model_config).__name__


def model_prediction(model_patcher: Any) -> str:
    """What the model predicts, as ComfyUI's model type names it in lower case (eps, v_prediction, ...):
    SD2 768-v and SD2 base share their family and layer shapes but not this."""
    return model_patcher.model.model_type.name.lower()


def device_memory_bytes(device: torch.device) -> int:
    """Total memory of the compute device (0 for the CPU, where system RAM is used)."""
    import comfy.model_management as mm

    return 0 if device.type == "cpu" else int(mm.get_total_memory(device))


def load_clip_vision(path: Path) -> Any:
    """A CLIP vision model through ComfyUI's own loader (what the stock Load CLIP Vision node calls)."""
    import comfy.clip_vision

    model = comfy.clip_vision.load(str(path))
    if model is None:
        raise ValueError(f"{path} is not a CLIP vision model ComfyUI recognises")
    return model


INCEPTION_FOLDER = "inception"


def register_inception_folder() -> None:
    """models/inception/ joins ComfyUI's model folders (extra_model_paths.yaml can add more)."""
    import folder_paths

    folder_paths.add_model_folder_path(INCEPTION_FOLDER, str(Path(folder_paths.models_dir) / INCEPTION_FOLDER))


def inception_weight_folders() -> list[Path]:
    """Where a local copy of the KID Inception weights is looked for: ComfyUI's inception model
    folders, then torch hub's cache (where torch-fidelity downloads it)."""
    import folder_paths

    register_inception_folder()
    return [*map(Path, folder_paths.get_folder_paths(INCEPTION_FOLDER)), Path(torch.hub.get_dir()) / "checkpoints"]
