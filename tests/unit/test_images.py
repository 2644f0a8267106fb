"""Every PIL mode a user's photo or mask may come in decodes to the right float values."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from textloc.data.images import SUPPORTED_EXTENSIONS, is_supported_image, read_image_rgb, read_mask
from textloc.errors import TLInputError


def _png16(path: Path, pixels: np.ndarray) -> Path:
    """Write a 16-bit RGB/RGBA PNG by hand (PIL cannot write these)."""
    height, width, channels = pixels.shape
    color_type = {3: 2, 4: 6}[channels]
    raw = b"".join(b"\x00" + pixels[y].astype(">u2").tobytes() for y in range(height))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)
        )

    header = struct.pack(">IIBBBBB", width, height, 16, color_type, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )
    return path


def _save(image: Image.Image, path: Path, **options: object) -> Path:
    image.save(path, **options)
    return path


def test_rgb_8bit_exact(tmp_path: Path) -> None:
    pixels = np.array([[[255, 0, 0], [0, 128, 255]]], dtype=np.uint8)
    out = read_image_rgb(_save(Image.fromarray(pixels, "RGB"), tmp_path / "a.png"))
    assert out.dtype == torch.float32 and out.shape == (1, 2, 3)
    assert torch.allclose(out, torch.from_numpy(pixels).float() / 255)


def test_rgba_alpha_is_dropped(tmp_path: Path) -> None:
    pixels = np.array([[[10, 20, 30, 0], [200, 100, 50, 255]]], dtype=np.uint8)
    out = read_image_rgb(_save(Image.fromarray(pixels, "RGBA"), tmp_path / "a.png"))
    assert out.shape == (1, 2, 3)
    assert torch.allclose(out, torch.from_numpy(pixels[..., :3]).float() / 255)


def test_gray_and_la_are_replicated(tmp_path: Path) -> None:
    gray = np.array([[0, 51, 255]], dtype=np.uint8)
    out_l = read_image_rgb(_save(Image.fromarray(gray, "L"), tmp_path / "l.png"))
    assert out_l.shape == (1, 3, 3)
    assert torch.allclose(out_l[..., 1], torch.tensor([[0.0, 0.2, 1.0]]))
    assert torch.equal(out_l[..., 0], out_l[..., 2])

    la = Image.fromarray(np.stack([gray, np.array([[255, 0, 128]], np.uint8)], -1), "LA")
    out_la = read_image_rgb(_save(la, tmp_path / "la.png"))
    assert out_la.shape == (1, 3, 3)
    assert torch.allclose(out_la[..., 0], torch.tensor([[0.0, 0.2, 1.0]]))


def test_one_bit(tmp_path: Path) -> None:
    image = Image.new("1", (3, 1), 0)
    image.putpixel((1, 0), 1)
    out = read_image_rgb(_save(image, tmp_path / "b.png"))
    assert out[0, :, 0].tolist() == [0.0, 1.0, 0.0]


def _palette_image() -> Image.Image:
    image = Image.new("P", (3, 1), 0)
    image.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * (256 * 3 - 9))
    image.putpixel((1, 0), 1)
    image.putpixel((2, 0), 2)
    return image


def test_palette_colours(tmp_path: Path) -> None:
    out = read_image_rgb(_save(_palette_image(), tmp_path / "p.png"))
    assert out[0].tolist() == [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]


def test_palette_with_transparency(tmp_path: Path) -> None:
    path = _save(_palette_image(), tmp_path / "pt.png", transparency=0)
    assert Image.open(path).mode == "P"
    out = read_image_rgb(path)
    assert out[0].tolist() == [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]


def test_16bit_gray_png_is_scaled_not_clipped(tmp_path: Path) -> None:
    values = np.array([[0, 257, 1000, 32768, 65535]], dtype=np.uint16)
    path = _save(Image.fromarray(values), tmp_path / "g16.png")
    assert Image.open(path).mode.startswith("I")
    out = read_image_rgb(path)
    assert torch.allclose(out[..., 0], torch.from_numpy(values.astype(np.float32) / 65535), atol=1e-6)
    mask = read_mask(path)
    assert mask[0, 2].item() == pytest.approx(1000 / 65535, abs=1e-6)  # PIL's convert("L") gives 1.0


def test_16bit_big_endian_tiff(tmp_path: Path) -> None:
    values = np.array([[0, 4096, 65535]], dtype=np.uint16)
    image = Image.frombytes("I;16B", (3, 1), values.astype(">u2").tobytes())
    out = read_image_rgb(_save(image, tmp_path / "g16b.tif"))
    assert torch.allclose(out[0, :, 0], torch.tensor([0.0, 4096 / 65535, 1.0]), atol=1e-6)


def test_32bit_int_mode_i_uses_16bit_scale(tmp_path: Path) -> None:
    values = np.array([[0, 6553, 65535, 90000]], dtype=np.int32)
    path = _save(Image.fromarray(values), tmp_path / "i32.tif")
    assert Image.open(path).mode == "I"
    out = read_image_rgb(path)
    assert torch.allclose(out[0, :, 0], torch.tensor([0.0, 0.1, 1.0, 1.0]), atol=1e-4)


def test_float_mode(tmp_path: Path) -> None:
    unit = np.array([[0.0, 0.25, 1.0]], dtype=np.float32)
    out = read_image_rgb(_save(Image.fromarray(unit), tmp_path / "f.tif"))
    assert torch.allclose(out[0, :, 1], torch.from_numpy(unit[0]))
    byte_range = np.array([[0.0, 51.0, 255.0]], dtype=np.float32)
    out = read_image_rgb(_save(Image.fromarray(byte_range), tmp_path / "f255.tif"))
    assert torch.allclose(out[0, :, 1], torch.tensor([0.0, 0.2, 1.0]))


def test_cmyk(tmp_path: Path) -> None:
    image = Image.new("CMYK", (2, 2), (0, 255, 255, 0))  # pure red
    out = read_image_rgb(_save(image, tmp_path / "c.tif"))
    assert out[0, 0].tolist() == [1.0, 0.0, 0.0]


def test_16bit_rgb_png(tmp_path: Path) -> None:
    pixels = np.zeros((2, 3, 3), np.uint16)
    pixels[0, 0] = [65535, 32768, 0]
    out = read_image_rgb(_png16(tmp_path / "rgb16.png", pixels))
    assert out.shape == (2, 3, 3)
    assert torch.allclose(out[0, 0], torch.tensor([1.0, 0.5, 0.0]), atol=1 / 255)
    rgba = np.zeros((2, 3, 4), np.uint16)
    rgba[..., 3] = 65535
    rgba[1, 2, :3] = [0, 65535, 0]
    out = read_image_rgb(_png16(tmp_path / "rgba16.png", rgba))
    assert out[1, 2].tolist() == [0.0, 1.0, 0.0]


def test_jpeg_exif_rotation_is_applied(tmp_path: Path) -> None:
    stored = np.zeros((16, 32, 3), np.uint8)  # H=16, W=32: left half red, right half blue
    stored[:, :16] = [255, 0, 0]
    stored[:, 16:] = [0, 0, 255]
    exif = Image.Exif()
    exif[0x0112] = 6  # display = stored rotated 90 degrees clockwise
    out = read_image_rgb(_save(Image.fromarray(stored), tmp_path / "r.jpg", exif=exif, quality=95))
    assert out.shape == (32, 16, 3)
    assert out[4, 8, 0] > 0.8 and out[4, 8, 2] < 0.2  # top is the stored left (red)
    assert out[28, 8, 2] > 0.8 and out[28, 8, 0] < 0.2  # bottom is blue


@pytest.mark.parametrize("name", ["w.webp", "b.bmp", "UP.PNG", "t.TIFF", "j.JPEG"])
def test_other_formats_and_upper_case(tmp_path: Path, name: str) -> None:
    pixels = np.full((4, 4, 3), [0, 255, 0], np.uint8)
    options = {"lossless": True} if name.endswith("webp") else {}
    out = read_image_rgb(_save(Image.fromarray(pixels), tmp_path / name, **options))
    assert out.shape == (4, 4, 3)
    assert torch.allclose(out[1, 1], torch.tensor([0.0, 1.0, 0.0]), atol=0.02)


def test_supported_extensions() -> None:
    assert {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"} == set(SUPPORTED_EXTENSIONS)
    assert is_supported_image(Path("A.JPG"))
    assert not is_supported_image(Path("a.gif"))
    assert not is_supported_image(Path("._a.png"))  # macOS resource-fork files


def test_mask_luminance(tmp_path: Path) -> None:
    pixels = np.array([[[255, 255, 255], [0, 0, 0], [255, 0, 0]]], dtype=np.uint8)
    mask = read_mask(_save(Image.fromarray(pixels), tmp_path / "m.png"))
    assert mask.shape == (1, 3) and mask.dtype == torch.float32
    assert torch.allclose(mask[0], torch.tensor([1.0, 0.0, 0.299]), atol=1e-3)


def test_mask_from_alpha_when_colour_is_flat(tmp_path: Path) -> None:
    pixels = np.zeros((1, 3, 4), np.uint8)
    pixels[..., 3] = [0, 255, 128]
    mask = read_mask(_save(Image.fromarray(pixels, "RGBA"), tmp_path / "cut.png"))
    assert torch.allclose(mask[0], torch.tensor([0.0, 1.0, 128 / 255]))


def test_mask_ignores_alpha_when_colour_varies(tmp_path: Path) -> None:
    pixels = np.array([[[255, 255, 255, 255], [0, 0, 0, 0]]], dtype=np.uint8)
    mask = read_mask(_save(Image.fromarray(pixels, "RGBA"), tmp_path / "m.png"))
    assert mask[0].tolist() == [1.0, 0.0]


def test_mask_from_palette_transparency(tmp_path: Path) -> None:
    image = Image.new("P", (2, 1), 0)
    image.putpalette([255, 255, 255, 255, 255, 255] + [0] * (256 * 3 - 6))
    image.putpixel((1, 0), 1)
    mask = read_mask(_save(image, tmp_path / "pt.png", transparency=0))
    assert mask[0].tolist() == [0.0, 1.0]


def _assert_user_error(error: pytest.ExceptionInfo[TLInputError], name: str) -> None:
    message = str(error.value)
    assert name in message and "Fix:" in message


def test_truncated_file(tmp_path: Path) -> None:
    good = _save(
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)), tmp_path / "g.png"
    )
    broken = tmp_path / "broken.png"
    broken.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(TLInputError) as error:
        read_image_rgb(broken)
    _assert_user_error(error, "broken.png")
    assert "truncated or not an image" in str(error.value)


def test_not_an_image(tmp_path: Path) -> None:
    fake = tmp_path / "notes.jpg"
    fake.write_text("hello")
    with pytest.raises(TLInputError) as error:
        read_mask(fake)
    _assert_user_error(error, "notes.jpg")


def test_missing_and_unsupported(tmp_path: Path) -> None:
    with pytest.raises(TLInputError) as error:
        read_image_rgb(tmp_path / "gone.png")
    _assert_user_error(error, "gone.png")
    gif = tmp_path / "anim.gif"
    Image.new("RGB", (2, 2)).save(gif)
    with pytest.raises(TLInputError) as error:
        read_image_rgb(gif)
    _assert_user_error(error, "anim.gif")


def test_an_image_batch_too_small_for_the_vae_is_refused_naming_the_input() -> None:
    import pytest

    from textloc.data.images import MIN_IMAGE_SIDE, check_image_batch
    from textloc.errors import TLInputError

    good = torch.zeros(2, MIN_IMAGE_SIDE, MIN_IMAGE_SIDE + 8, 3)
    assert check_image_batch(good, "fix") is good
    for bad in (torch.zeros(1, 4, 4, 3), torch.zeros(1, 64, 8, 3), torch.zeros(64, 64, 3), torch.zeros(0, 64, 64, 3)):
        with pytest.raises(TLInputError, match="images") as caught:
            check_image_batch(bad, "connect photos.")
        assert "Fix:" in str(caught.value)
