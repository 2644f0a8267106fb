"""scripts/run_workflow.py with --input-dir on one set: the real server loads that set under the folder name
the workflow asks for."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest

from headless.paths import REPO_ROOT, SAMPLE_DATA_DIR, WORKFLOWS_DIR

PHOTOS = ("01.png", "02.png", "03.png")  # three of toy_pair's five: the count tells which set was loaded


def _script():
    spec = importlib.util.spec_from_file_location("run_workflow_script", REPO_ROOT / "scripts" / "run_workflow.py")
    assert spec is not None and spec.loader is not None
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script


def test_one_set_is_loaded_under_the_folder_name_the_workflow_asks_for(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    my_set = tmp_path / "my_toys"
    for sub in ("resized", "mask_1", "mask_2"):
        (my_set / sub).mkdir(parents=True)
        for name in PHOTOS:
            shutil.copy(SAMPLE_DATA_DIR / "toy_pair" / sub / name, my_set / sub / name)
    out = tmp_path / "out"
    code = _script().main([str(WORKFLOWS_DIR / "tl_dataset_preview.json"), "--out", str(out),
                           "--input-dir", str(my_set), "--set", "1.folder=photos", "--timeout", "300"])
    assert code == 0, capsys.readouterr().err
    photos = sorted(p.name for p in (out / "images").glob("node4_*"))  # Preview Image of the loaded photos
    overlays = sorted(p.name for p in (out / "images").glob("node7_*"))  # Save Image of the ball's overlays
    assert len(photos) == len(overlays) == len(PHOTOS), (photos, overlays)
