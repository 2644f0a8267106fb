"""The world model through ComfyUI's own loaders: it is an SD1.5 checkpoint whose words mean objects,
and on it hard guidance puts a new token's attention on its object, on scenes it never trained on.

Thresholds sit below values measured on the committed weights (see each test), so they catch a broken
model or pipeline, not seed-to-seed noise.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from headless.paths import SAMPLE_DATA_DIR
from shapes_world import model as world_model
from shapes_world.judge import colors_present
from shapes_world.scenes import render, scene_batch
from shapes_world.training_sets import HELDOUT_SET, PAIR, TRAIN_SET
from shapes_world.word_attention import encode_captions, word_shares

# Measured on the committed weights (bench/shapes_world.py, seed 1): words 5.2x chance on 32 new scenes;
# held-out share inside the ball after 100 steps at lr 3e-4: none 0.276, hard 0.621.
WORD_RATIO_FLOOR = 3.0
TL_STEPS = 100
TL_LR = 3e-4
HARD_MARGIN = 0.15


@pytest.fixture(scope="module")
def world() -> tuple[Any, Any, Any]:
    import comfy.sd

    path = world_model.ensure_world_checkpoint()
    with torch.inference_mode():
        return tuple(comfy.sd.load_checkpoint_guess_config(str(path), output_vae=True, output_clip=True)[:3])


def test_the_world_checkpoint_is_sd15_and_tells_a_stale_file(world: tuple[Any, Any, Any], tmp_path: Path) -> None:
    model, clip, vae = world
    assert type(model.model.model_config).__name__ == "SD15"
    assert model.model.model_config.unet_config["channel_mult"] == [1]
    cached = world_model.ensure_world_checkpoint()
    assert world_model.is_current(cached, world_model.checkpoint_recipe(world_model.WEIGHTS_PATH))
    assert not world_model.is_current(cached, world_model.RECIPE_VERSION + "+0000")
    # the committed weights stay within the one-file budget
    assert world_model.WEIGHTS_PATH.stat().st_size <= 32 * 2**20


def test_weights_trained_with_another_text_encoder_are_refused(tmp_path: Path) -> None:
    """The encoder is regenerated, not stored: a ComfyUI whose CLIP module draws other values must not
    silently pair it with this UNet."""
    import shutil

    weights = tmp_path / "weights.safetensors"
    shutil.copyfile(world_model.WEIGHTS_PATH, weights)
    world_model.save_weights(weights, metadata={"clip_digest": "0000000000000000"})
    with pytest.raises(RuntimeError, match="text encoder"):
        world_model.write_checkpoint(tmp_path / "world.safetensors", weights)
    assert not (tmp_path / "world.safetensors").exists()


def test_the_world_text_encoder_tells_words_apart(world: tuple[Any, Any, Any]) -> None:
    _, clip, _ = world
    with torch.inference_mode():
        cond = encode_captions(clip, ["a photo of a red ball", "a photo of a red box", "a photo of a green ball"])
    cos = torch.nn.functional.cosine_similarity
    assert cos(cond[0, 6], cond[1, 6], dim=0) < 0.5  # ball vs box (0.26 when measured)
    assert cos(cond[0, 5], cond[2, 5], dim=0) < 0.5  # red vs green (0.34)


def test_the_vae_round_trips_world_colours(world: tuple[Any, Any, Any]) -> None:
    _, _, vae = world
    scenes, images, _ = scene_batch(31, 6, world_model.RESOLUTION)
    with torch.inference_mode():
        decoded = vae.decode(vae.encode(torch.from_numpy(images).float() / 255.0))
    pictures = (decoded.clamp(0, 1).numpy() * 255).round().astype(np.uint8)
    for scene, picture in zip(scenes, pictures, strict=True):
        assert colors_present(picture) >= {o.color for o in scene.objects if o.color != "white"}


def test_pretrained_words_attend_to_their_objects_on_new_scenes(world: tuple[Any, Any, Any]) -> None:
    """Colour and shape words of captions of unseen scenes: share of attention inside their object."""
    model, clip, vae = world
    scenes, images, masks = scene_batch(4242, 16, world_model.RESOLUTION)
    with torch.inference_mode():
        shares = word_shares(model, clip, vae, scenes, images, masks)
    print(f"word shares: colour {shares.color:.3f}, shape {shares.shape:.3f}, chance {shares.chance:.3f}")
    assert shares.ratio() >= WORD_RATIO_FLOOR


def _heldout_share(models: tuple[Any, Any, Any], guidance: str) -> float:
    from bench.localization import _train, evaluate
    from bench.shapes_world import load_sets, train_config

    sets = load_sets(SAMPLE_DATA_DIR)
    config = train_config(guidance, seed=1, steps=TL_STEPS, learning_rate=TL_LR)
    work = Path(tempfile.mkdtemp(prefix="tl_world_"))
    result = _train(models, sets["train"], config, work, guidance)
    measures, _ = evaluate(result.model, result.clip, models[2], sets["held-out"], config, result.token_vectors, work)
    return float(measures["inside_own_mask"][0])


def test_hard_guidance_puts_the_new_token_on_its_object_in_held_out_scenes(world: tuple[Any, Any, Any]) -> None:
    """The same short training with guidance none and hard (nothing else differs), scored on 10 held-out
    scenes of the magenta ball beside the yellow box."""
    none = _heldout_share(world, "none")
    hard = _heldout_share(world, "hard")
    print(f"held-out share inside the ball: none {none:.3f}, hard {hard:.3f}")
    assert hard > none + HARD_MARGIN


def test_the_sets_show_a_colour_the_world_never_saw() -> None:
    from PIL import Image

    for name in (TRAIN_SET, HELDOUT_SET):
        photo = np.asarray(Image.open(SAMPLE_DATA_DIR / name / "resized" / "01.png").convert("RGB"))
        assert {PAIR.new_color, PAIR.distractor_color} <= colors_present(photo)
    scenes, _, _ = scene_batch(8, 200, 16)
    assert all(o.color != PAIR.new_color for s in scenes for o in s.objects)
    image, _ = render(scenes[0], 16)
    assert image.shape == (16, 16, 3)



def test_the_rebuild_scripts_write_a_loadable_weights_file(tmp_path: Path) -> None:
    """Two pretraining steps and two decoder steps into one file: the scripts that rebuild the weights run."""
    import json

    from shapes_world import decoder, pretrain

    weights = tmp_path / "world.safetensors"
    assert pretrain.main(["--max-steps", "2", "--batch", "2", "--save-every", "1", "--out", str(weights)]) == 0
    assert decoder.main(["--steps", "2", "--batch", "2", "--out", str(weights)]) == 0
    unet, dec, meta = world_model.load_weights(weights)
    assert json.loads(meta["pretraining"])["steps"] == 2 and json.loads(meta["decoder"])["batch"] == 2
    assert meta["clip_digest"] == world_model.clip_digest(world_model.world_clip_state())
    reference, reference_decoder, _ = world_model.load_weights()
    assert unet.keys() == reference.keys() and dec.keys() == reference_decoder.keys()
    assert all(torch.isfinite(v).all() for v in unet.values())
