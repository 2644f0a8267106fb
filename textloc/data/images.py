"""Read photos and masks from disk into float tensors, whatever PNG/JPG/TIFF flavour the user has.

PIL's own `convert()` clips 16-bit and float images to 8 bits and drops EXIF rotation, and a
broken file surfaces as a deep PIL traceback. Every reader here decodes to float 0..1 itself and
turns decoding failures into a `TLInputError` that names the file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from ..errors import TLInputError

SUPPORTED_EXTENSIONS: frozenset[str] = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"})

_RE_EXPORT_FIX = "re-export it as PNG/JPG or remove it."
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R 601, as PIL's convert("L")


def is_supported_image(path: Path) -> bool:
    """True for a visible file whose extension the readers accept (case-insensitive)."""
    return path.suffix.lower() in SUPPORTED_EXTENSIONS and not path.name.startswith(".")


def read_image_rgb(path: Path) -> torch.Tensor:
    """Read a photo as [H,W,3] float32 in 0..1; alpha is dropped, gray is replicated to RGB."""
    colour, _alpha = _read_channels(Path(path))
    if colour.shape[2] == 1:
        colour = np.repeat(colour, 3, axis=2)
    return torch.from_numpy(np.ascontiguousarray(colour))


def read_mask(path: Path) -> torch.Tensor:
    """Read a mask as [H,W] float32 in 0..1 (white = object).

    When the luminance is flat but the alpha channel varies (a cut-out PNG), the alpha is the
    mask instead (opaque = object).
    """
    colour, alpha = _read_channels(Path(path))
    luminance = colour[..., 0] if colour.shape[2] == 1 else colour @ _LUMA
    if alpha is not None and _is_constant(luminance) and not _is_constant(alpha):
        luminance = alpha
    return torch.from_numpy(np.ascontiguousarray(np.clip(luminance, 0.0, 1.0), dtype=np.float32))


def _is_constant(values: np.ndarray) -> bool:
    return bool(values.max() - values.min() < 1e-6)


def _read_channels(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """Decode a file to (colour [H,W,1 or 3], alpha [H,W] or None), float32 in 0..1."""
    if not path.is_file():
        raise TLInputError(str(path), "file not found.", "check the file name and that it was not moved.")
    if not is_supported_image(path):
        allowed = " ".join(sorted(SUPPORTED_EXTENSIONS))
        raise TLInputError(
            str(path), f"unsupported file type {path.suffix!r}.", f"convert it to one of {allowed}."
        )
    try:
        with Image.open(path) as opened:
            opened.load()
            image = ImageOps.exif_transpose(opened)
        return _to_float_channels(image)
    except TLInputError:
        raise
    except Image.DecompressionBombError as exc:
        raise TLInputError(
            str(path), "is too large to decode safely.", "downscale it (e.g. to 2048 px)."
        ) from exc
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError, ... for broken files
        raise TLInputError(str(path), f"is truncated or not an image ({exc}).", _RE_EXPORT_FIX) from exc


def _to_float_channels(image: Image.Image) -> tuple[np.ndarray, np.ndarray | None]:
    """Map every PIL mode to float 0..1 without PIL's 8-bit clipping of 16-bit/float data."""
    mode = image.mode
    if mode.startswith("I;16"):
        gray = np.asarray(image).astype(np.float32) / 65535.0
        return gray[..., None], None
    if mode == "I":  # 16-bit PNG/TIFF in older Pillow versions, or 32-bit integer TIFF
        gray = np.clip(np.asarray(image).astype(np.float32) / 65535.0, 0.0, 1.0)
        return gray[..., None], None
    if mode == "F":
        return _scale_float(np.asarray(image, dtype=np.float32))[..., None], None
    if mode == "1":
        image = image.convert("L")
    elif mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    elif mode in ("PA", "RGBa", "RGBX"):
        image = image.convert("RGBA" if mode != "RGBX" else "RGB")
    elif mode == "La":
        image = image.convert("LA")
    elif mode not in ("L", "LA", "RGB", "RGBA"):  # CMYK, YCbCr, LAB, HSV, ...
        image = image.convert("RGB")
    pixels = np.asarray(image).astype(np.float32) / 255.0
    if pixels.ndim == 2:
        pixels = pixels[..., None]
    if image.mode in ("LA", "RGBA"):
        return pixels[..., :-1], pixels[..., -1]
    return pixels, None


def _scale_float(values: np.ndarray) -> np.ndarray:
    """Float images come as 0..1, 0..255 or 0..65535 depending on the tool: pick the range by the peak."""
    values = np.nan_to_num(values, nan=0.0, posinf=0.0, neginf=0.0)
    peak = float(values.max()) if values.size else 0.0
    if peak > 255.0:
        values = values / 65535.0
    elif peak > 1.0:
        values = values / 255.0
    return np.clip(values, 0.0, 1.0)


MIN_IMAGE_SIDE = 16  # the VAE halves the image three times; smaller photos fail inside its convolutions


def check_image_batch(images: object, fix: str, input_name: str = "images") -> torch.Tensor:
    """An IMAGE batch [N,H,W,C>=3] with both sides at least MIN_IMAGE_SIDE, or a TLInputError naming it."""
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[-1] < 3 or len(images) == 0:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise TLInputError(input_name, f"is not an IMAGE batch [N,H,W,3] (got {shape}).", fix)
    height, width = int(images.shape[1]), int(images.shape[2])
    if min(height, width) < MIN_IMAGE_SIDE:
        raise TLInputError(input_name, f"is {width}x{height} px; the VAE needs at least "
                           f"{MIN_IMAGE_SIDE}x{MIN_IMAGE_SIDE}.", "connect larger photos, or upscale them first.")
    return images
