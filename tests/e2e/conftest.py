"""End-to-end fixtures: one real ComfyUI server on loopback for the whole test session."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from headless.paths import SAMPLE_DATA_DIR, WORKFLOWS_DIR
from headless.random_clip_vision import ensure_random_clip_vision
from headless.random_inception import ensure_random_inception
from headless.server import ComfyServer
from headless.tiny_model import ensure_tiny_checkpoint
from headless.workflow import load_workflow, to_api_prompt
from shapes_world.model import ensure_world_checkpoint


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/e2e/" in str(item.fspath):
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session")
def tiny_checkpoint() -> Path:
    return ensure_tiny_checkpoint()


@pytest.fixture(scope="session")
def world_checkpoint() -> Path:
    return ensure_world_checkpoint()


@pytest.fixture(scope="session")
def comfy_server(tiny_checkpoint: Path, world_checkpoint: Path,
                 tmp_path_factory: pytest.TempPathFactory) -> Iterator[ComfyServer]:
    """The example workflows use the world model; tests of other model shapes use the tiny one."""
    server = ComfyServer(base_dir=tmp_path_factory.mktemp("comfy-base"))
    server.add_checkpoint(tiny_checkpoint)
    server.add_checkpoint(world_checkpoint)
    server.add_model("clip_vision", ensure_random_clip_vision())
    server.add_model("inception", ensure_random_inception())
    for folder in sorted(p for p in SAMPLE_DATA_DIR.iterdir() if p.is_dir()):
        server.add_input(folder)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def object_info(comfy_server: ComfyServer) -> dict:
    return comfy_server.object_info()


@pytest.fixture()
def workflow_prompt(comfy_server: ComfyServer, object_info: dict):
    """Factory: the API prompt of a file in workflows/, converted with the server's object_info."""

    def build(name: str) -> dict:
        return to_api_prompt(load_workflow(WORKFLOWS_DIR / name), object_info)

    return build
