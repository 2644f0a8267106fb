"""`--set NODE.input=value` checks and --input-dir handling of the headless runner (no server started)."""

from __future__ import annotations

import copy
import importlib.util
import time
from pathlib import Path
from typing import Any

import pytest

from headless import runner
from headless.paths import REPO_ROOT, SAMPLE_DATA_DIR, WORKFLOWS_DIR
from headless.runner import InputDirError, build_prompt, input_set_names, input_sets, run_workflow_file
from headless.workflow import (
    WorkflowFormatError,
    apply_overrides,
    check_overrides,
    load_workflow,
    to_api_prompt,
)

WORKFLOW_PATH = WORKFLOWS_DIR / "tl_dataset_preview.json"
NODES = ("1 (TL_LoadMultiConceptDataset), 2 (TL_MaskTarget), 3 (TL_MaskTarget), 4 (PreviewImage), "
         "5 (MaskToImage), 6 (PreviewImage), 7 (SaveImage), 8 (SaveImage)")
MASK_TARGET_INPUTS = ("dataset, mask_index, token, class_word, init_word, grow, feather, mask, "
                      "class_images, class_images_folder")

# The parts of /object_info the checks and the converter read, for the classes of tl_dataset_preview.json.
OBJECT_INFO: dict[str, Any] = {
    "TL_LoadMultiConceptDataset": {"input": {"required": {
        "folder": [["toy_pair", "shapes_pair"], {}],
        "resolution": ["INT", {"default": 512}],
        "mask_threshold": ["FLOAT", {"default": 0.5}],
    }}},
    "TL_MaskTarget": {"input": {
        "required": {
            "dataset": ["TL_DATASET", {}],
            "mask_index": ["INT", {"default": 1}],
            "token": ["STRING", {}],
            "class_word": ["STRING", {}],
            "init_word": ["STRING", {}],
            "grow": ["INT", {"default": 0}],
            "feather": ["INT", {"default": 0}],
        },
        "optional": {
            "mask": ["MASK", {}],
            "class_images": ["IMAGE", {}],
            "class_images_folder": ["STRING", {}],
        },
        "hidden": {"unique_id": "UNIQUE_ID"},
    }},
    "PreviewImage": {"input": {"required": {"images": ["IMAGE", {}]}, "hidden": {"prompt": "PROMPT"}}},
    "MaskToImage": {"input": {"required": {"mask": ["MASK", {}]}}},
    "SaveImage": {"input": {"required": {"images": ["IMAGE", {}], "filename_prefix": ["STRING", {}]}}},
}


@pytest.fixture()
def workflow() -> dict[str, Any]:
    return load_workflow(WORKFLOW_PATH)


@pytest.fixture()
def prompt(workflow: dict[str, Any]) -> dict[str, Any]:
    return to_api_prompt(workflow, OBJECT_INFO)


def test_fitting_overrides_have_no_problems(workflow: dict[str, Any], prompt: dict[str, Any]) -> None:
    overrides = ["2.token=tl_doll", "1.resolution=256", "7.filename_prefix=x", "3.class_images_folder=cls"]
    assert check_overrides(workflow, overrides) == []
    assert check_overrides(prompt, overrides, OBJECT_INFO) == []


def test_an_unknown_node_id_is_found_from_the_workflow_file_alone(workflow: dict[str, Any]) -> None:
    assert check_overrides(workflow, ["99.token=tl_doll"]) == [
        f"override '99.token=tl_doll': the workflow has no node 99; nodes: {NODES}"]


def test_an_unknown_node_id_is_found_in_the_prompt(prompt: dict[str, Any]) -> None:
    assert check_overrides(prompt, ["99.token=tl_doll"], OBJECT_INFO) == [
        f"override '99.token=tl_doll': the workflow has no node 99; nodes: {NODES}"]


def test_a_misspelled_input_lists_the_nodes_inputs(prompt: dict[str, Any]) -> None:
    assert check_overrides(prompt, ["2.tokn=tl_doll"], OBJECT_INFO) == [
        f"override '2.tokn=tl_doll': node 2 (TL_MaskTarget) has no input 'tokn'; inputs: {MASK_TARGET_INPUTS}"]


