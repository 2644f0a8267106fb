"""Name, caption and deduplicate the pictures the demo's workflows report, for its manifest.

A picture's file says what it is: `<workflow stem>/<node label>_<n>.png`, the label taken from the
node's title or, for an untitled node, from what the node does (`generated_guidance_hard`,
`mask_overlay_tl_ball`). A picture with the same pixels as one already written is not written
again: its manifest entry points at the first file, so the page shows it in both places.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import unicodedata
import uuid
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

Prompt = Mapping[str, Mapping[str, Any]]  # an API prompt: {node id: {class_type, inputs, _meta}}
MAX_SLUG = 60
# The output slot of each pack node that carries the same pictures as the node's own preview.
PREVIEW_SLOTS = {"TL_MaskTarget": 1, "TL_TrainKV": 4, "TL_ShowTokenAttention": 1, "TL_MasksFromWordAttention": 2}


@dataclass(frozen=True)
class DemoPicture:
    """One picture a node reported, as the manifest and the page describe it."""

    file: str  # path relative to the demo folder, with "/" separators
    workflow: str  # the workflow file, e.g. tl_train.json
    node_id: str
    node_title: str  # the title the editor shows
    node_class: str
    kind: str  # "output": saved to ComfyUI's output/ folder; "temp": a preview
    index: int  # 1-based, among this node's pictures
    count: int  # how many pictures this node reported
    caption: str  # what the picture shows


@dataclass(frozen=True)
class ReportedImage:
    """One image entry of a prompt's history, with its bytes."""

    node_id: str
    kind: str
    data: bytes


def slug(text: str) -> str:
    """A file-name-safe form of a label: ASCII lower case, words joined by '_'."""
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    words = re.sub(r"[^a-z0-9]+", "_", ascii_text.lower()).strip("_")
    return words[:MAX_SLUG].rstrip("_") or "picture"


def pixel_key(data: bytes) -> str:
    """A hash of an image's size and RGBA pixels: equal for the same picture saved twice, whatever
    the PNG encoder, chunks or colour mode (RGB vs opaque RGBA) said."""
    with Image.open(io.BytesIO(data)) as image:
        rgba = image.convert("RGBA")
    return hashlib.sha256(f"{rgba.width}x{rgba.height}:".encode() + rgba.tobytes()).hexdigest()


def _source(prompt: Prompt, node_id: str, input_name: str) -> tuple[str, Mapping[str, Any]] | None:
    """The node feeding `input_name` of a node, if a link feeds it."""
    link = prompt.get(node_id, {}).get("inputs", {}).get(input_name)
    if isinstance(link, list) and len(link) == 2 and str(link[0]) in prompt:
        return str(link[0]), prompt[str(link[0])]
    return None


def _title(prompt: Prompt, node_id: str) -> str:
    node = prompt[node_id]
    return str(node.get("_meta", {}).get("title") or node["class_type"])


def _words(text: str) -> list[str]:
    return [w.strip() for w in str(text).split(",") if w.strip()]


def _strip_tl(prefix: str) -> str:
    return prefix[3:] if prefix.startswith("tl_") and len(prefix) > 3 else prefix


def _sampled_from(prompt: Prompt, node_id: str) -> tuple[str, Mapping[str, Any]] | None:
    """The KSampler behind an IMAGE input fed by VAEDecode, if that is how the picture was made."""
    decode = _source(prompt, node_id, "images")
    if decode is None or decode[1]["class_type"] != "VAEDecode":
        return None
    sampler = _source(prompt, decode[0], "samples")
    return sampler if sampler is not None and sampler[1]["class_type"] == "KSampler" else None


def node_label(prompt: Prompt, node_id: str, titles: Mapping[str, str]) -> str:
    """A short name for an output node's pictures. Nodes whose preview is always the same kind of
    picture are named after it (a trainer titled 'Train without guidance' still shows the attention
    map beside the mask); others by the title the workflow gives them, else by what they do."""
    node = prompt[node_id]
    kind, inputs = node["class_type"], node.get("inputs", {})
    fixed = {
        "TL_MaskTarget": lambda: f"mask overlay {inputs.get('token', '')}",
        "TL_TrainKV": lambda: f"attention vs mask {inputs.get('output_name', '')}",
        "LossGraphNode": lambda: "loss graph",
    }
    if kind in fixed:
        return fixed[kind]()
    if titles.get(node_id):
        return titles[node_id]
    if kind == "SaveImage":
        prefix = _strip_tl(str(inputs.get("filename_prefix", "saved")))
        return f"generated {prefix}" if _sampled_from(prompt, node_id) else prefix
    named = {"TL_ShowTokenAttention": "attention heatmaps", "TL_MasksFromWordAttention": "auto masks"}
    return named.get(kind) or _title(prompt, node_id)


def _generated_caption(prompt: Prompt, sampler: tuple[str, Mapping[str, Any]], n: str) -> str:
    inputs = sampler[1].get("inputs", {})
    positive = _source(prompt, sampler[0], "positive")
    text = positive[1].get("inputs", {}).get("text") if positive else None
    model = _source(prompt, sampler[0], "model")
    made = f"picture {n} generated from '{text}'" if isinstance(text, str) else f"picture {n} generated"
    seed = f", seed {inputs['seed']}" if "seed" in inputs else ""
    via = f", model from '{_title(prompt, model[0])}'" if model else ""
    return made + seed + via


