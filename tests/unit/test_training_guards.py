"""What the trainer refuses before it starts, and what it never writes (no ComfyUI needed).

- a token that another word of the training prompt also spells (its class word, a template word,
  another concept's token): the trainable vector would replace every occurrence;
- resume of a run name that has no checkpoint: it would silently start a fresh run;
- a token name a prompt could not reach the run's file by, or an overwrite of a file no run wrote;
- weights that became NaN or infinite: they would sample black images.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from tl_assertions import expect_user_error as _user_error

from textloc.config import (
    EMBEDDING_PER_RUN,
    EMBEDDING_SHARED,
    TOKEN_MAX_LENGTH,
    TrainConfig,
    check_token_clashes,
    instance_prompt,
)
from textloc.data.dataset import Concept, MultiConceptDataset, validate_token_name
from textloc.training.loop import TrainingJob, TrainingStopped, stop_if_not_finite, train
from textloc.training.run_files import RunFiles, check_embedding_names, plan_run, prompt_embedding_name
from textloc.weights.files import STATE_FILE, build_metadata, checkpoint_dir_name, save_embedding

RES = 8


def _concept(token: str, class_word: str) -> Concept:
    masks = torch.zeros(1, RES, RES)
    masks[:, 2:5, 2:5] = 1.0
    return Concept(token=token, class_word=class_word, masks=masks, source="MASK input")


def _dataset(*concepts: Concept) -> MultiConceptDataset:
    """Concepts set directly, as a dataset made without Mask Target's checks would hold them."""
    return MultiConceptDataset(name="set", images=torch.zeros(1, RES, RES, 3), folder_masks=torch.zeros(0, 1, RES, RES),
                               image_names=("a.png",), original_sizes=((RES, RES),), resolution=RES,
                               concepts=concepts)


def _train(tmp_path: Path, dataset: MultiConceptDataset, embedding_folders: list[Path] | None = None,
           **config) -> None:
    """The trainer must refuse before it touches the model: None stands in for model, CLIP and VAE."""
    train(TrainingJob(model=None, clip=None, vae=None, dataset=dataset, config=TrainConfig(**config),
                      run=RunFiles("run", tmp_path), embedding_folders=embedding_folders or []))


# ---------------------------------------------------------------------------------------------- token clashes


def test_a_token_equal_to_its_class_word_is_refused_with_a_new_name() -> None:
    message = _user_error(lambda: instance_prompt(TrainConfig(), [("ball", "ball")]),
                          "token", "'ball'", "class word", "'photo of a ball ball'", "tl_ball")
    assert message.startswith("token: ")


@pytest.mark.parametrize(("token", "prompt", "word"), [
    ("photo", "photo of {concepts}", "photo"),
    ("Photo", "photo of {concepts}", "photo"),  # CLIP lowercases: the same word
    ("tl_ball", "photo of {concepts}, tl_ball style", "tl_ball"),  # the token typed into the template
])
def test_a_token_equal_to_a_word_of_the_prompt_template_is_refused(token: str, prompt: str, word: str) -> None:
    _user_error(lambda: instance_prompt(TrainConfig(prompt=prompt), [(token, "ball")]),
                f"'{token}'", f"'{word}' in the prompt", "rename the token", f"take '{word}' out of the prompt")


def test_a_token_equal_to_a_word_of_the_concept_phrase_is_refused() -> None:
    _user_error(lambda: instance_prompt(TrainConfig(concept_phrase="the {token} {class}"), [("The", "ball")]),
                "'The'", "concept_phrase", "tl_The")


def test_a_token_clashing_with_another_concept_is_refused() -> None:
    _user_error(lambda: instance_prompt(TrainConfig(), [("tl_ball", "ball"), ("TL_BALL", "box")]),
                "'TL_BALL'", "token of another concept", "TL_BALL_2")
    _user_error(lambda: instance_prompt(TrainConfig(), [("box", "ball"), ("tl_box", "box")]),
                "'box'", "class word 'box' of the concept 'tl_box'", "photo of a box ball and a tl_box box")


def test_a_token_inside_another_word_is_refused() -> None:
    """Every place the token's text occurs would become the vector, also inside 'ball'."""
    _user_error(lambda: instance_prompt(TrainConfig(), [("all", "ball")]), "'all' is part of 'ball'")


LONGEST = "tl_" + "x" * (TOKEN_MAX_LENGTH - 3)


