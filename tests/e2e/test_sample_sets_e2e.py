"""The bundled sample sets on a real server whose input/ folder does not hold them.

Right after cloning, Load Multi-Concept Dataset lists the pack's sets as `[sample] NAME` and reads
them from the pack's sample_data/; an input/ folder with a sample's name stays its own entry.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from headless.paths import SAMPLE_DATA_DIR
from headless.server import ComfyServer, WorkflowError

LOADER = "TL_LoadMultiConceptDataset"
BUNDLED = ("shapes_pair", "shapes_pair_heldout", "toy_pair")


@pytest.fixture(scope="module")
def fresh_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ComfyServer]:
    """A server with nothing copied into input/ but the user's own `shapes_pair` (3 photos)."""
    server = ComfyServer(base_dir=tmp_path_factory.mktemp("fresh-base"))
    own = server.input_dir / "shapes_pair"
    shutil.copytree(SAMPLE_DATA_DIR / "toy_pair", own)
    for name in ("04.png", "05.png"):
        for sub in ("resized", "mask_1", "mask_2"):
            (own / sub / name).unlink()
    server.start()
    yield server
    server.stop()


def _preview_prompt(folder: str) -> dict:
    return {
        "1": {"class_type": LOADER, "inputs": {"folder": folder, "resolution": 64, "mask_threshold": 0.5}},
        "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 1]}},
    }


def test_object_info_lists_the_bundled_sets_beside_input_folders(fresh_server: ComfyServer) -> None:
    options = fresh_server.get_json(f"/object_info/{LOADER}")[LOADER]["input"]["required"]["folder"]
    choices = options[1]["options"] if options[0] == "COMBO" else options[0]
    assert "shapes_pair" in choices  # the user's folder under input/
    for name in BUNDLED:
        assert f"[sample] {name}" in choices, choices
    assert not [c for c in choices if c.startswith("[sample]") and c.removeprefix("[sample] ") not in BUNDLED]


def test_a_bundled_set_runs_and_the_same_name_input_folder_stays_distinct(fresh_server: ComfyServer) -> None:
    bundled = fresh_server.run(_preview_prompt("[sample] shapes_pair"), timeout=120)
    own = fresh_server.run(_preview_prompt("shapes_pair"), timeout=120)
    assert len(bundled.outputs["2"]["images"]) == len(list((SAMPLE_DATA_DIR / "shapes_pair" / "resized").iterdir()))
    assert len(own.outputs["2"]["images"]) == 3
    assert not (Path(fresh_server.input_dir) / "[sample] shapes_pair").exists()


def test_a_path_out_of_the_samples_is_rejected(fresh_server: ComfyServer) -> None:
    # The server's list check or the pack's own resolver stops it, before anything is read.
    with pytest.raises(WorkflowError, match="not in list|leaves the pack's sample folder"):
        fresh_server.run(_preview_prompt("[sample] ../headless"), timeout=60)
    assert fresh_server.get_json("/system_stats")  # the server answers afterwards
