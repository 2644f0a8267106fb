"""scripts/evaluate_images.py on the tiny checkpoint and a random-weight CLIP ViT-L/14 file, in-process."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

from headless.paths import REPO_ROOT, SAMPLE_DATA_DIR
from headless.random_clip_vision import ensure_random_clip_vision
from headless.tiny_model import ensure_tiny_checkpoint

pytestmark = pytest.mark.host
sys.path.insert(0, str(REPO_ROOT / "scripts"))
import evaluate_images  # noqa: E402

PHOTOS = SAMPLE_DATA_DIR / "toy_pair" / "resized"


def test_scores_per_prompt_then_the_mean_over_prompts(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    generated = tmp_path / "generated"
    for index, (prompt, photos) in enumerate([("photo of a embedding:tl_ball ball", ["01.png", "02.png"]),
                                              ("a embedding:tl_ball ball in the woods", ["03.png", "04.png"])]):
        folder = generated / f"prompt_{index}"
        folder.mkdir(parents=True)
        (folder / "prompt.txt").write_text(prompt)
        for name in photos:
            shutil.copy(PHOTOS / name, folder / name)
    references = tmp_path / "references"
    references.mkdir()
    shutil.copy(PHOTOS / "05.png", references / "05.png")
    shutil.copy(PHOTOS / "01.png", references / "01.png")
    masks = SAMPLE_DATA_DIR / "toy_pair" / "mask_1"
    out = tmp_path / "scores.json"
    code = evaluate_images.main([str(generated), str(references), "--checkpoint", str(ensure_tiny_checkpoint()),
                                 "--clip-vision", str(ensure_random_clip_vision()), "--no-kid",
                                 "--attention-maps", str(masks), "--masks", str(masks), "--out", str(out)])
    assert code == 0
    result = json.loads(out.read_text())
    first, second = result["per_prompt"]
    assert first["text_for_clip_t"] == "photo of a ball" and second["text_for_clip_t"] == "a ball in the woods"
    assert first["generated"] == 2 and first["references"] == 2
    assert first["attention_inside"] == pytest.approx(1.0)  # the masks as maps: all mass on the object
    for name in ("clip_i", "clip_t"):
        assert result["mean"][name] == pytest.approx((first[name] + second[name]) / 2)
    # prompt 1 holds photo 01, which is also a reference, so its images look more like the references
    assert first["clip_i"] > second["clip_i"]
    assert "mean over prompts" in capsys.readouterr().out


def test_missing_prompt_is_named(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code = evaluate_images.main([str(PHOTOS), str(PHOTOS), "--checkpoint", str(ensure_tiny_checkpoint())])
    assert code == 1 and "--prompt" in capsys.readouterr().err