@pytest.mark.parametrize("concepts", [
    [("b" * TOKEN_MAX_LENGTH, "b" * TOKEN_MAX_LENGTH)],  # the longest token, equal to its class word
    [(LONGEST, "ball"), (LONGEST.upper(), "box")],  # the longest token twice: the counter must fit too
], ids=["prefix", "counter"])
def test_a_suggested_token_stays_within_the_length_limit(concepts: list[tuple[str, str]]) -> None:
    message = _user_error(lambda: instance_prompt(TrainConfig(), concepts), "rename the token")
    suggestion = re.search(r"rename the token, e\.g\. (\w+)", message).group(1)
    assert len(suggestion) <= TOKEN_MAX_LENGTH and validate_token_name(suggestion) == suggestion
    check_token_clashes([*concepts[:-1], (suggestion, concepts[-1][1])])  # and it clashes with nothing


def test_good_tokens_keep_working() -> None:
    config = TrainConfig()
    assert instance_prompt(config, [("tl_ball", "ball"), ("tl_doll", "doll")]) == \
        "photo of a tl_ball ball and a tl_doll doll"
    assert instance_prompt(config, [("sks", "doll")]) == "photo of a sks doll"
    assert instance_prompt(config, [("tl_ball", "ball"), ("tl_ball2", "red ball")]) == \
        "photo of a tl_ball ball and a tl_ball2 red ball"
    assert instance_prompt(TrainConfig(prompt="a toy scene with {concepts}", concept_phrase="the {token} {class}"),
                           [("tl_ball", "ball")]) == "a toy scene with the tl_ball ball"
    check_token_clashes([("tl_ball", "ball"), ("tl_box", "box")])


def test_the_trainer_refuses_a_clashing_token_before_it_loads_anything(tmp_path: Path) -> None:
    _user_error(lambda: _train(tmp_path, _dataset(_concept("photo", "ball"))), "'photo'", "tl_photo")
    _user_error(lambda: _train(tmp_path, _dataset(_concept("ball", "ball"))), "'ball'", "class word", "tl_ball")
    _user_error(lambda: _train(tmp_path, _dataset(_concept("toy", "ball")), prompt="a toy scene with {concepts}"),
                "'toy' in the prompt 'a toy scene with {concepts}'")
    assert not (tmp_path / "textual_localization").exists()


# ---------------------------------------------------------------------------------------------- resume


def _checkpoint(output_dir: Path, name: str, step: int = 2) -> Path:
    """A checkpoint folder as latest_checkpoint recognises it (its trainer state file present)."""
    folder = RunFiles(name, output_dir).checkpoints_dir / checkpoint_dir_name(step)
    folder.mkdir(parents=True)
    (folder / STATE_FILE).write_bytes(b"")
    return folder


def test_resume_of_a_run_that_does_not_exist_lists_the_runs_that_do(tmp_path: Path) -> None:
    for name in ("tl_box", "tl_ball"):
        _checkpoint(tmp_path, name)
    message = _user_error(lambda: plan_run(tmp_path, "tl_bal", resume=True), "output_name",
                          "no run named 'tl_bal' to resume; runs that exist: tl_ball, tl_box",
                          "turn resume off to start a new run, or set output_name to one of those names")
    assert not (tmp_path / "textual_localization" / "tl_bal").exists(), message


def test_resume_with_no_runs_at_all_says_so(tmp_path: Path) -> None:
    _user_error(lambda: plan_run(tmp_path, "tl_ball", resume=True),
                "no run named 'tl_ball' to resume; runs that exist: none", "turn resume off to start a new run.")


def test_resume_of_a_run_stopped_before_its_first_checkpoint_is_refused(tmp_path: Path) -> None:
    _checkpoint(tmp_path, "tl_box")
    RunFiles("tl_ball", tmp_path).run_dir.mkdir(parents=True)
    _user_error(lambda: plan_run(tmp_path, "tl_ball", resume=True),
                "run 'tl_ball' has no checkpoint to resume", "runs that exist: tl_box")


def test_resume_of_an_existing_run_and_fresh_runs_still_work(tmp_path: Path) -> None:
    _checkpoint(tmp_path, "tl_ball", step=2)
    latest = _checkpoint(tmp_path, "tl_ball", step=4)
    run, resume_from = plan_run(tmp_path, "tl_ball", resume=True)
    assert (run.name, resume_from) == ("tl_ball", latest)
    run, resume_from = plan_run(tmp_path, "tl_ball", resume=False)
    assert (run.name, resume_from) == ("tl_ball_2", None)
    assert plan_run(tmp_path, "new_run", resume=False) == (RunFiles("new_run", tmp_path), None)


