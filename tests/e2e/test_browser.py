"""The pack in the real ComfyUI frontend, driven by a headless Chromium.

Every example workflow loads without a missing-node dialog or console error, and the API prompt
the frontend builds from it equals headless.workflow.to_api_prompt's. The training workflow is
queued from the browser: the loss chart fills while it runs and comes back after a page reload.
The node help panel shows the pack's docs, and the template browser lists the example workflows
with their thumbnails. Evaluate TL Images shows its scores in its read-only box.

Every browser test runs twice: on the frontend ComfyUI pins (comfyui-frontend-package 1.32.9 for
ComfyUI 0.3.75) and on the newest one (NEWEST_FRONTEND, served with `--front-end-root` from
.cache/frontends/<version>/, which scripts/install_browser.sh fetches from PyPI).

Screenshots go to test-artifacts/browser/frontend-<version>/. With TL_UPDATE_IMAGES=1 the run on the
pinned frontend also refreshes
docs/images/training-node.png, docs/images/token-attention.png, docs/images/evaluate-node.png and the template thumbnails
workflows/<name>.jpg.

Needs Chromium and Playwright for Python: scripts/install_browser.sh installs both.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import urllib.request
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from chromium import chromium_context
from PIL import Image

from headless.paths import CACHE_DIR, PACK_DIR_NAME, REPO_ROOT, WORKFLOWS_DIR
from headless.runner import prepare_server
from headless.server import ComfyServer
from headless.workflow import load_workflow, to_api_prompt
from headless.world_settings import WORLD_INPUTS, apply_world_settings
from textloc.config import LEGACY_TRAIN_NODE_WIDGETS

ARTIFACTS = REPO_ROOT / "test-artifacts" / "browser"
DOC_IMAGES = REPO_ROOT / "docs" / "images"
UPDATE_IMAGES = os.environ.get("TL_UPDATE_IMAGES") == "1"
EXTENSION_NAME = "textual_localization.training"
EXTENSION_URL = f"/extensions/{PACK_DIR_NAME}/js/textloc.js"
PACK_NODES = ("TL_LoadMultiConceptDataset", "TL_MaskTarget", "TL_TrainKV", "TL_TrainingOptions", "TL_ApplyWeights",
              "TL_ShowTokenAttention", "TL_EvaluateImages", "TL_MasksFromWordAttention", "TL_ExportLoRA")
TRAIN_NODE = "TL_TrainKV"
ATTENTION_NODE = "TL_ShowTokenAttention"
# A quick try instead of the demo's own settings: a few steps on 64 px photos show the chart filling
# (more steps when the pictures for the README are made, for a fuller chart).
TRAIN_STEPS = 12 if UPDATE_IMAGES else 4
TRAIN_RESOLUTION = 64
MID_RUN_POINTS = max(2, TRAIN_STEPS * 2 // 3)  # when the mid-run picture is taken and the page reloaded
TRAIN_TIMEOUT_S = 400
# A fresh profile on a fresh server: no tutorial, no minimap over the graph.
SETTINGS = {"Comfy.TutorialCompleted": True, "Comfy.Minimap.Visible": False}
# Requests a fresh user's page makes that a new server answers with 404 (user files not written yet).
FRESH_USER_404 = ("/api/userdata", "/user.css", "/api/user.css")
# Server routes newer frontends ask for that ComfyUI 0.3.75 does not have (1.58.1: the jobs list,
# it falls back to the queue and history; the template browser's logo index), and the errors they
# log about the 404.
NEWER_SERVER_API_404 = ("/api/jobs", "/templates/index_logo.json")
NEWER_SERVER_API_ERRORS = ("JobsApiError",)

WORKFLOW_FILES = sorted(WORKFLOWS_DIR.glob("*.json"))
# The example workflows as released with every training setting on the training node.
FIRST_LAYOUT_FILES = sorted((REPO_ROOT / "tests" / "fixtures" / "first_layout_workflows").glob("*.json"))

PINNED_FRONTEND = "pinned"  # the comfyui-frontend-package that ComfyUI's requirements.txt pins
NEWEST_FRONTEND = "1.58.1"  # keep in step with NEWEST_FRONTEND in scripts/install_browser.sh
FRONTENDS = (PINNED_FRONTEND, NEWEST_FRONTEND)


def _pick_training_workflow() -> Path | None:
    """The workflow the browser trains with: one with TL_TrainKV, preferably one that also shows
    token attention, with the fewest concepts. Its thumbnail is taken after the run."""
    candidates = []
    for path in WORKFLOW_FILES:
        types = [n["type"] for n in load_workflow(path)["nodes"]]
        if TRAIN_NODE in types:
            candidates.append((ATTENTION_NODE not in types, types.count("TL_MaskTarget"), path.name, path))
    return min(candidates)[-1] if candidates else None


TRAINING_WORKFLOW = _pick_training_workflow()


# --------------------------------------------------------------------------------------------
# Console watching


class Console:
    """Console errors, uncaught page errors and failed requests of one page."""

    def __init__(self) -> None:
        self.entries: list[str] = []
        self.responses: list[tuple[int, str]] = []

    def attach(self, page: Any) -> None:
        page.on("console", self._on_console)
        page.on("pageerror", lambda error: self.entries.append(f"page error: {error}"))
        page.on("response", lambda response: self.responses.append((response.status, response.url)))

    def _on_console(self, message: Any) -> None:
        if message.type != "error":
            return
        url = (message.location or {}).get("url", "")
        text = message.text
        if "Failed to load resource" in text and any(p in url for p in (*FRESH_USER_404, *NEWER_SERVER_API_404)):
            return
        if any(word in text for word in NEWER_SERVER_API_ERRORS):
            return
        if "Content Security Policy" in text and "https://" in text:
            return  # the frontend's look-ups on the internet (comfy registry), blocked offline
        self.entries.append(f"{text} ({url})" if url else text)

    def mark(self) -> int:
        return len(self.entries)

    def since(self, mark: int) -> list[str]:
        return self.entries[mark:]

    def about_this_pack(self, entries: list[str] | None = None) -> list[str]:
        """Errors that name this pack. While a page loads, frontend 1.32.9 itself logs a TypeError
        (its settings store writes LiteGraph.Canvas.MinFontSizeForLOD before that setting is
        registered), so only these count there."""
        words = ("textloc", "textual_localization", "textual-localization", *PACK_NODES)
        return [e for e in (self.entries if entries is None else entries)
                if any(w.lower() in e.lower() for w in words)]


# --------------------------------------------------------------------------------------------
# Fixtures


_SERVERS: list[ComfyServer] = []  # the servers of this module, in the order they started
# What tl_evaluate.json needs from tl_train_and_generate.json, under output/: the run's K/V file and its
# own token file.
TRAINED_FILES = ("loras/textual_localization/tl_demo_ball.safetensors", "embeddings/tl_demo_ball/tl_ball.safetensors")
TRAINED_RUN = "textual_localization/tl_demo_ball"


def _reuse_trained_files(server: ComfyServer, names: tuple[str, ...]) -> None:
    """Copy what another frontend's server already trained, so one training serves both runs."""
    for other in _SERVERS:
        if other is server or not all((other.output_dir / name).is_file() for name in names):
            continue
        for name in names:  # all of them, so they come from one run
            (server.output_dir / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(other.output_dir / name, server.output_dir / name)
        if (other.output_dir / TRAINED_RUN).is_dir():
            shutil.copytree(other.output_dir / TRAINED_RUN, server.output_dir / TRAINED_RUN, dirs_exist_ok=True)
        return


def _frontend_root(version: str) -> Path:
    """The unpacked static files of a comfyui-frontend-package wheel, or a failure saying how to get them."""
    static = CACHE_DIR / "frontends" / version / "comfyui_frontend_package" / "static"
    if not (static / "index.html").is_file():
        pytest.fail(f"comfyui-frontend-package {version} is not unpacked in {static.parent.parent}: run "
                    "scripts/install_browser.sh (it runs `pip download --no-deps "
                    f"comfyui-frontend-package=={version}` and unpacks the wheel there)")
    return static


@pytest.fixture(scope="module", params=FRONTENDS, ids=[f"frontend-{v}" for v in FRONTENDS])
def frontend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def server(frontend: str, request: pytest.FixtureRequest, tiny_checkpoint: Path, world_checkpoint: Path,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[ComfyServer]:
    """The session's server for the pinned frontend; a second one, set up the same way, for the newest."""
    if frontend == PINNED_FRONTEND:
        session_server = request.getfixturevalue("comfy_server")
        _SERVERS.append(session_server)
        yield session_server
        return
    root = _frontend_root(frontend)
    other = prepare_server(world_checkpoint, base_dir=tmp_path_factory.mktemp(f"comfy-frontend-{frontend}"),
                           more_checkpoints=[tiny_checkpoint], extra_args=["--front-end-root", str(root)])
    other.start()
    _SERVERS.append(other)
    yield other
    other.stop()


@pytest.fixture(scope="module")
def server_info(server: ComfyServer) -> dict:
    return server.object_info()


@pytest.fixture(scope="module")
def browser(frontend: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    with chromium_context(tmp_path_factory.mktemp("chromium-profile")) as context:
        yield context


@pytest.fixture(scope="module")
def console(frontend: str) -> Console:
    return Console()


@pytest.fixture(scope="module")
def page(browser: Any, server: ComfyServer, console: Console) -> Any:
    for key, value in SETTINGS.items():
        _post_json(server, f"/api/settings/{key}", value)
    page = browser.new_page()
    console.attach(page)
    _open(page, server.url)
    assert not console.about_this_pack(), f"console errors at start-up: {console.about_this_pack()}"
    return page


@pytest.fixture(scope="module")
def update_images(frontend: str) -> bool:
    """Pictures for the README and the template thumbnails come from the pinned frontend only."""
    return UPDATE_IMAGES and frontend == PINNED_FRONTEND


@pytest.fixture(scope="module")
def artifacts(frontend: str) -> Path:
    folder = ARTIFACTS / f"frontend-{frontend}"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _post_json(server: ComfyServer, path: str, value: Any) -> None:
    request = urllib.request.Request(server.url + path, data=json.dumps(value).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    urllib.request.urlopen(request, timeout=30).read()  # noqa: S310 (loopback)


def _open(page: Any, url: str | None = None) -> None:
    """Load (or reload) the editor and wait until the graph and the extensions are ready."""
    if url is None:
        page.reload()
    else:
        page.goto(url)
    page.wait_for_function("() => window.app?.graph && window.app.canvas && window.app.extensionManager",
                           timeout=120_000)
    page.wait_for_function("(name) => app.extensions.some((e) => e.name === name)", arg=EXTENSION_NAME,
                           timeout=30_000)


def _load(page: Any, workflow: dict[str, Any], name: str) -> None:
    page.evaluate("async ([wf, name]) => { await app.loadGraphData(wf, true, true, name); }", [workflow, name])
    page.wait_for_timeout(300)


# Dialogs: PrimeVue's in frontend 1.32.9, role="dialog" (reka-ui) in 1.58.1.
DIALOG = ".p-dialog, [role=dialog]"


def _use_world_settings(page: Any) -> None:
    """Set the shapes-world model's sizes and steps on the loaded graph, as headless.world_settings does
    for API prompts: the workflow files keep the real-model defaults (512 px)."""
    page.evaluate("""(inputs) => {
        for (const node of app.graph.nodes) {
            for (const [name, value] of Object.entries(inputs[node.type] ?? {})) {
                const widget = node.widgets?.find((w) => w.name === name);
                if (widget) widget.value = value;
            }
        }
    }""", WORLD_INPUTS)


def _visible_dialogs(page: Any) -> list[str]:
    return page.evaluate("""(selector) => [...document.querySelectorAll(selector)]
        .filter((d) => d.offsetParent !== null).map((d) => d.innerText.slice(0, 300))""", DIALOG)


# Nodes the frontend does not know. Newer frontends (1.58.1) also mark a node whose model file is not
# on the server yet (TL_ApplyWeights before the training workflow has run) with has_errors; such a
# node, whose only fault is a combo value missing from its list, is known.
MISSING_NODES_JS = """() => app.graph.nodes.filter((n) => {
    if (!LiteGraph.registered_node_types[n.type]) return true;
    if (!n.has_errors) return false;
    const missingValue = (w) => Array.isArray(w.options?.values) && !w.options.values.includes(w.value);
    return !(n.widgets ?? []).some(missingValue);
}).map((n) => n.type)"""


def _node_id(workflow: dict[str, Any], node_type: str) -> int:
    return next(int(n["id"]) for n in workflow["nodes"] if n["type"] == node_type)


def _comparable(prompt: dict[str, Any], object_info: dict[str, Any]) -> dict[str, Any]:
    """class_type and the inputs the node declares. The frontend may add widgets of its own (e.g.
    PreviewAny's read-only 'preview' text) that it sends and the server ignores."""
    result = {}
    for node_id, node in prompt.items():
        spec = object_info.get(node["class_type"], {}).get("input", {})
        declared = set(spec.get("required", {})) | set(spec.get("optional", {}))
        result[node_id] = {"class_type": node["class_type"],
                           "inputs": {k: v for k, v in node["inputs"].items() if k in declared}}
    return result


def _describe_difference(frontend: dict[str, Any], converter: dict[str, Any]) -> str:
    lines = []
    for node_id in sorted(set(frontend) | set(converter), key=lambda n: int(n) if n.isdigit() else n):
        a, b = frontend.get(node_id), converter.get(node_id)
        if a is None or b is None:
            lines.append(f"node {node_id}: only in the {'converter' if a is None else 'frontend'} prompt")
            continue
        if a["class_type"] != b["class_type"]:
            lines.append(f"node {node_id}: class_type {a['class_type']} vs {b['class_type']}")
        for name in sorted(set(a["inputs"]) | set(b["inputs"])):
            va, vb = a["inputs"].get(name, "<missing>"), b["inputs"].get(name, "<missing>")
            if va != vb:
                lines.append(f"node {node_id} ({a['class_type']}).{name}: frontend {va!r} vs converter {vb!r}")
    return "\n".join(lines)


# Scale the canvas so that the given nodes (all when ids is null) fill the view; return their
# rectangle on the page.
FRAME_NODES_JS = """([ids, margin]) => {
    const canvas = app.canvas;
    const nodes = ids ? ids.map((id) => app.graph.getNodeById(id)) : app.graph.nodes;
    const title = LiteGraph.NODE_TITLE_HEIGHT;
    let [x0, y0, x1, y1] = [Infinity, Infinity, -Infinity, -Infinity];
    for (const n of nodes) {
        x0 = Math.min(x0, n.pos[0]); y0 = Math.min(y0, n.pos[1] - title);
        x1 = Math.max(x1, n.pos[0] + n.size[0]); y1 = Math.max(y1, n.pos[1] + n.size[1]);
    }
    const box = canvas.canvas.getBoundingClientRect();
    const width = box.width - 2 * margin, height = box.height - 2 * margin;
    const scale = Math.min(width / (x1 - x0), height / (y1 - y0), 1.25);
    canvas.ds.scale = scale;
    canvas.ds.offset = [margin / scale - x0 + (width / scale - (x1 - x0)) / 2,
                        margin / scale - y0 + (height / scale - (y1 - y0)) / 2];
    canvas.setDirty(true, true);
    canvas.draw(true, true);
    const [ox, oy] = canvas.ds.offset;
    const pad = 6;
    return {x: box.left + (x0 + ox) * scale - pad, y: box.top + (y0 + oy) * scale - pad,
            width: (x1 - x0) * scale + 2 * pad, height: (y1 - y0) * scale + 2 * pad};
}"""


def _screenshot_nodes(page: Any, path: Path, ids: list[int] | None = None, margin: int = 40) -> Path:
    clip = page.evaluate(FRAME_NODES_JS, [ids, margin])
    page.wait_for_timeout(400)  # DOM widgets follow the canvas on the next frame
    clip = {k: max(0.0, v) for k, v in clip.items()}
    page.screenshot(path=str(path), clip=clip)
    return path


def _focus_mode(page: Any, on: bool) -> None:
    """Hide the side bar, tabs and menus (ComfyUI's focus mode) for clean pictures."""
    if page.evaluate("() => app.extensionManager.focusMode ?? false") != on:
        page.evaluate("() => app.extensionManager.command.execute('Workspace.ToggleFocusMode')")
        page.wait_for_timeout(300)


def _save_thumbnail(png: Path, name: str) -> None:
    """A small same-name .jpg for ComfyUI's template browser."""
    with Image.open(png) as image:
        thumb = image.convert("RGB")
        thumb.thumbnail((480, 480))
        thumb.save(WORKFLOWS_DIR / f"{Path(name).stem}.jpg", quality=82, optimize=True)


# --------------------------------------------------------------------------------------------
# Tests


def test_extension_is_served_and_registered(page: Any, server: ComfyServer) -> None:
    assert EXTENSION_URL in server.get_json("/extensions")
    assert page.evaluate("(name) => app.extensions.some((e) => e.name === name)", EXTENSION_NAME)


@pytest.mark.parametrize("path", WORKFLOW_FILES, ids=[p.name for p in WORKFLOW_FILES])
def test_workflow_loads_and_frontend_prompt_equals_converter(page: Any, console: Console, server_info: dict,
                                                             artifacts: Path, update_images: bool,
                                                             path: Path) -> None:
    workflow = load_workflow(path)
    mark = console.mark()
    _load(page, workflow, path.name)
    missing = page.evaluate(MISSING_NODES_JS)
    assert not missing, f"{path.name}: nodes the frontend does not know: {missing}"
    assert not _visible_dialogs(page), f"{path.name}: a dialog opened on load: {_visible_dialogs(page)}"
    assert not console.since(mark), f"{path.name}: console errors while loading: {console.since(mark)}"

    _focus_mode(page, True)
    shot = _screenshot_nodes(page, artifacts / f"workflow-{path.stem}.png")
    _focus_mode(page, False)
    if update_images and (path != TRAINING_WORKFLOW or not path.with_suffix(".jpg").exists()):
        _save_thumbnail(shot, path.name)  # the training workflow's is replaced after its run (below)

    # Saving in the editor keeps the file's widget values (the loss chart is not saved with them).
    saved = page.evaluate("() => Object.fromEntries(app.graph.serialize().nodes.map((n) => [n.id, n.widgets_values]))")
    for node in workflow["nodes"]:
        if node["type"].startswith("TL_"):
            assert len(saved[str(node["id"])]) == len(node["widgets_values"]), (
                f"{path.name}: node {node['id']} ({node['type']}) saves {saved[str(node['id'])]}, "
                f"the file has {node['widgets_values']}")

    frontend = page.evaluate("async () => (await app.graphToPrompt()).output")
    converter = to_api_prompt(workflow, server_info)
    difference = _describe_difference(_comparable(frontend, server_info), _comparable(converter, server_info))
    assert not difference, f"{path.name}: the converter's prompt differs from the frontend's:\n{difference}"
    for node_id, node in frontend.items():
        if "_meta" in node:
            assert node["_meta"] == converter[node_id]["_meta"], f"{path.name}: node {node_id} title differs"


@pytest.mark.parametrize("path", FIRST_LAYOUT_FILES, ids=[p.name for p in FIRST_LAYOUT_FILES])
def test_a_first_layout_workflow_loads_with_its_settings_mapped_over(page: Any, console: Console, server_info: dict,
                                                                    path: Path) -> None:
    """The editor's extension splits an old training node like headless.workflow_migration does: the
    frontend's prompt equals the converter's, and every old value is in it."""
    workflow = load_workflow(path)
    mark = console.mark()
    _load(page, workflow, path.name)
    assert not page.evaluate(MISSING_NODES_JS)
    assert not console.since(mark), f"{path.name}: console errors while loading: {console.since(mark)}"
    types = page.evaluate("() => app.graph.serialize().nodes.map((n) => n.type)")
    trainers = [n for n in workflow["nodes"] if n["type"] == TRAIN_NODE]
    assert types.count("TL_TrainingOptions") == len(trainers)
    frontend = page.evaluate("async () => (await app.graphToPrompt()).output")
    converter = to_api_prompt(workflow, server_info)
    difference = _describe_difference(_comparable(frontend, server_info), _comparable(converter, server_info))
    assert not difference, f"{path.name}: the editor mapped the old layout differently:\n{difference}"
    for node in trainers:
        inputs = frontend[str(node["id"])]["inputs"]
        settings = {**inputs, **frontend[inputs["options"][0]]["inputs"]}
        old = dict(zip(LEGACY_TRAIN_NODE_WIDGETS, node["widgets_values"], strict=True))
        assert {k: settings[k] for k in old} == old, f"{path.name}: node {node['id']} lost a setting"


def test_template_browser_lists_every_workflow_with_a_thumbnail(page: Any, console: Console,
                                                                server: ComfyServer, artifacts: Path) -> None:
    templates = server.get_json("/api/workflow_templates")
    assert sorted(templates.get(PACK_DIR_NAME, [])) == sorted(p.stem for p in WORKFLOW_FILES)
    for path in WORKFLOW_FILES:
        served = json.loads(server.get_bytes(f"/api/workflow_templates/{PACK_DIR_NAME}/{path.name}"))
        assert served == load_workflow(path)
        thumbnail = path.with_suffix(".jpg")
        assert thumbnail.is_file(), (f"{thumbnail.name} is missing: the template browser shows {path.stem}.jpg "
                                     "(TL_UPDATE_IMAGES=1 pytest tests/e2e/test_browser.py makes them)")
        assert thumbnail.stat().st_size < 150_000, f"{thumbnail.name} is larger than 150 kB"
        data = server.get_bytes(f"/api/workflow_templates/{PACK_DIR_NAME}/{thumbnail.name}")
        assert data[:3] == b"\xff\xd8\xff", f"{thumbnail.name} is not served as a JPEG"

    # Workflow > Browse Templates: the pack's own entry under Extensions shows every thumbnail.
    mark = len(console.responses)
    page.evaluate("() => app.extensionManager.command.execute('Comfy.BrowseTemplates')")
    page.get_by_text(PACK_DIR_NAME).first.click(timeout=15_000)
    page.wait_for_function("""(selector) => [...document.querySelectorAll(selector)].some((dialog) =>
        [...dialog.querySelectorAll('img')].some((img) => img.complete && img.naturalWidth > 0))""",
                           arg=DIALOG, timeout=15_000)
    page.screenshot(path=str(artifacts / "template-browser.png"))
    wanted = {p.with_suffix(".jpg").name for p in WORKFLOW_FILES}

    def fetched() -> set[str]:
        return {url.rsplit("/", 1)[-1] for status, url in console.responses[mark:]
                if status == 200 and f"/api/workflow_templates/{PACK_DIR_NAME}/" in url}

    # The grid shows a screenful of cards and loads the rest as they scroll into view.
    for _ in range(30):
        if fetched() >= wanted:
            break
        page.evaluate("""(selector) => document.querySelectorAll(selector).forEach((d) => d.querySelectorAll('*')
            .forEach((e) => { if (e.scrollHeight > e.clientHeight + 4) e.scrollTop = e.scrollHeight; }))""", DIALOG)
        page.wait_for_timeout(500)
    close = page.locator(".p-dialog button:has(.pi-times)")  # 1.32.9: PrimeVue's close icon
    if close.count():
        close.first.click()
    else:
        page.keyboard.press("Escape")  # 1.58.1: the reka-ui dialog closes on Escape
    page.wait_for_function("(selector) => ![...document.querySelectorAll(selector)].some((d) => d.offsetParent)",
                           arg=DIALOG, timeout=10_000)
    assert fetched() >= wanted, f"thumbnails fetched: {fetched()}"


@pytest.mark.parametrize("node_type", PACK_NODES)
def test_every_node_has_a_help_page(comfy_server: ComfyServer, object_info: dict, node_type: str) -> None:
    assert node_type in object_info, f"{node_type} is not registered"
    # The frontend asks /extensions/<pack>/docs/<node>/<locale>.md, then /extensions/<pack>/docs/<node>.md.
    text = comfy_server.get_bytes(f"/extensions/{PACK_DIR_NAME}/docs/{node_type}/en.md").decode()
    assert text.startswith(f"# {object_info[node_type]['display_name']}\n")
    for section in ("## Inputs", "## Outputs", "## Tips"):
        assert section in text, f"{node_type}'s help page has no '{section}' section"
    for name in object_info[node_type]["input_order"].get("required", []):
        assert f"`{name}`" in text, f"{node_type}'s help page does not describe the input '{name}'"


def test_help_panel_shows_the_node_docs(page: Any, console: Console, artifacts: Path) -> None:
    workflow = load_workflow(WORKFLOWS_DIR / "tl_dataset_preview.json")
    _load(page, workflow, "help")
    node_id = _node_id(workflow, "TL_MaskTarget")
    mark = console.mark()
    box = page.evaluate(FRAME_NODES_JS, [[node_id], 200])
    page.mouse.click(box["x"] + box["width"] / 2, box["y"] + 20)  # the title bar selects the node
    page.locator('[data-testid="info-button"]').first.click(timeout=15_000)
    panel = page.get_by_text("Adds one concept to the dataset", exact=False).first
    panel.wait_for(state="visible", timeout=15_000)
    assert page.get_by_role("heading", name="Mask Target").first.is_visible()
    page.screenshot(path=str(artifacts / "help-panel.png"))
    assert not console.since(mark), f"console errors while showing help: {console.since(mark)}"
    page.locator('[data-testid="info-button"]').first.click()  # close the panel again


def test_training_from_the_browser_fills_the_loss_chart(page: Any, console: Console, server: ComfyServer,
                                                        artifacts: Path, update_images: bool) -> None:
    if TRAINING_WORKFLOW is None:
        pytest.skip(f"no workflow in workflows/ uses {TRAIN_NODE} yet")
    path, workflow = TRAINING_WORKFLOW, load_workflow(TRAINING_WORKFLOW)
    train_id = _node_id(workflow, TRAIN_NODE)
    attention_ids = [int(n["id"]) for n in workflow["nodes"] if n["type"] == ATTENTION_NODE]
    _load(page, workflow, path.name)
    # The expert settings (learning_rate, preview_every) live on a TL Training Options node: add one at
    # its defaults above the trainer and link it, as a user would, when the workflow has none.
    page.evaluate("""(trainId) => {
        const train = app.graph.getNodeById(trainId);
        if (!app.graph.nodes.some((n) => n.type === "TL_TrainingOptions") && train.findInputSlot("options") >= 0) {
            const options = LiteGraph.createNode("TL_TrainingOptions");
            options.pos = [train.pos[0], train.pos[1] - options.size[1] - 80];
            app.graph.add(options);
            options.connect(0, train, train.findInputSlot("options"));
        }
    }""", train_id)
    _use_world_settings(page)
    # What a user would do for a quick try: fewer steps on smaller photos, a preview every other step,
    # and a fresh run name (so no cached result of another test is reused).
    page.evaluate("""([trainId, loaderId, steps, resolution, name]) => {
        const set = (id, widget, value) => {
            const owners = [app.graph.getNodeById(id), ...app.graph.nodes.filter((n) => n.type === "TL_TrainingOptions")];
            const owner = owners.find((n) => n?.widgets?.some((w) => w.name === widget));
            owner.widgets.find((w) => w.name === widget).value = value;
        };
        set(trainId, "steps", steps); set(trainId, "preview_every", 2); set(trainId, "output_name", name);
        set(loaderId, "resolution", resolution);
    }""", [train_id, _node_id(workflow, "TL_LoadMultiConceptDataset"), TRAIN_STEPS, TRAIN_RESOLUTION,
           f"tl_ball_{uuid.uuid4().hex[:6]}"])
    chart_points = f"() => app.graph.getNodeById({train_id})?.textlocChart?.steps.length ?? -1"
    assert page.evaluate(chart_points) == 0, "the training node has no (empty) loss chart"
    history_before = set(server.get_json("/history"))
    mark = console.mark()
    started = time.monotonic()
    page.evaluate("async () => { await app.queuePrompt(0, 1); }")

    seen: list[int] = []
    reloaded = False
    prompt_id = None
    while time.monotonic() - started < TRAIN_TIMEOUT_S:
        points = page.evaluate(chart_points)
        seen.append(points)
        done = set(server.get_json("/history")) - history_before
        if done:
            prompt_id = done.pop()
            break
        has_preview = page.evaluate(f"() => Boolean(app.nodePreviewImages?.['{train_id}']?.length)")
        if not reloaded and points >= MID_RUN_POINTS and has_preview:
            _focus_mode(page, True)
            _screenshot_nodes(page, artifacts / "training-node-mid-run.png", [train_id])
            _focus_mode(page, False)
            # A reload in the middle of the run: the chart comes back from the server's history.
            reload_mark = console.mark()
            _open(page)
            page.wait_for_function(f"() => ({chart_points})() >= {points}", timeout=30_000)
            reload_errors = console.since(reload_mark)
            del console.entries[reload_mark:]
            assert not console.about_this_pack(reload_errors), f"errors on reload: {reload_errors}"
            reloaded = True
        page.wait_for_timeout(500)
    assert prompt_id is not None, f"training did not finish in {TRAIN_TIMEOUT_S} s (chart points: {seen})"
    entry = server.get_json(f"/history/{prompt_id}")[prompt_id]
    errors = [m[1] for m in entry["status"].get("messages", []) if m[0] == "execution_error"]
    assert entry["status"]["status_str"] == "success", (
        "the run failed: " + "; ".join(f"node {e.get('node_id')} ({e.get('node_type')}): {e.get('exception_message')}"
                                       for e in errors) or json.dumps(entry["status"])[:3000])
    assert reloaded, (f"the run ended before the chart had {MID_RUN_POINTS} points and a preview "
                      f"(chart points: {seen})")

    page.wait_for_function(f"() => ({chart_points})() === {TRAIN_STEPS}", timeout=15_000)
    growth = [p for p in seen if p > 0]
    assert len(set(growth)) >= 2, f"the chart did not fill step by step: {seen}"
    history = server.get_json(f"/textual_localization/train_history?node={train_id}")
    assert [s["step"] for s in history["steps"]] == list(range(1, TRAIN_STEPS + 1))
    assert history["max"] == TRAIN_STEPS
    for node_id in (train_id, *attention_ids):
        assert entry["outputs"].get(str(node_id), {}).get("images"), f"node {node_id} showed no image"
    assert not console.since(mark), f"console errors during the run: {console.since(mark)}"

    page.wait_for_timeout(500)
    _focus_mode(page, True)
    trained = _screenshot_nodes(page, artifacts / "training-node.png", [train_id])
    shown = [_screenshot_nodes(page, artifacts / f"token-attention-{i}.png", [i]) for i in attention_ids]
    whole = _screenshot_nodes(page, artifacts / f"workflow-{path.stem}-after-run.png")
    _focus_mode(page, False)
    if update_images:
        DOC_IMAGES.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(artifacts / "training-node-mid-run.png", DOC_IMAGES / "training-node.png")
        if shown:
            shutil.copyfile(shown[0], DOC_IMAGES / "token-attention.png")
        _save_thumbnail(whole, path.name)
    assert trained.stat().st_size > 0


def test_evaluation_scores_appear_on_the_node(page: Any, console: Console, server: ComfyServer,
                                              server_info: dict, update_images: bool, artifacts: Path) -> None:
    """tl_evaluate.json queued from the editor: the report lands in the node's read-only text box."""
    _reuse_trained_files(server, TRAINED_FILES)
    if not all((server.output_dir / name).is_file() for name in TRAINED_FILES):
        prompt = apply_world_settings(
            to_api_prompt(load_workflow(WORKFLOWS_DIR / "tl_train_and_generate.json"), server_info), server_info)
        prompt["4"]["inputs"]["steps"] = 2
        with ThreadPoolExecutor(1) as pool:  # the server client runs its own event loop; Playwright holds this one
            pool.submit(server.run, prompt, 600).result()
    path = WORKFLOWS_DIR / "tl_evaluate.json"
    workflow = load_workflow(path)
    node_id = _node_id(workflow, "TL_EvaluateImages")
    _load(page, workflow, path.name)
    _use_world_settings(page)
    scores = f"() => app.graph.getNodeById({node_id}).widgets.find((w) => w.name === 'scores')?.value ?? null"
    assert page.evaluate(scores) == "", "the evaluation node has no (empty) scores box"
    mark = console.mark()
    history_before = set(server.get_json("/history"))
    page.evaluate("async () => { await app.queuePrompt(0, 1); }")
    started = time.monotonic()
    while "CLIP-I:" not in (page.evaluate(scores) or "") and time.monotonic() - started < 300:
        for prompt_id in set(server.get_json("/history")) - history_before:  # fail at once when the run fails
            status = server.get_json(f"/history/{prompt_id}")[prompt_id]["status"]
            assert status["status_str"] == "success", f"the evaluation run failed: {json.dumps(status)[:3000]}"
        page.wait_for_timeout(1000)
    text = page.evaluate(scores)
    assert "CLIP-T text: a photo of a ball" in text and "KID:" in text and "attention inside mask:" in text
    assert not console.about_this_pack(console.since(mark)), console.since(mark)
    _focus_mode(page, True)
    shot = _screenshot_nodes(page, artifacts / "evaluate-node.png", [node_id])
    _focus_mode(page, False)
    if update_images:
        DOC_IMAGES.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, DOC_IMAGES / "evaluate-node.png")
