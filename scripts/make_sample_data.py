"""Write the sample sets: `python scripts/make_sample_data.py [--out DIR]`.

`toy_pair` (a drawn red ball and blue box at 512 px) and the shapes world's `shapes_pair` and
`shapes_pair_heldout` (a magenta ball beside a yellow box). The default output is the repository's
sample_data/ folder; copy a set into ComfyUI's input/ folder to use it with Load Multi-Concept Dataset.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from headless.paths import SAMPLE_DATA_DIR  # noqa: E402
from headless.sample_data import write_toy_pair  # noqa: E402
from shapes_world.training_sets import write_world_sets  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write the synthetic two-concept sample sets (ball + box).")
    parser.add_argument(
        "--out", type=Path, default=SAMPLE_DATA_DIR, help="parent folder (default: sample_data/)"
    )
    args = parser.parse_args(argv)
    for set_dir in (write_toy_pair(args.out), *write_world_sets(args.out)):
        print(f"wrote {set_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