# ---------------------------------------------------------------------------------------------- token names


def test_two_runs_of_one_token_get_two_files_and_two_names(tmp_path: Path) -> None:
    first, _ = plan_run(tmp_path, "tl_ball_run", resume=False)
    assert first.embedding_path("tl_ball") == tmp_path / "embeddings" / "tl_ball_run" / "tl_ball.safetensors"
    first.embedding_path("tl_ball").parent.mkdir(parents=True)
    first.embedding_path("tl_ball").write_bytes(b"")  # a run killed after writing only its token
    second, _ = plan_run(tmp_path, "tl_ball_run", resume=False)
    assert second.name == "tl_ball_run_2"
    assert second.embedding_path("tl_ball") == tmp_path / "embeddings" / "tl_ball_run_2" / "tl_ball.safetensors"
    assert prompt_embedding_name(first, "tl_ball", EMBEDDING_PER_RUN) == "tl_ball_run/tl_ball"
    assert prompt_embedding_name(second, "tl_ball", EMBEDDING_PER_RUN) == "tl_ball_run_2/tl_ball"
    assert prompt_embedding_name(second, "tl_ball", EMBEDDING_SHARED) == "tl_ball"
    assert second.shared_embedding_path("tl_ball") == tmp_path / "embeddings" / "tl_ball.safetensors"


def test_a_token_name_an_earlier_embeddings_folder_answers_is_refused(tmp_path: Path) -> None:
    """ComfyUI searches models/embeddings before output/embeddings: a file there would be what the prompt reads."""
    models = tmp_path / "models" / "embeddings"
    (models / "run").mkdir(parents=True)
    (models / "tl_ball.safetensors").write_bytes(b"")
    folders = [models, tmp_path / "embeddings"]
    dataset = _dataset(_concept("tl_ball", "ball"))
    _user_error(lambda: _train(tmp_path, dataset, folders, embedding_name=EMBEDDING_SHARED), "embedding_name",
                str(models / "tl_ball.safetensors"), "'embedding:tl_ball'", "run/token")
    check_embedding_names(RunFiles("run", tmp_path), ["tl_ball"], EMBEDDING_PER_RUN, folders)  # run/tl_ball is free
    (models / "run" / "tl_ball.pt").write_bytes(b"")
    _user_error(lambda: _train(tmp_path, dataset, folders), "output_name", str(models / "run" / "tl_ball.pt"))
    assert not (tmp_path / "textual_localization").exists()


def test_overwrite_replaces_only_a_file_that_a_run_wrote(tmp_path: Path) -> None:
    run = RunFiles("run", tmp_path)
    shared = run.shared_embedding_path("tl_ball")
    shared.parent.mkdir(parents=True)
    save_file({"clip_l": torch.zeros(1, 768)}, str(shared))  # the user's own embedding: no metadata of this pack
    _user_error(lambda: _train(tmp_path, _dataset(_concept("tl_ball", "ball")), [tmp_path / "embeddings"],
                               embedding_name=EMBEDDING_SHARED), "embedding_name", str(shared), "never overwritten",
                "embedding:run/tl_ball")
    check_embedding_names(run, ["tl_ball"], EMBEDDING_PER_RUN, [tmp_path / "embeddings"])  # not touched: allowed
    save_embedding(shared, {"clip_l": torch.zeros(1, 768)}, build_metadata(run_name="earlier", token="tl_ball"))
    check_embedding_names(run, ["tl_ball"], EMBEDDING_SHARED, [tmp_path / "embeddings"])  # an earlier run's: asked for


def test_an_unknown_way_to_name_the_token_is_refused() -> None:
    _user_error(lambda: TrainConfig(embedding_name="token").validate(), "embedding_name", "run/token",
                "token (overwrite)")


# ---------------------------------------------------------------------------------------------- non-finite weights


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_weights_stop_training_before_they_are_written(tmp_path: Path, value: float) -> None:
    delta = torch.zeros(4, 3)
    delta[1, 2] = value
    last = tmp_path / "checkpoint-000002"
    with pytest.raises(TrainingStopped) as caught:
        stop_if_not_finite([("token.tl_ball.clip_l", torch.ones(1, 3)), ("diffusion_model.a.weight", delta)], 3, last)
    message = str(caught.value)
    assert "'diffusion_model.a.weight' became NaN or infinite by step 3" in message
    assert str(last) in message and "Fix:" in message
    stop_if_not_finite([("diffusion_model.a.weight", torch.zeros(4, 3))], 3, last)  # finite: nothing happens
