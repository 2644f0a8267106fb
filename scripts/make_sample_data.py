"""Write the synthetic sample set: `python scripts/make_sample_data.py [--out DIR]`.

The default output is the repository's sample_data/ folder; copy `sample_data/toy_pair` into
ComfyUI's input/ folder to use it with Load Multi-Concept Dataset.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from headless.paths import SAMPLE_DATA_DIR  # noqa: E402
from headless.sample_data import write_toy_pair  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write the synthetic two-concept sample set (ball + box).")
    parser.add_argument(
        "--out", type=Path, default=SAMPLE_DATA_DIR, help="parent folder (default: sample_data/)"
    )
    args = parser.parse_args(argv)
    set_dir = write_toy_pair(args.out)
    print(f"wrote {set_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
