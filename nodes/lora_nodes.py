"""Export TL LoRA: the trained K/V deltas as a standard low-rank LoRA file, the token beside it.

Thin adapter: the SVD, the key names and the files live in `textloc.weights.lora_export`.
"""

from __future__ import annotations

from comfy_api.latest import io

from ..textloc import host
from ..textloc.training.run_files import PACK_FOLDER, RunFiles
from ..textloc.weights.lora_export import (
    MAX_RANK,
    export_base_name,
    export_path,
    export_trigger,
    run_name_of,
    save_kv_lora,
)
from ..textloc.weights.trained import TrainedWeights
from .common import CATEGORY_ROOT, RESULT_TYPE

TLResult = io.Custom(RESULT_TYPE)
DEFAULT_RANK = 16


class ExportTLLoRA(io.ComfyNode):
    """Share a result with people who only have a LoRA loader: the K/V deltas as a rank-r LoRA."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="TL_ExportLoRA",
            display_name="Export TL LoRA",
            category=f"{CATEGORY_ROOT}/apply",
            description=(
                "Writes the trained K/V deltas as a standard low-rank LoRA (kohya keys lora_unet_..., "
                "lora_down/lora_up/alpha, fp16) that the stock Load LoRA nodes and other UIs apply. Its tokens "
                "are the run's token files in output/embeddings/<run>/ (no LoRA list shows them): the trigger "
                "output is the prompt to type, e.g. embedding:tl_ball_run/tl_ball ball. The rank sets the size; "
                "the file's metadata holds each layer's error against the full delta."
            ),
            is_output_node=True,
            inputs=[
                TLResult.Input(
                    "tl_result",
                    tooltip="The trainer's tl_result output: the K/V deltas and tokens to export.",
                ),
                io.Int.Input(
                    "rank",
                    default=DEFAULT_RANK,
                    min=1,
                    max=MAX_RANK,
                    tooltip=(
                        "LoRA rank: how many singular directions of each delta are kept. Higher = closer to the "
                        "trained deltas and a bigger file; a rank at or above a layer's smaller side keeps that "
                        "layer exact (every layer: 768 on SD1.x, 1024 on SD2.x, 1280 on SDXL). 16 is the usual size."
                    ),
                ),
                io.String.Input(
                    "file_name",
                    default="",
                    tooltip=(
                        "Start of the file name; empty = the training run's name. The file is "
                        "output/loras/textual_localization/<name>_lora_r<rank>.safetensors; an export of the same "
                        "run under that name is replaced, another run's file never is. The tokens stay in "
                        "output/embeddings/<run>/<token>.safetensors."
                    ),
                ),
            ],
            outputs=[
                io.String.Output(
                    display_name="lora_name",
                    tooltip=(
                        "The LoRA's name as the stock Load LoRA nodes list it, e.g. "
                        "textual_localization/tl_ball_run_lora_r16.safetensors (refresh the page to see it there)."
                    ),
                ),
                io.String.Output(
                    display_name="trigger",
                    tooltip=(
                        "What to type in prompts with the LoRA, e.g. 'embedding:tl_ball_run/tl_ball ball': the "
                        "token file output/embeddings/tl_ball_run/tl_ball.safetensors. Share it with the LoRA "
                        "(elsewhere it goes to models/embeddings/tl_ball_run/)."
                    ),
                ),
            ],
        )

    @classmethod
    def execute(cls, tl_result: TrainedWeights, rank: int, file_name: str = "") -> io.NodeOutput:
        output_dir = host.output_directory()
        path = export_path(output_dir, export_base_name(tl_result, file_name), rank)
        save_kv_lora(path, tl_result, rank, output_dir)
        trigger = export_trigger(tl_result, RunFiles(run_name_of(tl_result), output_dir))
        return io.NodeOutput(f"{PACK_FOLDER}/{path.name}", trigger)