def test_hidden_inputs_cannot_be_set(prompt: dict[str, Any]) -> None:
    assert check_overrides(prompt, ["2.unique_id=5"], OBJECT_INFO) == [
        f"override '2.unique_id=5': node 2 (TL_MaskTarget) has no input 'unique_id'; inputs: {MASK_TARGET_INPUTS}"]


def test_input_names_are_checked_on_the_workflow_too(workflow: dict[str, Any]) -> None:
    assert check_overrides(workflow, ["4.image=1"], OBJECT_INFO) == [
        "override '4.image=1': node 4 (PreviewImage) has no input 'image'; inputs: images"]


def test_every_problem_gets_its_own_line_in_order(prompt: dict[str, Any]) -> None:
    problems = check_overrides(prompt, ["2token=x", "2.token=ok", "42.steps=3", "1.resolutoin=256"], OBJECT_INFO)
    assert problems == [
        "override '2token=x' must look like NODE_ID.INPUT=VALUE, e.g. 3.steps=20",
        f"override '42.steps=3': the workflow has no node 42; nodes: {NODES}",
        "override '1.resolutoin=256': node 1 (TL_LoadMultiConceptDataset) has no input 'resolutoin'; "
        "inputs: folder, resolution, mask_threshold",
    ]


def test_a_muted_or_virtual_node_is_named_as_such(workflow: dict[str, Any]) -> None:
    muted = copy.deepcopy(workflow)
    next(n for n in muted["nodes"] if n["id"] == 4)["mode"] = 2
    assert check_overrides(muted, ["4.images=1"]) == [
        "override '4.images=1': node 4 (PreviewImage) is not run by the server (virtual, muted or bypassed); "
        "nodes: 1 (TL_LoadMultiConceptDataset), 2 (TL_MaskTarget), 3 (TL_MaskTarget), 5 (MaskToImage), "
        "6 (PreviewImage), 7 (SaveImage), 8 (SaveImage)"]


def test_a_class_the_server_lacks_is_reported(prompt: dict[str, Any]) -> None:
    info = {k: v for k, v in OBJECT_INFO.items() if k != "SaveImage"}
    assert check_overrides(prompt, ["7.filename_prefix=x"], info) == [
        "override '7.filename_prefix=x': node 7 uses 'SaveImage', which this server does not have"]


def test_apply_overrides_sets_values_or_changes_nothing(prompt: dict[str, Any]) -> None:
    before = copy.deepcopy(prompt)
    with pytest.raises(WorkflowFormatError, match="node 2 \\(TL_MaskTarget\\) has no input 'tokn'"):
        apply_overrides(prompt, ["1.resolution=256", "2.tokn=tl_doll"], OBJECT_INFO)
    assert prompt == before
    apply_overrides(prompt, ["1.resolution=256", "2.token=tl_doll"], OBJECT_INFO)
    assert prompt["1"]["inputs"]["resolution"] == 256
    assert prompt["2"]["inputs"]["token"] == "tl_doll"


class _FakeServer:
    """Answers /object_info like a started server; running anything is an error."""

    def object_info(self) -> dict[str, Any]:
        return OBJECT_INFO

    def run(self, *_: object, **__: object) -> None:
        raise AssertionError("nothing may be queued when an override is wrong")


def test_build_prompt_checks_input_names_before_anything_is_queued(workflow: dict[str, Any]) -> None:
    with pytest.raises(WorkflowFormatError, match="has no input 'tokn'; inputs: dataset, mask_index, token"):
        build_prompt(_FakeServer(), workflow, ["2.tokn=tl_doll"])  # type: ignore[arg-type]
    prompt = build_prompt(_FakeServer(), workflow, ["2.token=tl_doll"])  # type: ignore[arg-type]
    assert prompt["2"]["inputs"]["token"] == "tl_doll"


@pytest.fixture()
def no_server(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_: object, **__: object) -> None:
        raise AssertionError("the server must not be prepared when a node id is wrong")

    monkeypatch.setattr(runner, "prepare_server", refuse)


@pytest.mark.usefixtures("no_server")
def test_a_wrong_node_id_fails_before_the_server_is_prepared(tmp_path: Path) -> None:
    with pytest.raises(WorkflowFormatError, match="the workflow has no node 99; nodes: 1 "):
        run_workflow_file(WORKFLOW_PATH, tmp_path / "out", overrides=["99.token=tl_doll"])


