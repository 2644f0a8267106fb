"""Random-weight Inception v3 weights in torch-fidelity's layout, so KID runs in tests and demos.

torch-fidelity's FID/KID network has torchvision's Inception v3 layer names and shapes (without the
auxiliary head, with a 1008-way classifier); the real weights come from torch-fidelity's releases,
which this machine cannot reach. Needs torch-fidelity (a dev dependency). Stored as safetensors.
The features mean nothing.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file

from .paths import CACHE_DIR
from .tiny_model import is_current

INCEPTION_PATH = CACHE_DIR / "models" / "inception" / "weights-inception-2015-12-05-6726825d.safetensors"
RECIPE_VERSION = "tl-random-inception/3"
CLASSES = 1008
CALIBRATION_IMAGES = 8


def random_inception_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """Seeded weights (torchvision's initialisation) loaded into torch-fidelity's own network; its
    batch-norm statistics are then measured on random images, so activations keep their scale through
    the 48 layers instead of growing without bound."""
    import torchvision
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    with torch.random.fork_rng(devices=[]):  # seeded without touching the caller's random state
        torch.manual_seed(seed)
        net = torchvision.models.inception_v3(weights=None, aux_logits=False, init_weights=True)
        net.fc = torch.nn.Linear(2048, CLASSES)
        with tempfile.TemporaryDirectory() as folder:
            weights = Path(folder) / "init.pth"
            torch.save({k: v for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}, weights)
            fidelity = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"],
                                                   feature_extractor_weights_path=str(weights))
        for module in fidelity.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.momentum = None  # a plain average over the calibration batch
                module.train()
        with torch.no_grad():
            fidelity(_calibration_images())
    return {k: v.contiguous() for k, v in fidelity.state_dict().items() if not k.endswith("num_batches_tracked")}


def _calibration_images() -> torch.Tensor:
    """Random images from smooth to fine-grained (noise at 4..299 px, upsampled), as uint8 [N, 3, 299, 299]."""
    sizes = [4, 8, 16, 32, 64, 128, 299, 299][:CALIBRATION_IMAGES]
    images = [torch.nn.functional.interpolate(torch.rand(1, 3, size, size), size=(299, 299), mode="bilinear")
              for size in sizes]
    return (torch.cat(images) * 255).round().to(torch.uint8)


def ensure_random_inception(path: Path | None = None) -> Path:
    """The cached file, built first when missing or from an older recipe."""
    path = Path(path) if path is not None else INCEPTION_PATH
    if is_current(path, RECIPE_VERSION):
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        save_file(random_inception_state(), str(tmp), metadata={"recipe": RECIPE_VERSION})
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
