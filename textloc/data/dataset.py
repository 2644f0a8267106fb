"""The multi-concept training set: photos, their segmentation masks and the concepts to learn.

A set is a folder under ComfyUI's input/ folder, or one of the pack's bundled sample sets
(`[sample] NAME`, see set_folders), in one of two layouts:

(a) the authors' layout: `<set>/resized/NAME.png` (or `<set>/images/`) with the masks of concept k
    in `<set>/mask_k/NAME.png` (same stem, any supported extension; `<set>/mask/` = `mask_1/`);
(b) a flat folder: `<set>/NAME.png` with `<set>/NAME_mask_1.png`, `NAME_mask_2.png`, ...
    (`NAME_mask.png` = `NAME_mask_1.png`).

Photos and masks are resized and cropped together, so their pixels line up by construction. The
objects are immutable: ComfyUI caches node outputs and hands the same object to several nodes.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from kornia.geometry.transform import resize

from ..config import TOKEN_MAX_LENGTH, check_token_clashes
from ..errors import TLInputError
from ..weights.files import file_stamp
from .images import SUPPORTED_EXTENSIONS, is_supported_image, read_image_rgb, read_mask
from .masks import binarize, check_mask_coverage, feather, grow
from .set_folders import SetFolder, resolve_set_folder

IMAGE_FOLDERS: tuple[str, ...] = ("resized", "images")
_TOKEN_RE = re.compile(rf"[A-Za-z][A-Za-z0-9_]{{0,{TOKEN_MAX_LENGTH - 1}}}")
_MASK_FOLDER_RE = re.compile(r"mask(?:_(\d+))?", re.IGNORECASE)
_FLAT_MASK_RE = re.compile(r"(.+)_mask(?:_(\d+))?", re.IGNORECASE)
_LAYOUTS = (
    "use one of two layouts: (a) <set>/resized/NAME.png with masks <set>/mask_1/NAME.png, "
    "<set>/mask_2/NAME.png, ...; (b) <set>/NAME.png with masks <set>/NAME_mask_1.png, "
    f"<set>/NAME_mask_2.png, ... (file types: {' '.join(sorted(SUPPORTED_EXTENSIONS))})."
)


# ---------------------------------------------------------------------------------------------
# Names the user types


def validate_token_name(name: str, input_name: str = "token") -> str:
    """Return the stripped token; it becomes a file name and `embedding:NAME` in prompts."""
    text = name.strip() if isinstance(name, str) else ""
    if not _TOKEN_RE.fullmatch(text):
        raise TLInputError(
            input_name,
            f"{name!r} is not a valid token name: it must be one word of letters, digits and "
            f"underscores, start with a letter and have at most {TOKEN_MAX_LENGTH} characters.",
            "use a name such as tl_doll or tl_red_ball.",
        )
    return text


def validate_class_word(word: str, input_name: str = "class_word") -> str:
    """Return the stripped class word (one or more words, e.g. "robot toy") used in prompts."""
    text = word.strip() if isinstance(word, str) else ""
    if not _is_plain_words(text):
        raise TLInputError(
            input_name,
            f"{word!r} is not a valid class word: use letters, digits, spaces and hyphens only.",
            "type what the object is, e.g. doll or robot toy.",
        )
    return text


def validate_init_word(word: str, input_name: str = "init_word") -> str:
    """Return the stripped single word whose embedding initialises the new token."""
    text = word.strip() if isinstance(word, str) else ""
    if not _is_plain_words(text) or " " in text:
        raise TLInputError(
            input_name,
            f"{word!r} is not a valid init word: use one word of letters, digits and hyphens.",
            "keep the authors' default sks, or use the class word if it is one word (e.g. doll).",
        )
    return text


def _is_plain_words(text: str) -> bool:
    return any(ch.isalnum() for ch in text) and all(ch.isalnum() or ch in " -" for ch in text)


# ---------------------------------------------------------------------------------------------
# Data objects


@dataclass(frozen=True, eq=False, kw_only=True)
class Concept:
    """One concept to learn: its identifier token, class word and per-image target masks."""

    token: str
    class_word: str
    masks: torch.Tensor = field(repr=False)  # [N,H,W] float32 0..1 at the dataset resolution
    init_word: str = "sks"
    source: str  # where the masks came from, e.g. "mask_1" or "MASK input"
    class_images: torch.Tensor | None = field(default=None, repr=False)  # IMAGE [M,H,W,3] for prior preservation

    def __post_init__(self) -> None:
        object.__setattr__(self, "token", validate_token_name(self.token))
        object.__setattr__(self, "class_word", validate_class_word(self.class_word))
        object.__setattr__(self, "init_word", validate_init_word(self.init_word))
        if self.masks.ndim != 3 or self.masks.dtype != torch.float32:
            raise ValueError(
                f"Concept masks must be [N,H,W] float32, got {tuple(self.masks.shape)} {self.masks.dtype}"
            )


@dataclass(frozen=True, eq=False, kw_only=True)
class MultiConceptDataset:
    """Photos at `resolution` x `resolution`, the folder's masks and the concepts added so far."""

    name: str
    images: torch.Tensor = field(repr=False)  # [N,H,W,3] float32 0..1
    folder_masks: torch.Tensor = field(repr=False)  # [K,N,H,W] float32 in {0,1}; K may be 0
    image_names: tuple[str, ...]
    original_sizes: tuple[tuple[int, int], ...]  # (H, W) of each photo before resizing
    resolution: int
    concepts: tuple[Concept, ...] = ()

    def __post_init__(self) -> None:
        n, res = len(self.image_names), self.resolution
        if tuple(self.images.shape) != (n, res, res, 3):
            raise ValueError(f"images must be [{n},{res},{res},3], got {tuple(self.images.shape)}")
        if self.folder_masks.ndim != 4 or tuple(self.folder_masks.shape[1:]) != (n, res, res):
            raise ValueError(
                f"folder_masks must be [K,{n},{res},{res}], got {tuple(self.folder_masks.shape)}"
            )
        if len(self.original_sizes) != n:
            raise ValueError(f"{len(self.original_sizes)} original sizes for {n} images")
        for concept in self.concepts:
            if tuple(concept.masks.shape) != (n, res, res):
                raise ValueError(f"concept {concept.token} masks must be [{n},{res},{res}]")

    @property
    def num_images(self) -> int:
        return len(self.image_names)

    @property
    def num_folder_masks(self) -> int:
        return int(self.folder_masks.shape[0])

    def folder_mask(self, index: int) -> torch.Tensor:
        """The folder's mask_`index` (1-based) for every image, [N,H,W]."""
        count = self.num_folder_masks
        if count == 0:
            raise TLInputError(
                "mask_index",
                f"the folder {self.name!r} has no masks.",
                "add a mask_1/ folder (or NAME_mask_1.png files) to it, or connect a MASK input.",
            )
        if not 1 <= index <= count:
            raise TLInputError(
                "mask_index",
                f"is {index}, but the folder {self.name!r} has {count} mask(s) (mask_1..mask_{count}).",
                f"pick a mask_index from 1 to {count}.",
            )
        return self.folder_masks[index - 1]

    def folder_masks_batch(self) -> torch.Tensor:
        """All folder masks as one MASK batch, mask-index-major; all black [N,H,W] when there are none."""
        if self.num_folder_masks == 0:
            return torch.zeros(self.num_images, self.resolution, self.resolution)
        return self.folder_masks.reshape(-1, self.resolution, self.resolution)

    def with_concept(self, concept: Concept) -> MultiConceptDataset:
        """A new dataset with `concept` added; this one is left unchanged."""
        for existing in self.concepts:
            if existing.token.lower() == concept.token.lower():  # CLIP lowercases: 'TL_ball' is 'tl_ball'
                raise TLInputError(
                    "token",
                    f"{concept.token!r} is already used by another concept of this dataset ({existing.source}).",
                    f"give each Mask Target its own token, e.g. {concept.token}_2.",
                )
        concepts = (*self.concepts, concept)
        check_token_clashes([(c.token, c.class_word) for c in concepts])
        return dataclasses.replace(self, concepts=concepts)