@pytest.mark.usefixtures("no_server")
def test_the_script_prints_one_error_line_per_problem_and_exits_non_zero(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = importlib.util.spec_from_file_location("run_workflow_script", REPO_ROOT / "scripts" / "run_workflow.py")
    assert spec is not None and spec.loader is not None
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    started = time.monotonic()
    code = script.main([str(WORKFLOW_PATH), "--out", str(tmp_path / "out"),
                        "--set", "99.token=tl_doll", "--set", "2.token=ok", "--set", "0.x=1"])
    assert time.monotonic() - started < 1.0
    assert code == 1
    assert capsys.readouterr().err.splitlines() == [
        f"error: override '99.token=tl_doll': the workflow has no node 99; nodes: {NODES}",
        f"error: override '0.x=1': the workflow has no node 0; nodes: {NODES}",
    ]
    assert not (tmp_path / "out").exists()


# --- --input-dir -------------------------------------------------------------------------------

def _touch(*paths: Path) -> None:
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")


def test_a_folder_of_sets_gives_its_sub_folders(tmp_path: Path) -> None:
    _touch(tmp_path / "b_set" / "resized" / "01.png", tmp_path / "a_set" / "01.png", tmp_path / "README.md")
    (tmp_path / ".hidden").mkdir()
    assert input_sets(tmp_path) == [tmp_path / "a_set", tmp_path / "b_set"]


def test_sample_data_gives_its_sets() -> None:
    sets = input_sets(SAMPLE_DATA_DIR)
    assert SAMPLE_DATA_DIR / "toy_pair" in sets
    assert all(p.parent == SAMPLE_DATA_DIR for p in sets)


@pytest.mark.parametrize("image_folder", ["resized", "images"])
def test_a_set_in_the_papers_layout_is_one_set(tmp_path: Path, image_folder: str) -> None:
    my_set = tmp_path / "my_set"
    _touch(my_set / image_folder / "01.png", my_set / "mask_1" / "01.png", my_set / "mask_2" / "01.png")
    assert input_sets(my_set) == [my_set]


def test_a_flat_set_is_one_set(tmp_path: Path) -> None:
    _touch(tmp_path / "01.JPG", tmp_path / "01_mask_1.png", tmp_path / "01_mask_2.png")
    assert input_sets(tmp_path) == [tmp_path]


def test_a_folder_without_sets_says_what_it_expects(tmp_path: Path) -> None:
    _touch(tmp_path / "notes.txt", tmp_path / ".preview.png")
    with pytest.raises(InputDirError, match="holds no data set: expected a folder of sets") as err:
        input_sets(tmp_path)
    assert "resized/*.png" in str(err.value) and "*_mask_1.png" in str(err.value)
    with pytest.raises(InputDirError, match="is not a folder"):
        input_sets(tmp_path / "missing")


def _one_set(folder: Path) -> Path:
    _touch(folder / "resized" / "01.png", folder / "mask_1" / "01.png")
    return folder


def test_one_set_is_used_under_the_folder_name_the_workflow_asks_for(tmp_path: Path, prompt: dict[str, Any]) -> None:
    my_set = _one_set(tmp_path / "my_set")
    apply_overrides(prompt, ["1.folder=photos"], OBJECT_INFO)
    assert input_set_names(prompt, my_set) == {"photos": my_set}
    apply_overrides(prompt, ["1.folder=my_set"], OBJECT_INFO)  # already its own name
    assert input_set_names(prompt, my_set) == {}
    assert input_set_names(prompt, None) == {}  # the sample sets, as before


def test_one_set_where_the_workflow_loads_a_sample_set_says_which_set_to_add(
        tmp_path: Path, prompt: dict[str, Any]) -> None:
    assert prompt["1"]["inputs"]["folder"] == "[sample] shapes_pair"
    with pytest.raises(InputDirError) as err:
        input_set_names(prompt, _one_set(tmp_path / "my_set"))
    assert str(err.value) == (
        "node 1 (TL_LoadMultiConceptDataset) loads '[sample] shapes_pair' (one of the pack's sample sets), not the "
        f"set --input-dir {tmp_path / 'my_set'} gives; add --set 1.folder=my_set to load it there.")


def test_one_set_and_two_loaders_asking_two_names_get_one_line_each(tmp_path: Path, prompt: dict[str, Any]) -> None:
    prompt["9"] = copy.deepcopy(prompt["1"])
    prompt["1"]["inputs"]["folder"], prompt["9"]["inputs"]["folder"] = "photos", "more_photos"
    with pytest.raises(InputDirError) as err:
        input_set_names(prompt, _one_set(tmp_path / "my_set"))
    lines = str(err.value).splitlines()
    assert [line.split(" (")[0] for line in lines] == ["node 1", "node 9"]
    assert lines[1].endswith("add --set 9.folder=my_set to load it there.")


def test_a_folder_of_sets_lacking_the_asked_name_lists_the_sets_it_holds(
        tmp_path: Path, prompt: dict[str, Any]) -> None:
    _one_set(tmp_path / "sets" / "a_set")
    _one_set(tmp_path / "sets" / "b_set")
    apply_overrides(prompt, ["1.folder=photos"], OBJECT_INFO)
    with pytest.raises(InputDirError, match="node 1 \\(TL_LoadMultiConceptDataset\\) loads 'photos', which "
                                            "--input-dir .* does not hold \\(it holds a_set, b_set\\); add --set "
                                            "1.folder=NAME with one of those."):
        input_set_names(prompt, tmp_path / "sets")
    apply_overrides(prompt, ["1.folder=b_set"], OBJECT_INFO)
    assert input_set_names(prompt, tmp_path / "sets") == {}


# The training node and its options, as /object_info describes them (only what the checks read).
TRAIN_INFO: dict[str, Any] = {
    "TL_TrainKV": {"input": {"required": {"guidance": [["hard", "soft", "none"], {}], "steps": ["INT", {"default": 0}],
                                          "output_name": ["STRING", {}], "resume": ["BOOLEAN", {}]},
                             "optional": {"options": ["TL_TRAIN_OPTIONS", {}]}}},
    "TL_TrainingOptions": {"input": {"required": {"learning_rate": ["FLOAT", {"default": 0.0}],
                                                  "seed": ["INT", {"default": 42}]}}},
}


def test_an_expert_setting_on_the_training_node_goes_to_its_options() -> None:
    """Command lines written for the first layout (`--set 9.learning_rate=...`) keep working."""
    prompt = {"9": {"class_type": "TL_TrainKV", "inputs": {"guidance": "hard", "steps": 0, "output_name": "x",
                                                          "resume": False}}}
    assert check_overrides(prompt, ["9.learning_rate=0.001"], TRAIN_INFO) == []
    assert "has no input 'lerning_rate'" in check_overrides(prompt, ["9.lerning_rate=1"], TRAIN_INFO)[0]
    apply_overrides(prompt, ["9.learning_rate=0.001", "9.steps=50"], TRAIN_INFO)
    options_id = prompt["9"]["inputs"]["options"][0]
    assert prompt[options_id]["class_type"] == "TL_TrainingOptions"
    assert prompt[options_id]["inputs"] == {"learning_rate": 0.001, "seed": 42}  # the rest at the defaults
    assert prompt["9"]["inputs"]["steps"] == 50
    apply_overrides(prompt, ["9.seed=7"], TRAIN_INFO)  # the linked node is reused
    assert len(prompt) == 2 and prompt[options_id]["inputs"]["seed"] == 7


def test_the_demo_draws_enough_class_images_and_pictures_to_read_a_rate() -> None:
    from headless.world_settings import WORLD_DEMO_PICTURES, apply_demo_batches

    prompt = {"1": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 8}},
              "2": {"class_type": "EmptyLatentImage", "inputs": {"batch_size": 64}},
              "3": {"class_type": "EmptyLatentImage", "inputs": {"batch_size": ["9", 0]}},
              "4": {"class_type": "KSampler", "inputs": {"steps": 20}}}
    apply_demo_batches(prompt)
    assert prompt["1"]["inputs"]["batch_size"] == WORLD_DEMO_PICTURES == 32
    assert prompt["2"]["inputs"]["batch_size"] == 64  # never fewer than the file asks for
    assert prompt["3"]["inputs"]["batch_size"] == ["9", 0]  # a link is left alone
    assert prompt["4"]["inputs"] == {"steps": 20}