def picture_caption(prompt: Prompt, node_id: str, index: int, count: int, titles: Mapping[str, str]) -> str:
    """What picture `index` (1-based) of `count` that a node reported shows."""
    node = prompt[node_id]
    kind, inputs = node["class_type"], node.get("inputs", {})
    n = f"{index} of {count}"
    if kind == "TL_MaskTarget":
        return (f"Photo {n} with the mask of {inputs.get('token', '?')} (the {inputs.get('class_word', '?')}, "
                f"mask {inputs.get('mask_index', '?')}) drawn over it")
    if kind == "TL_TrainKV":
        concept = f", concept {n}" if count > 1 else ""
        return (f"Run {inputs.get('output_name', '?')} ({inputs.get('guidance', '?')} guidance) after "
                f"training{concept}: a training photo, the token's attention map over it and its mask")
    if kind == "TL_ShowTokenAttention":
        words = _words(inputs.get("words", "")) or ["?"]
        picture = (index - 1) // len(words) + 1
        word = words[(index - 1) % len(words)]
        where = (f"training photo {picture}" if _source(prompt, node_id, "images")
                 else f"picture {picture} sampled from '{inputs.get('text', '?')}'")
        return f"Where '{word}' attends in {where}"
    if kind == "TL_MasksFromWordAttention":
        return f"Masks drawn from the attention of '{inputs.get('words', '?')}', picture {n}"
    if kind == "LossGraphNode":
        return "Loss per training step (ComfyUI's Plot Loss Graph)"
    detail = f"picture {n}"
    if kind in ("SaveImage", "PreviewImage"):
        sampler = _sampled_from(prompt, node_id)
        source = _source(prompt, node_id, "images")
        link = prompt[node_id]["inputs"].get("images")
        if sampler:
            detail = _generated_caption(prompt, sampler, n)
        elif source and PREVIEW_SLOTS.get(source[1]["class_type"]) == link[1]:
            # a saved copy of a pack node's preview: the same picture, so the same caption
            return picture_caption(prompt, source[0], index, count, titles)
        elif source:
            detail = f"picture {n} from '{_title(prompt, source[0])}'"
    return f"{titles[node_id]}: {detail}" if titles.get(node_id) else detail[0].upper() + detail[1:]


def unique_labels(prompt: Prompt, node_ids: Sequence[str], titles: Mapping[str, str]) -> dict[str, str]:
    """Slugged labels of the nodes; two nodes with the same label get their node id appended."""
    labels = {node_id: slug(node_label(prompt, node_id, titles)) for node_id in node_ids}
    clashes = Counter(labels.values())
    return {node_id: f"{label}_node{node_id}" if clashes[label] > 1 else label for node_id, label in labels.items()}


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write a file so that readers see the old or the new content, never half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


class PictureWriter:
    """Writes the pictures of every workflow under one folder, each distinct picture once."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.pictures: list[DemoPicture] = []
        self._file_of_key: dict[str, str] = {}

    def add_workflow(self, workflow: str, prompt: Prompt, titles: Mapping[str, str],
                     images: Sequence[ReportedImage]) -> list[DemoPicture]:
        """Name, caption and write (unless already written) the images one workflow's run reported."""
        counts = Counter(image.node_id for image in images)
        labels = unique_labels(prompt, list(counts), titles)
        stem = Path(workflow).stem
        added, seen = [], Counter()
        for image in images:
            seen[image.node_id] += 1
            index, count = seen[image.node_id], counts[image.node_id]
            key = pixel_key(image.data)
            file = self._file_of_key.get(key)
            if file is None:
                file = f"{stem}/{labels[image.node_id]}_{index}.png"
                write_bytes_atomic(self.root / file, image.data)
                self._file_of_key[key] = file
            node = prompt[image.node_id]
            added.append(DemoPicture(
                file=file, workflow=workflow, node_id=image.node_id, node_title=_title(prompt, image.node_id),
                node_class=node["class_type"], kind=image.kind, index=index, count=count,
                caption=picture_caption(prompt, image.node_id, index, count, titles)))
        self.pictures.extend(added)
        return added


def explicit_titles(workflow: Mapping[str, Any]) -> dict[str, str]:
    """{node id: title} of the nodes an editor-format workflow gives a title of their own."""
    return {str(node["id"]): str(node["title"]) for node in workflow.get("nodes", []) if node.get("title")}


def run_pictures(runs_dir: Path, root: Path) -> dict[str, list[dict[str, str]]]:
    """{run: [{file, caption}]} for every picture in a training run's folder (not its checkpoints),
    files relative to `root`, captions from the file names (`attention_vs_mask_step000100.png` ->
    'attention vs mask, step 100')."""
    found: dict[str, list[dict[str, str]]] = {}
    for run in sorted(p for p in Path(runs_dir).iterdir() if p.is_dir()) if Path(runs_dir).is_dir() else []:
        files = sorted(p for p in run.rglob("*.png") if "checkpoints" not in p.relative_to(run).parts)
        if files:
            found[run.name] = [{"file": p.relative_to(root).as_posix(), "caption": caption_from_name(p.stem)}
                               for p in files]
    return found


def caption_from_name(stem: str) -> str:
    """'attention_vs_mask_step000100' -> 'attention vs mask, step 100'."""
    text = re.sub(r"[_\-]+", " ", stem).strip()
    return re.sub(r"\s*\bstep\s*0*(\d+)\b", r", step \1", text).lstrip(", ") or stem
