"""Build the tiny random-weight SD1.5 checkpoint used by the host and end-to-end tests.

python scripts/make_tiny_checkpoint.py [--out FILE] [--force]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from headless.tiny_model import TINY_CHECKPOINT_PATH, ensure_tiny_checkpoint, write_tiny_checkpoint  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", type=Path, default=TINY_CHECKPOINT_PATH, help="where to write the checkpoint"
    )
    parser.add_argument("--force", action="store_true", help="rebuild even if a current file exists")
    args = parser.parse_args(argv)
    if not args.force:
        path = ensure_tiny_checkpoint(args.out)
        print(f"{path} ({path.stat().st_size / 2**20:.1f} MiB)")
        return 0
    info = write_tiny_checkpoint(args.out)
    print(
        f"{info.path}: {info.bytes / 2**20:.1f} MiB in {info.seconds:.1f} s; params "
        f"unet {info.unet_params / 1e6:.2f} M, clip {info.clip_params / 1e6:.2f} M, vae {info.vae_params / 1e6:.2f} M"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
