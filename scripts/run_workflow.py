#!/usr/bin/env python3
"""Run a workflow file from workflows/ on a fresh, headless ComfyUI with this pack.

Example:
    python scripts/run_workflow.py workflows/tl_dataset_preview.json --out out/run \
        --set 3.token=tl_ball
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from headless.runner import InputDirError, run_workflow_file  # noqa: E402
from headless.server import WorkflowError  # noqa: E402
from headless.workflow import WorkflowFormatError  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("workflow", type=Path, help="editor-format workflow JSON")
    parser.add_argument("--out", type=Path, required=True, help="folder for images and written files")
    parser.add_argument("--checkpoint", type=Path, help="checkpoint file (default: the shapes-world model)")
    parser.add_argument("--input-dir", type=Path,
                        help="folder whose sub-folders become ComfyUI's input/, or one set folder, copied "
                             "under the folder name the workflow's dataset node asks for (default: sample_data/)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="NODE_ID.INPUT=VALUE",
                        help="override an input of a node (repeatable); VALUE is JSON or a string")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds before giving up")
    parser.add_argument("--world-settings", action=argparse.BooleanOptionalAction, default=None,
                        help="apply the shapes-world model's sizes, steps and learning rate (default: only "
                             "when running on that model; the files keep the real-model defaults)")
    args = parser.parse_args(argv)
    try:
        result, files = run_workflow_file(args.workflow, args.out, args.checkpoint, args.input_dir,
                                          args.overrides, args.timeout, args.world_settings)
    except (WorkflowError, WorkflowFormatError, InputDirError) as err:
        for line in str(err).splitlines():  # one line per problem
            print(f"error: {line}", file=sys.stderr)
        return 1
    print(f"finished in {result.seconds:.1f} s; {len(files)} files in {args.out}")
    for path in files:
        print(f"  {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