# ---------------------------------------------------------------------------------------------
# Loading


@dataclass(frozen=True)
class _Sample:
    image: Path
    masks: tuple[Path, ...]  # mask_1..mask_K of this image


def load_dataset(
    input_root: Path, folder: str, resolution: int = 512, mask_threshold: float = 0.5
) -> MultiConceptDataset:
    """Read a set folder under `input_root` (or a `[sample]` set), resize/crop photos and masks
    together, binarize masks."""
    _validate_resolution(resolution)
    _validate_threshold(mask_threshold)
    location = resolve_set_folder(input_root, folder)
    samples = find_samples(location.path)
    for sample in samples:
        for path in (sample.image, *sample.masks):
            _check_inside(location, path)

    images, masks, sizes = [], [], []
    for sample in samples:
        image, sample_masks = _read_sample(sample)
        stacked = torch.cat([image.permute(2, 0, 1), *(m[None] for m in sample_masks)])
        fitted = resize_and_center_crop(stacked[None], resolution)[0]
        images.append(fitted[:3].permute(1, 2, 0).clamp(0.0, 1.0))
        masks.append(fitted[3:])
        sizes.append((int(image.shape[0]), int(image.shape[1])))

    folder_masks = binarize(torch.stack(masks, dim=1), mask_threshold)  # [K,N,H,W]
    for k in range(folder_masks.shape[0]):
        check_mask_coverage(
            folder_masks[k],
            [str(sample.masks[k]) for sample in samples],
            "mask",
            "redraw it (white = object, black = background) or choose another mask index.",
        )
    return MultiConceptDataset(
        name=folder.strip(),
        images=torch.stack(images).contiguous(),
        folder_masks=folder_masks.contiguous(),
        image_names=tuple(sample.image.name for sample in samples),
        original_sizes=tuple(sizes),
        resolution=resolution,
    )


