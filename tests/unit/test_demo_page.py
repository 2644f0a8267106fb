"""The demo's picture names, deduplication and index.html, built from real PNG files on disk.

The API prompts here are plain data in the format ComfyUI's /prompt takes (what
headless.workflow.to_api_prompt builds), so no server is needed.
"""

from __future__ import annotations

import io
import json
from dataclasses import asdict
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from PIL import Image, ImageDraw, PngImagePlugin

from headless.demo_page import render_page
from headless.demo_pictures import (
    PictureWriter,
    ReportedImage,
    caption_from_name,
    pixel_key,
    run_pictures,
    slug,
    unique_labels,
)

TRICKY = "Photos <b>&</b> \"masks\""  # a node title that must be escaped
PROMPT: dict[str, Any] = {
    "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "world.safetensors"},
          "_meta": {"title": "Load Checkpoint"}},
    "3": {"class_type": "TL_MaskTarget", "inputs": {"token": "tl_ball", "class_word": "ball", "mask_index": 1},
          "_meta": {"title": "Mask Target"}},
    "4": {"class_type": "PreviewImage", "inputs": {"images": ["2", 1]}, "_meta": {"title": TRICKY}},
    "5": {"class_type": "CLIPTextEncode", "inputs": {"text": "a photo of a embedding:tl_ball ball",
                                                     "clip": ["1", 1]}, "_meta": {"title": "CLIP Text Encode"}},
    "6": {"class_type": "KSampler", "inputs": {"seed": 1, "model": ["1", 0], "positive": ["5", 0]},
          "_meta": {"title": "KSampler"}},
    "7": {"class_type": "VAEDecode", "inputs": {"samples": ["6", 0], "vae": ["1", 2]},
          "_meta": {"title": "VAE Decode"}},
    "8": {"class_type": "SaveImage", "inputs": {"filename_prefix": "tl_guidance_hard", "images": ["7", 0]},
          "_meta": {"title": "Save Image"}},
    "9": {"class_type": "TL_ShowTokenAttention", "inputs": {"words": "embedding:tl_ball, ball", "text": "x"},
          "_meta": {"title": "Show Token Attention"}},
}
TITLES = {"4": TRICKY}


def _png(color: str, size: int = 24, text_chunk: str | None = None, mode: str = "RGB") -> bytes:
    """A real picture: a disc of one colour on grey, optionally with a PNG text chunk (other bytes)."""
    image = Image.new("RGB", (size, size), (90, 90, 90))
    ImageDraw.Draw(image).ellipse((4, 4, size - 4, size - 4), fill=color)
    info = None
    if text_chunk:
        info = PngImagePlugin.PngInfo()
        info.add_text("comment", text_chunk)
    buffer = io.BytesIO()
    image.convert(mode).save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


