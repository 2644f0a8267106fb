"""End-to-end fixtures: one real ComfyUI server on loopback for the whole test session."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from headless.paths import WORKFLOWS_DIR
from headless.runner import prepare_server
from headless.server import ComfyServer
from headless.tiny_families import TINY_FAMILIES, ensure_family_checkpoint
from headless.tiny_model import ensure_tiny_checkpoint
from headless.workflow import load_workflow, to_api_prompt
from headless.world_settings import apply_world_settings
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
    """The session's server, shared by the end-to-end tests."""
    server = prepare_server(world_checkpoint, base_dir=tmp_path_factory.mktemp("comfy-base"),
                            more_checkpoints=[tiny_checkpoint])
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def family_checkpoints(comfy_server: ComfyServer) -> dict[str, str]:
    """The tiny SD2-eps, SD2-v and SDXL checkpoints, linked into the running server by the tests that use
    them (built into .cache/models/ on first use, about 2 GB: runs without them never pay for it)."""
    return {name: comfy_server.add_checkpoint(ensure_family_checkpoint(name)) for name in TINY_FAMILIES}


@pytest.fixture(scope="session")
def object_info(comfy_server: ComfyServer) -> dict:
    return comfy_server.object_info()


@pytest.fixture()
def workflow_prompt(comfy_server: ComfyServer, object_info: dict):
    """Factory: the API prompt of a file in workflows/, converted with the server's object_info, with the
    shapes-world model's settings (the files keep the real-model defaults)."""

    def build(name: str) -> dict:
        return apply_world_settings(to_api_prompt(load_workflow(WORKFLOWS_DIR / name), object_info), object_info)

    return build