def fit_images(images: torch.Tensor, resolution: int) -> torch.Tensor:
    """IMAGE [M,H,W,C] -> [M,res,res,3] with the same resize + centre crop as the photos."""
    fitted = resize_and_center_crop(images[..., :3].permute(0, 3, 1, 2).float(), resolution)
    return fitted.permute(0, 2, 3, 1).clamp(0.0, 1.0).contiguous()


def load_class_images(input_root: Path, folder: str, resolution: int) -> torch.Tensor:
    """Every image of a folder under input/ (class images for prior preservation), fitted to `resolution`."""
    location = resolve_set_folder(input_root, folder)
    files = image_files(location.path)
    if not files:
        raise TLInputError(
            f"class images folder '{folder}'", "holds no images.",
            "put the class images (e.g. 200 generated photos of the class) directly in that folder, "
            "or leave class_images_folder empty.")
    images = []
    for path in files:
        _check_inside(location, path)
        images.append(fit_images(read_image_rgb(path)[None], resolution)[0])
    return torch.stack(images)


def resize_and_center_crop(batch: torch.Tensor, resolution: int) -> torch.Tensor:
    """[B,C,H,W] -> [B,C,res,res]: shorter side to `res` (antialiased bilinear), then centre crop."""
    resized = resize(batch, resolution, interpolation="bilinear", side="short", antialias=True)
    height, width = resized.shape[-2:]
    top, left = (height - resolution) // 2, (width - resolution) // 2
    return resized[..., top : top + resolution, left : left + resolution]


def folder_fingerprint(input_root: Path, folder: str) -> tuple | str:
    """What the files of a set folder look like now (relative path, size, mtime of every file).

    ComfyUI re-runs a node only when its inputs change; the folder's name alone would keep serving
    the photos it read before they were edited. A folder that cannot be read gives its name, and
    the node's own error follows when it runs.
    """
    try:
        root = resolve_set_folder(input_root, folder).path
        files = sorted(p for p in root.rglob("*") if p.is_file())
        return tuple((str(p.relative_to(root)), *file_stamp(p)) for p in files)
    except (OSError, TLInputError):
        return str(folder)


