#!/usr/bin/env python3
"""The main job on the embedded tiny model and the sample data: every demo workflow, outputs kept.

    python scripts/demo.py --out out/demo
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from headless.paths import WORKFLOWS_DIR  # noqa: E402
from headless.runner import copy_output_tree, prepare_server  # noqa: E402
from headless.server import WorkflowError  # noqa: E402
from headless.workflow import load_workflow, to_api_prompt  # noqa: E402

# The whole story, in this order (later workflows read what earlier ones trained). Each one's
# pictures go to its own sub-folder of --out; everything written under ComfyUI's output/
# (weights, tokens, checkpoints, loss history, attention pictures) is copied to --out/output/.
DEMO_WORKFLOWS = (
    "tl_dataset_preview.json",
    "tl_train.json",
    "tl_train_and_generate.json",
    "tl_before_after_attention.json",
    "tl_two_concepts.json",
    "tl_evaluate.json",
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("out/demo"))
    args = parser.parse_args(argv)
    out = args.out.resolve()
    server = prepare_server()
    try:
        server.start()
        info = server.object_info()
        for name in DEMO_WORKFLOWS:
            started = time.monotonic()
            print(f"running {name} ...", flush=True)
            workflow = load_workflow(WORKFLOWS_DIR / name)
            result = server.run(to_api_prompt(workflow, info), timeout=3600, workflow=workflow)
            pictures = server.save_images(result, out / Path(name).stem)
            print(f"  done in {time.monotonic() - started:.1f} s, {len(pictures)} pictures")
        files = copy_output_tree(server, out / "output")
        print(f"{len(files)} files written by the workflows copied to {out / 'output'}")
    except WorkflowError as err:
        print(f"demo failed: {err}\n--- server log (tail) ---\n{server.log_tail()}", file=sys.stderr)
        return 1
    finally:
        server.cleanup()
    print(f"demo outputs are in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
