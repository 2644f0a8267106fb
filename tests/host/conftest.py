"""In-process tests against the real ComfyUI libraries (no server)."""

import pytest

from headless.comfy_boot import boot_comfy

boot_comfy()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/host/" in str(item.fspath):
            item.add_marker(pytest.mark.host)