def find_samples(folder_path: Path) -> list[_Sample]:
    """Detect the layout and pair every photo with its masks, sorted by photo file name."""
    image_folders = [folder_path / name for name in IMAGE_FOLDERS if (folder_path / name).is_dir()]
    if len(image_folders) > 1:
        raise TLInputError(
            str(folder_path),
            "has both a resized/ and an images/ folder, so it is unclear which holds the photos.",
            "keep the photos in one of them and rename or remove the other.",
        )
    if image_folders:
        return _authors_layout(folder_path, image_folders[0])
    return _flat_layout(folder_path)


def _authors_layout(folder_path: Path, image_folder: Path) -> list[_Sample]:
    images = image_files(image_folder)
    if not images:
        raise TLInputError(str(image_folder), "has no photos.", _LAYOUTS)
    image_by_stem = _by_stem(images)
    mask_files: list[dict[str, Path]] = []
    for mask_folder in _mask_folders(folder_path):
        masks = _by_stem(image_files(mask_folder))
        for stem, image in image_by_stem.items():
            if stem not in masks:
                raise TLInputError(
                    str(image),
                    f"has no mask in {mask_folder.name}/ (expected {mask_folder / (stem + '.png')}).",
                    "add the mask (same file name, white = object) or remove the photo.",
                )
        for stem, mask in masks.items():
            if stem not in image_by_stem:
                raise TLInputError(
                    str(mask),
                    f"is a mask without a photo: there is no {image_folder / stem}.* .",
                    "add the photo under the same file name or remove the mask.",
                )
        mask_files.append(masks)
    return [_Sample(image, tuple(m[stem] for m in mask_files)) for stem, image in image_by_stem.items()]


def _mask_folders(folder_path: Path) -> list[Path]:
    """mask_1/, mask_2/, ... in order (mask/ counts as mask_1/); gaps and duplicates are errors."""
    by_index: dict[int, Path] = {}
    for child in sorted(folder_path.iterdir()):
        match = _MASK_FOLDER_RE.fullmatch(child.name)
        if not match or not child.is_dir():
            continue
        index = int(match.group(1) or 1)
        if index == 0:
            raise TLInputError(str(child), "is numbered 0, but mask folders start at mask_1.", "rename it.")
        if index in by_index:
            raise TLInputError(
                str(child),
                f"and {by_index[index].name}/ both hold mask {index}.",
                "keep one of them (mask/ counts as mask_1/).",
            )
        by_index[index] = child
    for index in range(1, len(by_index) + 1):
        if index not in by_index:
            raise TLInputError(
                str(folder_path),
                f"has mask folders {sorted(by_index)} but no mask_{index}/.",
                "number the mask folders mask_1, mask_2, ... without gaps.",
            )
    return [by_index[index] for index in sorted(by_index)]


def _flat_layout(folder_path: Path) -> list[_Sample]:
    images: list[Path] = []
    masks: dict[tuple[str, int], Path] = {}
    for path in image_files(folder_path):
        match = _FLAT_MASK_RE.fullmatch(path.stem)
        if not match:
            images.append(path)
            continue
        key = (match.group(1), int(match.group(2) or 1))
        if key[1] == 0:
            raise TLInputError(str(path), "is mask number 0, but masks start at _mask_1.", "rename it.")
        if key in masks:
            raise TLInputError(
                str(path),
                f"and {masks[key].name} are both mask {key[1]} of {key[0]}.",
                "keep one of them (NAME_mask counts as NAME_mask_1).",
            )
        masks[key] = path
    if not images:
        problem = "has masks but no photos." if masks else "has no photos."
        raise TLInputError(str(folder_path), problem, _LAYOUTS)

    image_by_stem = _by_stem(images)
    count = max((index for _, index in masks), default=0)
    for stem, index in masks:
        if stem not in image_by_stem:
            raise TLInputError(
                str(masks[(stem, index)]),
                f"is a mask without a photo: there is no {folder_path / stem}.* .",
                "add the photo or rename/remove the mask.",
            )
    samples = []
    for stem, image in image_by_stem.items():
        for index in range(1, count + 1):
            if (stem, index) not in masks:
                raise TLInputError(
                    str(image),
                    f"has no mask {index} (expected {folder_path / f'{stem}_mask_{index}.png'}).",
                    f"add the mask (white = object), or remove the photo. Every photo needs masks 1..{count}.",
                )
        samples.append(_Sample(image, tuple(masks[(stem, index)] for index in range(1, count + 1))))
    return samples


