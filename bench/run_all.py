"""Run the CPU benchmark set at small sizes (about 15 minutes on 2 shared cores) and print where results went.

Each benchmark runs in its own process with OMP_NUM_THREADS=1 unless set already, so the numbers
do not depend on how many cores the machine happens to share. The GPU benchmark (bench/gpu.py)
is not part of this set.

    make bench        # or: .venv/bin/python bench/run_all.py
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS: list[list[str]] = [
    ["bench/train_step.py", "--tiny-resolutions", "64,256"],
    ["bench/sampling.py"],
    ["bench/localization.py"],
]


def main() -> int:
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    started = time.perf_counter()
    failed = []
    for command in BENCHMARKS:
        print(f"\n=== {' '.join(command)} (OMP_NUM_THREADS={env['OMP_NUM_THREADS']})", flush=True)
        begin = time.perf_counter()
        code = subprocess.call([sys.executable, *command], cwd=ROOT, env=env)
        print(f"=== {command[0]}: exit {code}, {time.perf_counter() - begin:.0f} s", flush=True)
        if code != 0:
            failed.append(command[0])
    total = time.perf_counter() - started
    print(f"\nall benchmarks: {total / 60:.1f} min; results in {ROOT / 'bench' / 'results'}")
    if failed:
        print("failed: " + ", ".join(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
