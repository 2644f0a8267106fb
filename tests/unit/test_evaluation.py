"""The evaluation scores without ComfyUI: prompt text, cosine means, the text projection file, KID."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from textloc.errors import TLInputError
from textloc.evaluation import scores as ev


@pytest.mark.parametrize(("prompt", "expected"), [
    ("photo of a embedding:tl_ball ball", "photo of a ball"),
    ("embedding:tl_ball ball and embedding:tl_box box in the woods", "ball and box in the woods"),
    ("a (embedding:tl_ball:1.2) ball, watercolor", "a ball, watercolor"),
    ("a plain prompt", "a plain prompt"),
])
def test_clip_t_text_drops_the_identifier_tokens(prompt: str, expected: str) -> None:
    assert ev.text_for_clip_t(prompt) == expected


def test_mean_pairwise_cosine_is_the_mean_over_all_pairs() -> None:
    gen = torch.randn(3, 16, generator=torch.Generator().manual_seed(0))
    ref = torch.randn(5, 16, generator=torch.Generator().manual_seed(1))
    pairs = [torch.nn.functional.cosine_similarity(g, r, dim=0) for g in gen for r in ref]
    assert ev.mean_pairwise_cosine(gen, ref) == pytest.approx(torch.stack(pairs).mean().item(), abs=1e-6)
    assert ev.mean_pairwise_cosine(gen[:1], gen[:1] * 3) == pytest.approx(1.0, abs=1e-6)  # scale-free


def test_text_projection_is_read_in_both_file_layouts(tmp_path: Path) -> None:
    weight = torch.randn(8, 6)  # Linear(6 -> 8).weight: text_embeds = pooled @ weight.T
    save_file({"text_projection.weight": weight, "other": torch.zeros(1)}, str(tmp_path / "hf.safetensors"))
    save_file({"text_projection": weight.T.contiguous()}, str(tmp_path / "openai.safetensors"))
    save_file({"vision_model.x": torch.zeros(1)}, str(tmp_path / "vision_only.safetensors"))
    pooled = torch.randn(2, 6)
    for name in ("hf", "openai"):
        projection = ev.read_text_projection(tmp_path / f"{name}.safetensors")
        assert torch.allclose(pooled @ projection, torch.nn.functional.linear(pooled, weight), atol=1e-6)
    assert ev.read_text_projection(tmp_path / "vision_only.safetensors") is None


class _RandomFeatures(torch.nn.Module):
    """A tiny random-init feature extractor standing in for Inception: uint8 images -> [N, 16]."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 16, kernel_size=8, stride=8)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.conv(images.float() / 255).relu().mean(dim=(2, 3))


def _poly_mmd_unbiased(x: torch.Tensor, y: torch.Tensor) -> float:
    """Unbiased squared MMD with KID's kernel k(a, b) = (a.b / d + 1)^3, written out."""
    d = x.shape[1]

    def k(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return (a @ b.T / d + 1) ** 3

    m = x.shape[0]
    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    off = ~torch.eye(m, dtype=torch.bool)
    return (kxx[off].mean() + kyy[off].mean() - 2 * kxy.mean()).item()


def _images(seed: int, brightness: float, count: int = 5) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return (torch.rand(count, 40, 56, 3, generator=gen) * 0.5 + brightness).clamp(0, 1)


def test_kid_is_torchmetrics_unbiased_mmd_on_resized_uint8_images() -> None:
    features = _RandomFeatures()
    real, fake = _images(0, 0.1), _images(1, 0.4)
    mean, std = ev.kid_score(real, fake, features, subset_size=5, subsets=3)
    with torch.no_grad():
        expected = _poly_mmd_unbiased(features(ev.kid_images(real)).double(), features(ev.kid_images(fake)).double())
    # with subset size = set size every subset is the whole set, so every draw gives the same value
    assert mean == pytest.approx(expected, rel=1e-4) and std == pytest.approx(0.0, abs=1e-6)
    near, _ = ev.kid_score(real, _images(2, 0.1), features, subset_size=5, subsets=3)
    assert abs(near) < mean  # a set like the references scores closer than a brighter one
    assert ev.kid_images(real).shape == (5, 3, 299, 299) and ev.kid_images(real).dtype == torch.uint8


def test_kid_needs_two_images_each() -> None:
    with pytest.raises(TLInputError, match="at least 2"):
        ev.kid_score(_images(0, 0.1, count=1), _images(1, 0.1), _RandomFeatures())


def test_attention_overlap_without_encoders_and_notes_for_what_is_missing() -> None:
    maps = torch.zeros(2, 8, 8)
    maps[:, :4, :4] = 1.0  # all attention in the top-left quarter
    mask = torch.zeros(1, 8, 8)
    mask[:, :4, :] = 1.0  # the object is the top half
    encoders = ev.Encoders(missing={"kid": "KID needs torchmetrics."})
    images = torch.rand(2, 16, 16, 3)
    scores = ev.evaluate("photo of a embedding:tl_ball ball", images, images, encoders, maps, mask)
    assert scores.attention_inside == pytest.approx(1.0) and scores.attention_iou == pytest.approx(0.5)
    assert scores.clip_i is None and scores.clip_t is None and scores.kid_mean is None
    assert scores.notes == ["KID needs torchmetrics."]
    assert "CLIP-I: n/a" in scores.as_text() and "attention inside mask: 1.000" in scores.as_text()
    assert ev.mean_scores([scores, scores])["attention_iou"] == pytest.approx(0.5)


def test_bad_images_and_mask_counts_are_named() -> None:
    images = torch.rand(2, 16, 16, 3)
    with pytest.raises(TLInputError, match="reference_images"):
        ev.evaluate("p", images, torch.rand(16, 16, 3), ev.Encoders())
    with pytest.raises(TLInputError, match="object_masks"):
        ev.evaluate("p", images, images, ev.Encoders(), torch.rand(3, 8, 8), torch.rand(2, 8, 8))


def test_inception_weights_are_read_without_unpickling_code(tmp_path: Path) -> None:
    plain = {"layer.weight": torch.ones(2, 2)}
    torch.save(plain, tmp_path / "plain.pth")
    save_file(plain, str(tmp_path / "plain.safetensors"))
    for name in ("plain.pth", "plain.safetensors"):
        assert torch.equal(ev.read_inception_weights(tmp_path / name)["layer.weight"], torch.ones(2, 2))
    torch.save({"layer.weight": _PickledCode()}, tmp_path / "code.pth")
    with pytest.raises(TLInputError, match="could not be read as plain Inception weights"):
        ev.read_inception_weights(tmp_path / "code.pth")


class _PickledCode:
    """Any object that is not a tensor: weights_only loading refuses to rebuild it."""


def test_inception_weights_are_found_under_either_name(tmp_path: Path) -> None:
    assert ev.find_inception_weights([tmp_path]) is None
    (tmp_path / "weights-inception-2015-12-05-6726825d.safetensors").write_bytes(b"")
    assert ev.find_inception_weights([tmp_path / "missing", tmp_path]).suffix == ".safetensors"


def test_kid_with_torch_fidelitys_inception_network() -> None:
    """The node's KID path: torch-fidelity's network (random weights here) through torchmetrics."""
    from headless.random_inception import ensure_random_inception

    inception = ev.inception_feature_extractor(ensure_random_inception())
    references = _images(0, 0.3)
    same, _ = ev.kid_score(references, _images(1, 0.3, count=4), inception, subsets=10)
    darker, _ = ev.kid_score(references, _images(2, 0.0, count=4), inception, subsets=10)
    assert abs(same) < 0.1 * darker and darker > 0
