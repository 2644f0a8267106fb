"""Apply TL Weights: trained K/V deltas onto a model clone, learned tokens into a CLIP clone.

Thin adapter: file lookup, checks, patching and the tokenizer live in `textloc.weights.apply`.
"""

from __future__ import annotations

import folder_paths
from comfy_api.latest import io

from ..textloc import host
from ..textloc.errors import TLInputError
from ..textloc.weights.apply import (
    NONE,
    apply_weights,
    load_weights_file,
    resolve_weights_name,
    weight_file_options,
    weights_fingerprint,
)
from ..textloc.weights.trained import TrainedWeights
from .common import CATEGORY_ROOT, RESULT_TYPE

TLResult = io.Custom(RESULT_TYPE)


def _lora_path(name: str) -> str | None:
    return folder_paths.get_full_path("loras", name)


def _embedding_path(name: str) -> str | None:
    return folder_paths.get_full_path("embeddings", name)


class ApplyTLWeights(io.ComfyNode):
    """Use a trained concept in any prompt: patched MODEL, token-aware CLIP and the words to type."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="TL_ApplyWeights",
            display_name="Apply TL Weights",
            category=f"{CATEGORY_ROOT}/apply",
            description=(
                "Applies Textual Localization weights like a LoRA: the K/V deltas patch a copy of the model "
                "(the same 'diff' patch the stock LoRA loader makes from the file), and the returned CLIP "
                "understands each learned token as embedding:<run>/<token> (and embedding:<token>). Type the trigger text "
                "in your prompt. "
                "Chain several Apply nodes for several concepts; LoRA loaders before or after still work."
            ),
            inputs=[
                io.Model.Input("model", tooltip="The model the weights were trained on (same family). It is cloned, never changed."),
                io.Clip.Input("clip", tooltip="The text encoder of the same checkpoint. It is cloned, never changed."),
                io.Combo.Input(
                    "weights",
                    options=weight_file_options(folder_paths.get_filename_list("loras"), _lora_path),
                    default=NONE,
                    tooltip=(
                        "A K/V file written by the trainer (output/loras/textual_localization/<run>.safetensors; "
                        "only files with this pack's metadata are listed). Its tokens are read from <run>/<token> in "
                        "output/embeddings/ or models/embeddings/ (older runs: <token>). Ignored when tl_result is "
                        "connected. "
                        "Refresh the page (R) after training to see new files."
                    ),
                ),
                io.Float.Input(
                    "strength_model",
                    default=1.0,
                    min=-10.0,
                    max=10.0,
                    step=0.01,
                    tooltip=(
                        "Scales the K/V deltas, like a LoRA's model strength: W + strength x delta. 1 = as trained, "
                        "0 = the base model's attention unchanged."
                    ),
                ),
                io.Float.Input(
                    "strength_token",
                    default=1.0,
                    min=0.0,
                    max=1.0,
                    step=0.01,
                    tooltip=(
                        "How much of the learned token to use. 1 = the learned vector (the same as embedding:TOKEN "
                        "from the file); 0 = the embedding of the word training started from (e.g. sks), i.e. the "
                        "token before training; values in between blend the two linearly."
                    ),
                ),
                TLResult.Input(
                    "tl_result",
                    optional=True,
                    tooltip=(
                        "The trainer's tl_result output: applies the weights held in memory (no files needed) and "
                        "overrides the weights list."
                    ),
                ),
            ],
            outputs=[
                io.Model.Output(display_name="MODEL", tooltip="A copy of the model with the K/V deltas patched in."),
                io.Clip.Output(
                    display_name="CLIP",
                    tooltip="A copy of the text encoder that knows the learned tokens: encode prompts with this one.",
                ),
                io.String.Output(
                    display_name="trigger",
                    tooltip=("The exact text to put in prompts, e.g. 'embedding:tl_ball_run/tl_ball ball' (the run's "
                             "own token file; the stock LoRA loader and the checkpoint's CLIP read it too)."),
                ),
            ],
        )

    @classmethod
    def validate_inputs(cls, weights: str) -> bool:
        """Names missing from the list (a workflow from elsewhere, a file added after start-up) get
        this pack's error at run time, which says what is wrong and how to fix it."""
        return True

    @classmethod
    def fingerprint_inputs(cls, weights: str = NONE, **_: object) -> tuple | str:
        """A rewritten K/V or embedding file re-runs the node instead of serving the old weights."""
        if not weights or weights == NONE:
            return ""
        return weights_fingerprint(weights, _lora_path, _embedding_path)

    @classmethod
    def execute(
        cls,
        model,
        clip,
        weights: str,
        strength_model: float,
        strength_token: float,
        tl_result: TrainedWeights | None = None,
    ) -> io.NodeOutput:
        if tl_result is not None:
            loaded, what = tl_result, "tl_result"
        elif not weights or weights == NONE:
            raise TLInputError(
                "weights", "no weights are selected.", "pick a trained K/V file, or connect the trainer's tl_result."
            )
        else:
            path = resolve_weights_name(weights, _lora_path, folder_paths.get_folder_paths("loras"))
            loaded, what = load_weights_file(path, _embedding_path, host.output_directory()), str(path)
        applied = apply_weights(model, clip, loaded, strength_model, strength_token, what)
        return io.NodeOutput(applied.model, applied.clip, applied.trigger)
