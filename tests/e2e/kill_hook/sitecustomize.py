"""Fault injection for tests/e2e/test_kill_during_write_e2e.py: freeze the server halfway through one file write.

The test starts the real ComfyUI server with this folder on PYTHONPATH, so Python imports this module at
start-up. When `safetensors.torch` is first imported (lazily: ComfyUI warns when torch is imported before
its own start-up), its `save_file` is wrapped. The first write whose target path matches the glob in
TL_KILL_HOOK_GLOB writes only the first half of the file's bytes, then writes a JSON marker to
TL_KILL_HOOK_MARKER and sleeps, so the test can SIGKILL the server at exactly that moment. Every other
write, and every write when the variables are unset, runs unchanged.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import json
import os
import sys
import time
from collections.abc import Sequence
from fnmatch import fnmatch
from types import ModuleType
from typing import Any

GLOB = os.environ.get("TL_KILL_HOOK_GLOB", "")
MARKER = os.environ.get("TL_KILL_HOOK_MARKER", "")
TARGET_MODULE = "safetensors.torch"


def _freeze_halfway(module: ModuleType, tensors: dict[str, Any], filename: str,
                    metadata: dict[str, str] | None) -> None:
    """Write half of the file the real save would write, tell the test where, then wait to be killed."""
    data = module.save(tensors, metadata=metadata)
    with open(filename, "wb") as f:
        f.write(data[: len(data) // 2])
        f.flush()
        os.fsync(f.fileno())
    note = {"path": os.path.abspath(filename), "full_size": len(data), "written": len(data) // 2}
    with open(MARKER + ".part", "w", encoding="utf-8") as f:
        json.dump(note, f)
    os.replace(MARKER + ".part", MARKER)  # the test never reads half a marker
    while True:
        time.sleep(60)


def _wrap_save_file(module: ModuleType) -> None:
    real_save_file = module.save_file

    def save_file(tensors: dict[str, Any], filename: str | os.PathLike[str],
                  metadata: dict[str, str] | None = None) -> None:
        if GLOB and MARKER and not os.path.exists(MARKER) and fnmatch(os.path.abspath(filename), GLOB):
            _freeze_halfway(module, tensors, str(filename), metadata)
        real_save_file(tensors, filename, metadata=metadata)

    module.save_file = save_file


class _WrapOnImport(importlib.abc.MetaPathFinder):
    """Finds `safetensors.torch` the normal way and wraps `save_file` once the module has run."""

    def find_spec(self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
                  ) -> importlib.machinery.ModuleSpec | None:
        if fullname != TARGET_MODULE:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return spec
        run_module = spec.loader.exec_module

        def exec_module(module: ModuleType) -> None:
            run_module(module)
            _wrap_save_file(module)

        spec.loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


if GLOB and MARKER:
    sys.meta_path.insert(0, _WrapOnImport())
