"""The demo's index.html in the real browser (headless Chromium, launched as test_browser.py does),
opened from disk: every picture loads, every caption is visible, nothing logs an error and nothing
is fetched from anywhere but the demo folder.

The page is built from a small demo folder of real PNGs written here, so the suite never waits for
`make demo`. To check a real demo's page too: TL_DEMO_PAGE=out/demo/index.html (screenshot to
TL_DEMO_SCREENSHOT, default test-artifacts/browser/demo_page_full.png).
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest
from chromium import chromium_context
from PIL import Image, ImageDraw

from headless.demo_page import render_page
from headless.demo_pictures import PictureWriter, ReportedImage, run_pictures
from headless.paths import REPO_ROOT

ARTIFACTS = REPO_ROOT / "test-artifacts" / "browser"
REAL_PAGE = os.environ.get("TL_DEMO_PAGE")
REAL_SCREENSHOT = Path(os.environ.get("TL_DEMO_SCREENSHOT") or ARTIFACTS / "demo_page_full.png")
PROMPT: dict[str, Any] = {
    "3": {"class_type": "TL_MaskTarget", "inputs": {"token": "tl_ball", "class_word": "ball", "mask_index": 1},
          "_meta": {"title": "Mask Target"}},
    "4": {"class_type": "PreviewImage", "inputs": {}, "_meta": {"title": "Photos & <masks>"}},
    "8": {"class_type": "SaveImage", "inputs": {"filename_prefix": "tl_guidance_hard"},
          "_meta": {"title": "Save Image"}},
}


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Chromium as test_browser.py starts it (its binary, flags and viewport), with no server behind it."""
    with chromium_context(tmp_path_factory.mktemp("chromium-profile")) as context:
        yield context


def _png(color: str, size: tuple[int, int] = (64, 64)) -> bytes:
    image = Image.new("RGB", size, (90, 90, 90))
    ImageDraw.Draw(image).ellipse((8, 8, size[0] - 8, size[1] - 8), fill=color)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _small_demo(root: Path) -> Path:
    """A demo folder with a page: two workflows, one picture shared by both, a run-folder picture."""
    writer = PictureWriter(root)
    writer.add_workflow("tl_first.json", PROMPT, {"4": "Photos & <masks>"}, [
        ReportedImage("3", "temp", _png("magenta")), ReportedImage("3", "temp", _png("yellow")),
        ReportedImage("4", "temp", _png("cyan", (68, 32))), ReportedImage("8", "output", _png("red"))])
    writer.add_workflow("tl_second.json", PROMPT, {}, [ReportedImage("8", "output", _png("red"))])
    run = root / "output" / "textual_localization" / "tl_demo_hard"
    run.mkdir(parents=True)
    (run / "loss_chart.png").write_bytes(_png("orange", (160, 90)))
    (root / "overview.png").write_bytes(_png("white", (300, 120)))
    manifest = {"title": "Demo", "intro": ["What the demo shows."],
                "overviews": [{"file": "overview.png", "caption": "Overview: all at once"}],
                "workflows": [{"name": "tl_first.json", "about": "Trains the ball.", "runs": ["tl_demo_hard"],
                               "evaluations": []},
                              {"name": "tl_second.json", "about": "Generates again.", "runs": [],
                               "evaluations": []}],
                "pictures": [asdict(p) for p in writer.pictures],
                "run_pictures": run_pictures(root / "output" / "textual_localization", root)}
    summary = {"runs": {"tl_demo_hard": {"guidance": "hard", "loss start": 1.5, "loss end": 0.25}}}
    page = root / "index.html"
    page.write_text(render_page(manifest, summary), encoding="utf-8")
    return page


def check_page(browser: Any, page_file: Path, screenshot: Path) -> dict[str, Any]:
    """Open a demo page from disk; returns what it found, after asserting it is whole."""
    errors: list[str] = []
    requests: list[str] = []
    page = browser.new_page()
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(f"page error: {e}"))
    page.on("requestfailed", lambda r: errors.append(f"failed: {r.url}"))
    page.on("request", lambda r: requests.append(r.url))
    try:
        page.goto(page_file.resolve().as_uri(), wait_until="load")
        images = page.evaluate("""() => Array.from(document.images).map(i => ({
            src: i.getAttribute('src'), complete: i.complete, width: i.naturalWidth}))""")
        captions = page.locator("figcaption")
        hidden = [captions.nth(i).inner_text() for i in range(captions.count()) if not captions.nth(i).is_visible()]
        texts = captions.all_inner_texts()
        screenshot.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(screenshot), full_page=True)
    finally:
        page.close()
    assert images, "the page shows no picture"
    broken = [i["src"] for i in images if not i["complete"] or i["width"] <= 0]
    assert not broken, f"pictures that did not load: {broken}"
    assert len(texts) == len(images), "every picture has a caption"
    assert not hidden, f"captions not visible: {hidden}"
    assert not errors, f"console errors: {errors}"
    outside = [url for url in requests if not url.startswith(page_file.parent.resolve().as_uri())]
    assert not outside, f"the page fetched something outside its folder: {outside}"
    return {"images": images, "captions": texts}


def test_demo_page_opens_from_disk_with_every_picture(browser: Any, tmp_path: Path) -> None:
    page_file = _small_demo(tmp_path)
    found = check_page(browser, page_file, ARTIFACTS / "demo_page.png")
    assert len(found["images"]) == 7  # overview, 4 + 1 node pictures, run-folder picture
    captions = "\n".join(found["captions"])
    assert "Photo 2 of 2 with the mask of tl_ball (the ball, mask 1) drawn over it" in captions
    assert "Photos & <masks>: picture 1 of 1" in captions  # escaped in the HTML, shown as written
    assert "tl_demo_hard: loss chart" in captions
    assert "the same picture as tl_first.json node 8 'Save Image'" in captions


@pytest.mark.skipif(not REAL_PAGE, reason="set TL_DEMO_PAGE=out/demo/index.html to check a real demo's page")
def test_real_demo_page(browser: Any) -> None:
    page_file = Path(REAL_PAGE or "")
    found = check_page(browser, page_file, REAL_SCREENSHOT)
    print(f"{page_file}: {len(found['images'])} pictures loaded, screenshot {REAL_SCREENSHOT}")
