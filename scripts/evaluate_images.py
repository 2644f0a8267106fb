#!/usr/bin/env python3
"""Score generated images the way the paper does: CLIP-I, CLIP-T, KID (and attention overlap).

GENERATED is either a folder of images made with one prompt (give --prompt), or a folder of
sub-folders, one per prompt, each holding its images and a prompt.txt. Every metric is computed
per prompt, then averaged over the prompts (the paper's aggregation). REFERENCES holds the real
photos of the concept. The encoders load through ComfyUI's own loaders: the text tower is the
checkpoint's CLIP (ViT-L/14 for SD1.x), the image tower a CLIP vision file (for the paper's
numbers: openai/clip-vit-large-patch14's model.safetensors, which also carries the text
projection CLIP-T needs). KID runs when torchmetrics, torch-fidelity and the Inception weights
(weights-inception-2015-12-05-6726825d.pth, --inception-weights) are on this machine.

    python scripts/evaluate_images.py out/woods out/photos --prompt "photo of a embedding:tl_ball ball" \\
        --checkpoint sd15.safetensors --clip-vision clip-vit-large-patch14.safetensors --out scores.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from headless.comfy_boot import boot_comfy  # noqa: E402
from textloc import host  # noqa: E402
from textloc.data.dataset import fit_images, image_files  # noqa: E402
from textloc.data.images import read_image_rgb, read_mask  # noqa: E402
from textloc.errors import TLInputError  # noqa: E402
from textloc.evaluation.scores import (  # noqa: E402
    Encoders,
    EvaluationScores,
    clip_image_features,
    evaluate,
    find_inception_weights,
    inception_feature_extractor,
    mean_scores,
    read_text_projection,
)
from textloc.weights.files import atomic_write_text  # noqa: E402

PROMPT_FILE = "prompt.txt"
IMAGE_SIZE = 512  # images are fitted (short side, centre crop) to one square size so they batch


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("generated", type=Path, help="images of one prompt, or one sub-folder per prompt")
    parser.add_argument("references", type=Path, help="the concept's real photos")
    parser.add_argument("--prompt", default="", help="the prompt of GENERATED when it holds images directly")
    parser.add_argument("--checkpoint", type=Path, required=True, help="the checkpoint whose CLIP encodes text")
    parser.add_argument("--clip-vision", type=Path, help="CLIP ViT-L/14 vision file (CLIP-I; CLIP-T if it has "
                                                         "the text projection)")
    parser.add_argument("--inception-weights", type=Path, help="torch-fidelity's Inception weights file (KID)")
    parser.add_argument("--no-kid", action="store_true", help="skip KID")
    parser.add_argument("--attention-maps", type=Path, help="folder of attention maps (grey images) of one prompt")
    parser.add_argument("--masks", type=Path, help="folder of the object's masks, same order as the maps")
    parser.add_argument("--out", type=Path, help="write the scores as JSON here")
    return parser.parse_args(argv)


def _image_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise TLInputError(str(folder), "is not a folder.", "give a folder of images.")
    files = image_files(folder)
    if not files:
        raise TLInputError(str(folder), "holds no images.", "put the PNG/JPEG files directly in it.")
    return files


def read_images(folder: Path) -> torch.Tensor:
    """Every image of a folder as one IMAGE batch [N, S, S, 3]."""
    return torch.cat([fit_images(read_image_rgb(path)[None], IMAGE_SIZE) for path in _image_files(folder)])


def prompt_folders(generated: Path, prompt: str) -> list[tuple[str, Path]]:
    """(prompt, images folder) pairs: the folder itself, or each sub-folder with a prompt.txt."""
    subfolders = sorted(p for p in generated.iterdir() if p.is_dir()) if generated.is_dir() else []
    if subfolders:
        pairs = []
        for folder in subfolders:
            if not (folder / PROMPT_FILE).is_file():
                raise TLInputError(str(folder), f"has no {PROMPT_FILE}.", "write the prompt of its images into it.")
            pairs.append(((folder / PROMPT_FILE).read_text(encoding="utf-8").strip(), folder))
        return pairs
    if not prompt:
        raise TLInputError("--prompt", "is needed when GENERATED holds the images directly.",
                           "pass the prompt the images were made with, or use one sub-folder per prompt.")
    return [(prompt, generated)]


def load_encoders(args: argparse.Namespace) -> Encoders:
    import comfy.sd

    with torch.inference_mode():
        clip = comfy.sd.load_checkpoint_guess_config(str(args.checkpoint), output_vae=False, output_clip=True,
                                                     output_model=False)[1]
    encoders = Encoders(clip=clip)
    if args.clip_vision is None:
        encoders.missing["clip"] = "CLIP-I and CLIP-T need --clip-vision (CLIP ViT-L/14)."
    else:
        encoders.clip_vision = host.load_clip_vision(args.clip_vision)
        encoders.text_projection = read_text_projection(args.clip_vision)
        if encoders.text_projection is None:
            encoders.missing["clip_t"] = f"CLIP-T needs the text projection, which {args.clip_vision.name} lacks."
    if not args.no_kid:
        weights = args.inception_weights or find_inception_weights(host.inception_weight_folders())
        if weights is None or not Path(weights).is_file():
            encoders.missing["kid"] = "KID needs the Inception weights: pass --inception-weights."
        else:
            encoders.kid_features = inception_feature_extractor(Path(weights))
    return encoders


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if (args.attention_maps is None) != (args.masks is None):
        raise SystemExit("--attention-maps and --masks go together")
    boot_comfy()
    try:
        pairs = prompt_folders(args.generated, args.prompt)
        references = read_images(args.references)
        maps = masks = None
        if args.attention_maps is not None:
            maps = torch.stack([read_mask(p) for p in _image_files(args.attention_maps)])
            masks = torch.stack([read_mask(p) for p in _image_files(args.masks)])
        encoders = load_encoders(args)
        reference_pooled = None  # the same photos for every prompt: encoded once
        if encoders.clip_vision is not None:
            reference_pooled = clip_image_features(encoders.clip_vision, references)[0]
        results: list[EvaluationScores] = []
        for prompt, folder in pairs:
            scores = evaluate(prompt, read_images(folder), references, encoders, maps, masks, reference_pooled)
            print(scores.as_text(), end="\n\n", flush=True)
            results.append(scores)
    except TLInputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    means = mean_scores(results)
    print("mean over prompts: " + ", ".join(f"{k} {'n/a' if v is None else f'{v:.4f}'}" for k, v in means.items()))
    if args.out:
        atomic_write_text(args.out, json.dumps({"per_prompt": [s.as_dict() for s in results], "mean": means,
                                                "command": sys.argv}, indent=2))
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
