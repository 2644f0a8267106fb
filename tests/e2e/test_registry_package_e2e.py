"""Ready for the Comfy Registry: the registry's own checker (`comfy node validate` from comfy-cli) passes, the
archive it would publish (`comfy node pack`) leaves out what users do not need, and that archive, unpacked into
the custom_nodes/ of a stock ComfyUI, loads every node of the pack.

comfy-cli runs offline (its proxies point at a closed loopback port, telemetry is off, its config lives in a
temporary home) on a copy of the files a commit of this working tree would hold, in a fresh git repository,
since `comfy node pack` zips what git tracks.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import tomlkit  # comfy-cli's own TOML reader (tomllib needs Python 3.11)

from headless.paths import PACK_DIR_NAME, REPO_ROOT
from headless.server import ComfyServer

OFFLINE = "http://127.0.0.1:9"  # the discard port: nothing listens, so any request fails at once
# Registry values only a publisher has: left out of pyproject.toml, to be filled in as README.md says.
PUBLISHER_VALUES = {"Repository": ("project", "urls"), "PublisherId": ("tool", "comfy")}
LEFT_OUT = ("tests/", "bench/results/", ".ci/", ".cache/")
RUNTIME = ("__init__.py", "pyproject.toml", "requirements.txt", "README.md", "nodes/", "textloc/", "web/js/",
           "web/docs/", "workflows/", "sample_data/")


def _committable_files() -> list[str]:
    """The files a commit of the working tree would hold: tracked or untracked-but-not-ignored, present."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=REPO_ROOT,
                            check=True, capture_output=True).stdout.decode().split("\0")
    return sorted(name for name in listed if name and (REPO_ROOT / name).is_file())


@pytest.fixture(scope="module")
def package_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh git repository holding those files, every one added (what `comfy node pack` reads)."""
    source = tmp_path_factory.mktemp("registry") / PACK_DIR_NAME
    for name in _committable_files():
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO_ROOT / name, source / name)
    subprocess.run(["git", "init", "-q"], cwd=source, check=True)
    subprocess.run(["git", "add", "-A"], cwd=source, check=True)
    return source


def comfy_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """`comfy --skip-prompt <args>` of the dev environment, offline, without telemetry or a real home."""
    home = cwd.parent / "home"
    home.mkdir(exist_ok=True)
    env = {**os.environ, "HOME": str(home), "DO_NOT_TRACK": "1", "COMFY_NO_TELEMETRY": "1",
           "HTTP_PROXY": OFFLINE, "HTTPS_PROXY": OFFLINE, "http_proxy": OFFLINE, "https_proxy": OFFLINE,
           "NO_PROXY": "", "no_proxy": ""}
    try:
        return subprocess.run([sys.executable, "-m", "comfy_cli", "--skip-prompt", "--no-json", *args], cwd=cwd,
                              env=env, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    except FileNotFoundError as error:  # pragma: no cover - a broken environment, not a skip
        raise AssertionError("comfy-cli is missing: run `make setup` (requirements-dev.txt pins it)") from error


@pytest.fixture(scope="module")
def archive(package_source: Path) -> Path:
    """node.zip as `comfy node pack` builds it (the file `comfy node publish` uploads)."""
    packed = comfy_cli("node", "pack", cwd=package_source)
    assert packed.returncode == 0, packed.stdout + packed.stderr
    return package_source / "node.zip"


def test_the_registry_checker_passes_without_a_warning(package_source: Path) -> None:
    checked = comfy_cli("node", "validate", cwd=package_source)
    output = checked.stdout + checked.stderr
    assert checked.returncode == 0, output
    assert "All validation checks passed" in output, output
    assert "warning" not in output.lower(), output  # comfy-cli reports fields it drops and exec/eval as warnings


def test_pyproject_holds_no_empty_value_and_the_readme_says_what_the_publisher_fills_in() -> None:
    config = tomlkit.parse((REPO_ROOT / "pyproject.toml").read_text()).unwrap()
    project, comfy = config["project"], config["tool"]["comfy"]
    for table, values in (("project", project), ("project.urls", project.get("urls", {})), ("tool.comfy", comfy)):
        empty = [key for key, value in values.items() if isinstance(value, str) and not value.strip()]
        assert not empty, f"[{table}] has empty values {empty}: leave a key out rather than empty"
    assert re.fullmatch(r"\d+\.\d+\.\d+", project["version"]) and project["name"] and project["description"]
    publishing = (REPO_ROOT / "README.md").read_text().split("## Publishing to the Comfy Registry", 1)
    assert len(publishing) == 2, "README.md has no 'Publishing to the Comfy Registry' section"
    section = publishing[1].split("\n## ", 1)[0]
    for key, (top, table) in PUBLISHER_VALUES.items():
        if key not in config[top].get(table, {}):
            assert f"{key} = " in section, f"README's publishing section does not say how to fill in {key}"


def test_the_archive_leaves_out_what_users_do_not_need(archive: Path, package_source: Path) -> None:
    names = zipfile.ZipFile(archive).namelist()
    assert not [n for n in names if n.startswith(LEFT_OUT)]
    for needed in RUNTIME:
        assert any(n.startswith(needed) for n in names) if needed.endswith("/") else needed in names, needed
    packed_code = {n for n in names if n.startswith(("nodes/", "textloc/")) and n.endswith(".py")}
    source_code = {str(p.relative_to(package_source)) for folder in ("nodes", "textloc")
                   for p in (package_source / folder).rglob("*.py")}
    assert packed_code == source_code  # every module the nodes import travels


def test_the_archive_installs_into_a_stock_comfyui_and_every_node_loads(archive: Path, tmp_path: Path) -> None:
    """Unpacked where the registry's installers put it: custom_nodes/<node id>, the pyproject name."""
    node_id = tomlkit.parse((REPO_ROOT / "pyproject.toml").read_text())["project"]["name"]
    pack_dir = tmp_path / "custom_nodes" / node_id
    with zipfile.ZipFile(archive) as packed:
        packed.extractall(pack_dir)
    declared = set(re.findall(r'node_id="(TL_\w+)"', "".join(
        p.read_text() for p in (pack_dir / "nodes").glob("*.py"))))
    assert len(declared) >= 9
    server = ComfyServer(base_dir=tmp_path, link_pack=False)  # custom_nodes/ holds the archive alone
    assert [p.name for p in (tmp_path / "custom_nodes").iterdir()] == [node_id]
    with server:
        info = server.object_info()
        extensions = server.get_json("/extensions")
    log = server.log_tail(200_000)
    assert declared <= set(info), (sorted(declared - set(info)), log[-3000:])
    assert {info[node]["python_module"] for node in declared} == {f"custom_nodes.{node_id}"}
    assert any(e.startswith(f"/extensions/{node_id}/") for e in extensions), extensions
    # ComfyUI's "Import times for custom nodes" line of the pack: loaded from the archive's folder, no failure
    assert re.search(rf"seconds: {re.escape(str(pack_dir))}$", log, re.MULTILINE), log[-3000:]