class _PageReader(HTMLParser):
    """The img sources, link targets and figure captions of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.sources: list[str] = []
        self.links: list[str] = []
        self.captions: list[str] = []
        self._in_caption = False
        self.tags: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        values = dict(attrs)
        if tag == "img":
            self.sources.append(values["src"] or "")
        if tag == "a" and values.get("href"):
            self.links.append(values["href"] or "")
        if tag == "figcaption":
            self._in_caption = True
            self.captions.append("")

    def handle_endtag(self, tag: str) -> None:
        if tag == "figcaption":
            self._in_caption = False

    def handle_data(self, data: str) -> None:
        if self._in_caption:
            self.captions[-1] += data


@pytest.fixture()
def demo(tmp_path: Path) -> tuple[Path, dict[str, Any], dict[str, Any]]:
    """A small demo folder: two workflows' pictures (one repeated across them), a run folder picture."""
    writer = PictureWriter(tmp_path)
    writer.add_workflow("tl_first.json", PROMPT, TITLES, [
        ReportedImage("3", "temp", _png("magenta")), ReportedImage("3", "temp", _png("yellow")),
        ReportedImage("4", "temp", _png("cyan")),
        ReportedImage("8", "output", _png("red")), ReportedImage("8", "output", _png("blue")),
        ReportedImage("9", "temp", _png("green")), ReportedImage("9", "temp", _png("white")),
    ])
    # the same red picture again with other bytes (a text chunk, RGBA): written once, shown twice
    writer.add_workflow("tl_second.json", PROMPT, {}, [ReportedImage("8", "output",
                                                                      _png("red", text_chunk="again", mode="RGBA"))])
    run = tmp_path / "output" / "textual_localization" / "tl_demo_hard"
    (run / "attention").mkdir(parents=True)
    (run / "attention" / "attention_vs_mask_step000100.png").write_bytes(_png("orange"))
    (run / "checkpoints" / "checkpoint-10").mkdir(parents=True)
    (run / "checkpoints" / "checkpoint-10" / "preview.png").write_bytes(_png("orange"))
    summary = {"runs": {"tl_demo_hard": {"guidance": "hard", "loss start": 1.5, "loss end": 0.25,
                                         "before own": 0.219, "after own": 0.576}},
               "guidance_compare": {"hard": {"pictures": 32, "fidelity [90 % interval]": "0.91 [0.79, 0.96]",
                                             "leakage [90 % interval]": "0.25 [0.14, 0.40]"}},
               "evaluation": {"tl_demo_ball": {"pictures": 4, "clip_i": 0.308}}}
    manifest = {"title": "Demo <title>", "intro": ["What the demo shows & why."], "overviews": [],
                "workflows": [{"name": "tl_first.json", "about": "Trains <the> ball.", "runs": ["tl_demo_hard"],
                               "evaluations": ["tl_demo_ball"]},
                              {"name": "tl_second.json", "about": "Generates again.", "runs": [],
                               "evaluations": []}],
                "pictures": [asdict(p) for p in writer.pictures],
                "run_pictures": run_pictures(tmp_path / "output" / "textual_localization", tmp_path)}
    return tmp_path, manifest, summary


def test_files_are_named_after_the_node_and_numbered(demo: tuple[Path, dict, dict]) -> None:
    root, manifest, _ = demo
    files = [p["file"] for p in manifest["pictures"]]
    assert files == ["tl_first/mask_overlay_tl_ball_1.png", "tl_first/mask_overlay_tl_ball_2.png",
                     "tl_first/photos_b_b_masks_1.png", "tl_first/generated_guidance_hard_1.png",
                     "tl_first/generated_guidance_hard_2.png", "tl_first/attention_heatmaps_1.png",
                     "tl_first/attention_heatmaps_2.png", "tl_first/generated_guidance_hard_1.png"]
    written = sorted(p.relative_to(root).as_posix() for p in root.glob("tl_*/*.png"))
    assert written == sorted(set(files)), "each distinct picture is written exactly once"
    assert not (root / "tl_second").exists()
    second = manifest["pictures"][-1]
    assert (second["workflow"], second["node_id"], second["kind"]) == ("tl_second.json", "8", "output")


def test_captions_say_what_each_picture_shows(demo: tuple[Path, dict, dict]) -> None:
    captions = [p["caption"] for p in demo[1]["pictures"]]
    assert captions[0] == "Photo 1 of 2 with the mask of tl_ball (the ball, mask 1) drawn over it"
    assert captions[2] == f"{TRICKY}: picture 1 of 1"
    assert captions[3] == ("Picture 1 of 2 generated from 'a photo of a embedding:tl_ball ball', seed 1, "
                           "model from 'Load Checkpoint'")
    assert captions[5:7] == ["Where 'embedding:tl_ball' attends in picture 1 sampled from 'x'",
                             "Where 'ball' attends in picture 1 sampled from 'x'"]


