#!/usr/bin/env python3
"""Regenerate the example workflows in workflows/ from the node specs below.

The files are what artists load in the editor; generating them through a live server's
/object_info keeps widget order and link tables exactly as the editor stores them.

    python scripts/make_workflows.py            # writes workflows/*.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from headless.paths import WORKFLOWS_DIR  # noqa: E402
from headless.runner import prepare_server  # noqa: E402
from headless.tiny_model import TINY_CHECKPOINT_PATH  # noqa: E402
from headless.ui_builder import (
    NodeSpec,  # noqa: E402
    build_ui_workflow,  # noqa: E402
)

CHECKPOINT = TINY_CHECKPOINT_PATH.name
DATASET = "toy_pair"


def dataset_preview() -> list[NodeSpec]:
    """Load the sample photos, define two concepts, preview images, masks and overlays."""
    return [
        NodeSpec(1, "TL_LoadMultiConceptDataset", {"folder": DATASET, "resolution": 512}, pos=(40, 80),
                 size=(340, 130)),
        NodeSpec(2, "TL_MaskTarget", {"mask_index": 1, "token": "tl_ball", "class_word": "ball"},
                 {"dataset": (1, 0)}, pos=(430, 80), size=(320, 260)),
        NodeSpec(3, "TL_MaskTarget", {"mask_index": 2, "token": "tl_box", "class_word": "box"},
                 {"dataset": (2, 0)}, pos=(800, 80), size=(320, 260)),
        NodeSpec(4, "PreviewImage", {}, {"images": (1, 1)}, pos=(430, 400), size=(320, 300),
                 title="Photos"),
        NodeSpec(5, "MaskToImage", {}, {"mask": (1, 2)}, pos=(40, 400), size=(220, 50)),
        NodeSpec(6, "PreviewImage", {}, {"images": (5, 0)}, pos=(40, 500), size=(320, 300),
                 title="Folder masks (mask_1 then mask_2)"),
        NodeSpec(7, "SaveImage", {"filename_prefix": "tl_overlay_ball"}, {"images": (2, 1)},
                 pos=(800, 400), size=(320, 300)),
        NodeSpec(8, "SaveImage", {"filename_prefix": "tl_overlay_box"}, {"images": (3, 1)},
                 pos=(1170, 80), size=(320, 300)),
    ]


WORKFLOWS = {
    "tl_dataset_preview.json": dataset_preview,
}


def main() -> int:
    server = prepare_server(TINY_CHECKPOINT_PATH)
    try:
        server.start()
        info = server.object_info()
        for name, specs in WORKFLOWS.items():
            workflow = build_ui_workflow(specs(), info)
            (WORKFLOWS_DIR / name).write_text(json.dumps(workflow, indent=1) + "\n")
            print(f"wrote {WORKFLOWS_DIR / name}")
    finally:
        server.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
