"""Where a set folder lives: under ComfyUI's input/ folder, or one of the pack's bundled sample sets.

The folder list shows the sub-folders of input/ by their plain names and the pack's sample sets
as `[sample] NAME`, so the example workflows run right after cloning and an input/ folder with a
sample's name stays a different entry. Nothing else is reachable: a plain name must stay inside
input/, a `[sample]` name must be one of the sets in the pack's `sample_data/` (symlinked sets are
not offered) and any sub-folder after it must stay inside that set. Sample sets are only read.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from ..errors import TLInputError

SAMPLE_PREFIX = "[sample] "
SAMPLE_SETS_DIR = Path(__file__).resolve().parents[2] / "sample_data"
INSIDE_INPUT = "the folder must be inside ComfyUI's input/ folder"


@dataclass(frozen=True)
class SetFolder:
    """A resolved set folder and the root that every file read from it must stay inside."""

    path: Path
    root: Path
    where: str  # for messages: "ComfyUI's input/ folder" or "the pack's sample set NAME"


def sample_set_names(samples_root: Path = SAMPLE_SETS_DIR) -> tuple[str, ...]:
    """The bundled sample sets: real (not symlinked), visible folders directly in `samples_root`."""
    try:
        entries = list(Path(samples_root).iterdir())
    except OSError:
        return ()
    return tuple(sorted(p.name for p in entries if p.is_dir() and not p.is_symlink() and not p.name.startswith(".")))


def sample_entry(name: str) -> str:
    """The folder-list entry of a bundled set, e.g. `[sample] shapes_pair`."""
    return f"{SAMPLE_PREFIX}{name}"


def folder_choices(input_folders: Iterable[str], samples_root: Path = SAMPLE_SETS_DIR) -> list[str]:
    """The folder list: input/'s sub-folders, then the bundled sets. Names starting with `[sample]`
    always mean the pack's sets, so an input/ folder named that way is left out (it cannot be read)."""
    samples = [sample_entry(name) for name in sample_set_names(samples_root)]
    return [*(name for name in input_folders if not name.startswith(SAMPLE_PREFIX.strip())), *samples]


def resolve_set_folder(input_root: Path, folder: str, samples_root: Path = SAMPLE_SETS_DIR) -> SetFolder:
    """`NAME[/SUB]` under input/, or `[sample] NAME[/SUB]` in the pack's sample sets."""
    text = folder.strip() if isinstance(folder, str) else ""
    if text.startswith(SAMPLE_PREFIX.strip()):
        return _resolve_sample(text, samples_root)
    root = Path(input_root).resolve()
    return SetFolder(resolve_input_folder(root, text), root, "ComfyUI's input/ folder")


def resolve_input_folder(input_root: Path, folder: str) -> Path:
    """The set folder as an absolute path, refusing anything that leaves the input root."""
    root = Path(input_root).resolve()
    text = folder.strip() if isinstance(folder, str) else ""
    if not text:
        raise TLInputError("folder", "is empty.", "choose a sub-folder of ComfyUI's input/ folder.")
    relative = Path(text)
    if relative.is_absolute() or relative.drive or text.startswith(("/", "\\")):
        raise TLInputError(
            f"folder {text!r}",
            f"is an absolute path: {INSIDE_INPUT}.",
            "copy the set into input/ and choose it from the list, e.g. toy_pair.",
        )
    candidate = (root / relative).resolve()
    if candidate == root or not candidate.is_relative_to(root):
        raise TLInputError(
            f"folder {text!r}",
            f"resolves to {candidate}, outside {root}: {INSIDE_INPUT}.",
            "copy the set into input/ and choose it from the list.",
        )
    if not candidate.is_dir():
        raise TLInputError(
            f"folder {text!r}",
            f"does not exist in {root}.",
            "create it under ComfyUI's input/ folder, or pick an existing one (refresh the page if it is new).",
        )
    return candidate


def _resolve_sample(text: str, samples_root: Path) -> SetFolder:
    names = sample_set_names(samples_root)
    listed = ", ".join(sample_entry(n) for n in names) or "none are installed"
    rest = text[len(SAMPLE_PREFIX.strip()) :].strip().replace("\\", "/")
    name, _, sub = rest.partition("/")
    if not name or name in (".", "..") or rest.startswith("/") or ":" in name:
        raise TLInputError(
            f"folder {text!r}",
            "leaves the pack's sample folder: a [sample] entry names one bundled set, nothing else.",
            f"pick one of {listed}, or copy your own set into ComfyUI's input/ folder.",
        )
    if name not in names:
        raise TLInputError(
            f"folder {text!r}",
            f"is not one of the pack's sample sets ({listed}).",
            "pick a [sample] entry from the list, or copy your own set into ComfyUI's input/ folder.",
        )
    set_root = (Path(samples_root) / name).resolve()
    path = (set_root / sub).resolve() if sub.strip("/") else set_root
    if not path.is_relative_to(set_root):
        raise TLInputError(
            f"folder {text!r}",
            f"resolves to {path}, outside the sample set {name}: only the set's own folders can be read.",
            f"name a sub-folder of {sample_entry(name)}, e.g. {sample_entry(name)}/resized.",
        )
    if not path.is_dir():
        raise TLInputError(
            f"folder {text!r}",
            f"does not exist in the sample set {name}.",
            f"name an existing sub-folder of {sample_entry(name)}, or the set itself.",
        )
    return SetFolder(path, set_root, f"the pack's sample set {name}")