def test_same_pixels_in_other_bytes_count_as_one_picture() -> None:
    plain, tagged = _png("red"), _png("red", text_chunk="other bytes", mode="RGBA")
    assert plain != tagged
    assert pixel_key(plain) == pixel_key(tagged)
    assert pixel_key(plain) != pixel_key(_png("red", size=26))
    assert pixel_key(plain) != pixel_key(_png("blue"))


def test_clashing_labels_get_their_node_id() -> None:
    prompt = {"2": PROMPT["9"], "3": PROMPT["9"], "8": PROMPT["8"]}
    assert unique_labels(prompt, ["2", "3", "8"], {}) == {
        "2": "attention_heatmaps_node2", "3": "attention_heatmaps_node3", "8": "guidance_hard"}


def test_slug_and_caption_from_file_name() -> None:
    assert slug("Before: maps on the photos") == "before_maps_on_the_photos"
    assert slug("Fotos größer") == "fotos_groer"
    assert slug("***") == "picture"
    assert caption_from_name("attention_vs_mask_step000100") == "attention vs mask, step 100"
    assert caption_from_name("attention_step5") == "attention, step 5"
    assert caption_from_name("loss_chart") == "loss chart"


def test_run_pictures_skip_checkpoints(demo: tuple[Path, dict, dict]) -> None:
    assert demo[1]["run_pictures"] == {"tl_demo_hard": [
        {"file": "output/textual_localization/tl_demo_hard/attention/attention_vs_mask_step000100.png",
         "caption": "attention vs mask, step 100"}]}


def test_page_shows_every_picture_with_its_caption(demo: tuple[Path, dict, dict]) -> None:
    root, manifest, summary = demo
    page = render_page(manifest, summary)
    reader = _PageReader()
    reader.feed(page)
    captions = " | ".join(reader.captions)
    for picture in manifest["pictures"]:
        assert picture["caption"] in captions, picture
        assert f"{picture['workflow']}, node {picture['node_id']} '{picture['node_title']}'" in captions
    assert "tl_demo_hard: attention vs mask, step 100" in captions
    assert "the same picture as tl_first.json node 8 'Save Image'" in captions
    expected = {p["file"] for p in manifest["pictures"]} | {p["file"] for p in manifest["run_pictures"]["tl_demo_hard"]}
    assert set(reader.sources) == expected
    for number in ("1.500", "0.250", "0.576", "0.308", "leakage [90 % interval]", "0.25 [0.14, 0.40]",
                   "90 % Wilson interval"):
        assert number in page


def test_page_links_are_relative_and_exist(demo: tuple[Path, dict, dict]) -> None:
    root, manifest, summary = demo
    reader = _PageReader()
    reader.feed(render_page(manifest, summary))
    assert reader.sources
    for target in reader.sources + reader.links:
        if target.startswith("#"):
            continue
        assert "://" not in target and not target.startswith("/"), target
        assert (root / target).is_file(), f"{target} does not exist beside the page"


def test_page_escapes_every_text(demo: tuple[Path, dict, dict]) -> None:
    _, manifest, summary = demo
    summary = json.loads(json.dumps(summary))
    summary["runs"]["<script>alert(1)</script>"] = {"guidance": "<i>none</i>"}
    page = render_page(manifest, summary)
    assert "<script>" not in page and "<b>" not in page and "<i>" not in page
    assert page.count("<title>") == 1
    assert "Photos &lt;b&gt;&amp;&lt;/b&gt; &quot;masks&quot;" in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "Demo &lt;title&gt;" in page
    reader = _PageReader()
    reader.feed(page)
    assert "script" not in reader.tags and "b" not in reader.tags


def test_a_link_outside_the_demo_folder_is_refused(demo: tuple[Path, dict, dict]) -> None:
    _, manifest, summary = demo
    manifest["pictures"][0]["file"] = "../elsewhere.png"
    with pytest.raises(ValueError, match="inside the demo folder"):
        render_page(manifest, summary)
