"""The benchmarks run the attention kernel they say they run: each check starts a fresh Python process,
since ComfyUI chooses its kernel once per process, when its model management is first imported."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from headless.paths import REPO_ROOT

pytestmark = pytest.mark.host


def _fresh_process(code: str) -> list[str]:
    """Run `code` in a new interpreter at the repository root; its stdout lines (ComfyUI logs to stderr)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.splitlines()


def test_a_benchmark_asking_for_pytorch_attention_runs_it_and_records_it(tmp_path: Path) -> None:
    lines = _fresh_process(f"""
        from pathlib import Path
        from bench import common
        print(common.boot("pytorch"))
        common.write_result("kernel", {{"figure": 1.0}}, out_dir=Path({str(tmp_path)!r}))
    """)
    assert lines == ["attention_pytorch"]
    record = json.loads((tmp_path / "kernel.json").read_text())
    assert (record["attention_asked"], record["attention_kernel"]) == ("pytorch", "attention_pytorch")


def test_a_benchmark_whose_kernel_differs_refuses_to_measure_and_to_write(tmp_path: Path) -> None:
    """ComfyUI imported before the benchmark's boot keeps the kernel it chose (sub-quadratic on a CPU)."""
    lines = _fresh_process(f"""
        from pathlib import Path
        from headless.comfy_boot import boot_comfy
        from bench import common
        boot_comfy(cpu=True)
        for step in (lambda: common.boot("pytorch"),
                     lambda: common.write_result("kernel", {{"figure": 1.0}}, out_dir=Path({str(tmp_path)!r}))):
            try:
                step()
                print("went on")
            except common.AttentionKernelError as err:
                print("refused:", err)
    """)
    assert len(lines) == 2 and all(line.startswith("refused: asked for attention 'pytorch' (attention_pytorch) "
                                                   "but ComfyUI runs attention_sub_quad") for line in lines), lines
    assert not list(tmp_path.iterdir())