def image_files(folder: Path) -> list[Path]:
    """Visible image files of a folder, sorted by name."""
    return sorted(
        (p for p in folder.iterdir() if p.is_file() and is_supported_image(p)), key=lambda p: p.name
    )


def _by_stem(paths: Sequence[Path]) -> dict[str, Path]:
    """Map file stems to files (sorted by file name); two files with one stem are ambiguous."""
    by_stem: dict[str, Path] = {}
    for path in paths:
        if path.stem in by_stem:
            raise TLInputError(
                str(path),
                f"and {by_stem[path.stem].name} share the name {path.stem!r}, so masks cannot be matched.",
                "keep only one of them.",
            )
        by_stem[path.stem] = path
    return by_stem


def _check_inside(location: SetFolder, path: Path) -> None:
    if not path.resolve().is_relative_to(location.root):
        raise TLInputError(
            str(path),
            f"links to {path.resolve()}, outside {location.root}: the file must be inside {location.where}.",
            "copy the file into the set folder instead of linking to it.",
        )


def _read_sample(sample: _Sample) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Read a photo and its masks, checking every mask has the photo's size."""
    image = read_image_rgb(sample.image)
    masks = [read_mask(path) for path in sample.masks]
    height, width = image.shape[:2]
    for path, mask in zip(sample.masks, masks, strict=True):
        if mask.shape != (height, width):
            swapped = (
                " (width and height are swapped: the photo may carry an EXIF rotation the mask lacks)"
                if mask.shape == (width, height)
                else ""
            )
            raise TLInputError(
                str(path),
                f"is {mask.shape[1]}x{mask.shape[0]} (WxH) but its photo {sample.image.name} is "
                f"{width}x{height}{swapped}.",
                "export the mask at the photo's size, over the same pixels.",
            )
    return image, masks


def _validate_resolution(resolution: int) -> None:
    if not isinstance(resolution, int) or resolution < 64 or resolution % 8:
        raise TLInputError(
            "resolution",
            f"is {resolution!r}; it must be a multiple of 8 and at least 64.",
            "use 512 (the authors' size) or another multiple of 8 such as 768.",
        )


def _validate_threshold(threshold: float) -> None:
    if not 0.0 < float(threshold) < 1.0:
        raise TLInputError(
            "mask_threshold",
            f"is {threshold}; it must lie strictly between 0 and 1.",
            "use 0.5 unless the masks are soft, then lower it to keep more of the edge.",
        )


# ---------------------------------------------------------------------------------------------
# Masks from other nodes and concepts


def fit_external_mask(mask: torch.Tensor, dataset: MultiConceptDataset, index: int = 1) -> torch.Tensor:
    """Bring a ComfyUI MASK ([B,H,W] or [H,W], any dtype) to the dataset's [N,res,res] float32.

    A batch of K masks per photo (K*N, mask 1 of every photo first, as Load Multi-Concept Dataset's and
    Masks from Word Attention's `masks` outputs) gives its `index`-th block (1-based), like mask_index.
    """
    if not isinstance(mask, torch.Tensor):
        raise TLInputError(
            "mask", f"is a {type(mask).__name__}, not a MASK tensor.", "connect a MASK output."
        )
    values = _mask_to_float(mask)
    if values.ndim == 2:
        values = values[None]
    if values.ndim != 3:
        raise TLInputError(
            "mask", f"has shape {tuple(mask.shape)}, expected [B,H,W].", "connect a MASK output."
        )
    count, height, width = values.shape
    images = dataset.num_images
    if count == 0 or count % images:
        raise TLInputError(
            "mask",
            f"has {count} mask(s) but the dataset {dataset.name!r} has {dataset.num_images} images.",
            "give one mask per image, in the same order as the dataset's IMAGE output (or K masks per "
            "image: mask 1 of every image, then mask 2 ...).",
        )
    blocks = count // images
    if blocks > 1:
        if not 1 <= index <= blocks:
            raise TLInputError(
                "mask_index",
                f"is {index}, but the MASK input holds {blocks} masks per image ({count} for {images} images).",
                f"pick a mask_index from 1 to {blocks}.",
            )
        values = values[(index - 1) * images : index * images]
    res = dataset.resolution
    if (height, width) == (res, res):
        return values.contiguous()
    if all(size == (height, width) for size in dataset.original_sizes):
        return resize_and_center_crop(values[:, None], res)[:, 0].clamp(0.0, 1.0).contiguous()
    photo_sizes = ", ".join(sorted({f"{w}x{h}" for h, w in dataset.original_sizes}))
    raise TLInputError(
        "mask",
        f"is {width}x{height}, which is neither the dataset size {res}x{res} nor the size of every photo "
        f"({photo_sizes}).",
        "draw or compute the masks on the dataset's IMAGE output, or on photos that all share one size.",
    )


def _mask_to_float(mask: torch.Tensor) -> torch.Tensor:
    """bool/uint8/int/float masks -> float32 0..1 on the CPU."""
    mask = mask.detach().cpu()
    if mask.dtype == torch.bool:
        return mask.to(torch.float32)
    if mask.dtype == torch.uint8:
        return mask.to(torch.float32) / 255.0
    values = mask.to(torch.float32)
    return torch.nan_to_num(values, nan=0.0).clamp(0.0, 1.0)


def build_concept(
    dataset: MultiConceptDataset,
    *,
    token: str,
    class_word: str,
    init_word: str = "sks",
    mask_index: int = 1,
    grow_pixels: int = 0,
    feather_pixels: int = 0,
    mask: torch.Tensor | None = None,
    class_images: torch.Tensor | None = None,
) -> Concept:
    """A concept from the folder's mask_`mask_index` (or an external MASK), cleaned and checked."""
    if not isinstance(dataset, MultiConceptDataset):
        raise TLInputError(
            "dataset", "is not a Multi-Concept Dataset.", "connect Load Multi-Concept Dataset."
        )
    token = validate_token_name(token)
    class_word = validate_class_word(class_word)
    init_word = validate_init_word(init_word)
    check_token_clashes([(token, class_word)])  # the rest of the prompt is checked by the trainer
    if mask is not None:
        base, source = fit_external_mask(mask, dataset, mask_index), "MASK input"
        if mask.ndim == 3 and len(mask) > dataset.num_images:
            source = f"MASK input (mask {mask_index} of each image)"
    else:
        base, source = dataset.folder_mask(mask_index), f"mask_{mask_index}"
    cleaned = feather(grow(base, grow_pixels), feather_pixels)
    changed = grow_pixels != 0 or feather_pixels != 0
    what = f"{source} after grow {grow_pixels} / feather {feather_pixels}" if changed else source
    fix = "move grow closer to 0, or redraw the mask." if changed else None
    check_mask_coverage(cleaned, dataset.image_names, f"{what} for image", fix)
    if class_images is not None:
        if class_images.ndim != 4 or class_images.shape[-1] < 3 or len(class_images) == 0:
            raise TLInputError(
                "class_images",
                f"is not an IMAGE batch (got shape {tuple(class_images.shape)}).",
                "connect an IMAGE output, e.g. VAE Decode after a KSampler prompted with the class word.",
            )
        class_images = fit_images(class_images, dataset.resolution)
    return Concept(
        token=token,
        class_word=class_word,
        masks=cleaned.clone(),
        init_word=init_word,
        source=source,
        class_images=class_images,
    )
