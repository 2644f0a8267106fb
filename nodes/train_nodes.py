"""The training node and its expert settings: Textual Localization on the loaded model.

All the work is in textloc.training.loop. The training node shows what an artist sets on every run;
TL Training Options holds the rest (the pattern of ComfyUI's own sampler nodes), each at the
paper's value until changed.
"""

from __future__ import annotations

import logging
from dataclasses import replace

from comfy_api.latest import io, ui

from ..textloc import host
from ..textloc.config import (
    CHECKPOINTING_MODES,
    DEFAULT_CONCEPT_PHRASE,
    DEFAULT_PROMPT,
    DENOISE_REGIONS,
    EMBEDDING_NAMES,
    GUIDANCE_MODES,
    PRECISIONS,
    TrainConfig,
    WidgetRule,
    legacy_settings,
)
from ..textloc.errors import TLInputError
from ..textloc.training.loop import TrainingJob, train
from ..textloc.training.run_files import plan_run
from ..textloc.weights.lora_export import MAX_RANK
from .common import CATEGORY_ROOT, DATASET_TYPE, OPTIONS_TYPE, RESULT_TYPE

log = logging.getLogger(__name__)
TLDataset = io.Custom(DATASET_TYPE)
TLResult = io.Custom(RESULT_TYPE)
TLOptions = io.Custom(OPTIONS_TYPE)
DEFAULTS = TrainConfig()


class TrainTextualLocalization(io.ComfyNode):
    """Fine-tune attn2 K/V and one token per concept, guided by the concepts' masks."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="TL_TrainKV",
            display_name="Train Textual Localization (K/V)",
            category=f"{CATEGORY_ROOT}/training",
            description=(
                "Learns each Mask Target concept as a new token: fine-tunes the key/value projections of every "
                "cross-attention layer (a copy; your model is not changed) and the token's embedding, while a "
                "loss pulls the token's attention map onto the concept's mask. Writes the K/V weights to "
                "output/loras/textual_localization/<name>.safetensors, each token to "
                "output/embeddings/<name>/<token>.safetensors (type embedding:<name>/<token>, as the trigger output "
                "says), and checkpoints, loss history, loss chart and the workflow to "
                "output/textual_localization/<name>/. No run replaces another run's files. "
                "Every other setting is at the paper's value; connect TL Training Options to change them."
            ),
            is_output_node=True,
            inputs=[
                io.Model.Input("model", tooltip="The base model (SD1.x, SD2.x or SDXL). It is cloned, never changed."),
                io.Clip.Input("clip", tooltip="The checkpoint's text encoder: the new tokens are trained through it."),
                io.Vae.Input("vae", tooltip="Encodes the photos and class images to latents once, before training."),
                TLDataset.Input("dataset", tooltip="From Mask Target (one Mask Target per concept to learn)."),
                io.Combo.Input("guidance", options=list(GUIDANCE_MODES), default=DEFAULTS.guidance, tooltip=(
                    "hard: the token's attention map should equal the mask (best localization in the paper). "
                    "soft: only attention outside the mask is penalised (freer, better text alignment). "
                    "none: no attention loss, i.e. plain Custom Diffusion, for comparison.")),
                io.Int.Input("steps", default=DEFAULTS.steps, min=0, max=100000, tooltip=(
                    "Optimizer steps. 0 = auto: 400 per concept (the paper: 400 for one, 800 for two). "
                    "A few dozen are enough to try the pipeline.")),
                io.String.Input("output_name", default="tl_concept", tooltip=(
                    "Run name: files go to output/textual_localization/<name>/, "
                    "output/loras/textual_localization/<name>.safetensors and output/embeddings/<name>/, so a "
                    "prompt names a token embedding:<name>/<token>. An existing run is never overwritten: a "
                    "fresh run gets _2, _3, ... unless resume is on.")),
                io.Boolean.Input("resume", default=False, tooltip=(
                    "Continue run <output_name> from its latest checkpoint (weights, tokens, optimizer, step "
                    "and random state), so the loss curve goes on as if never stopped. A name without a "
                    "checkpoint stops with the list of runs that can be resumed.")),
                TLOptions.Input("options", optional=True, tooltip=(
                    "Expert settings from TL Training Options (learning rate, batch, prior, precision, prompt, "
                    "LoRA export, ...). Not connected: the paper's values.")),
            ],
            outputs=[
                io.Model.Output(display_name="MODEL", tooltip="A copy of the model with the learned K/V deltas."),
                io.Clip.Output(display_name="CLIP", tooltip=(
                    "The text encoder as it came in; the trigger output reaches the run's token files through it.")),
                TLResult.Output(display_name="tl_result", tooltip="The learned weights, for Apply TL Weights."),
                io.LossMap.Output(display_name="loss", tooltip="Total loss per step (connect Plot Loss Graph)."),
                io.Image.Output(display_name="attention", tooltip=(
                    "Per concept: the training photo, the token's attention map over it and its mask, "
                    "labelled with the token and step.")),
                io.String.Output(display_name="trigger", tooltip=(
                    "Exactly what to type in prompts for the concepts, e.g. 'embedding:tl_ball_run/tl_ball ball' "
                    "(the run's own token file; 'embedding:tl_ball ball' with embedding_name 'token (overwrite)' "
                    "on TL Training Options).")),
                io.Image.Output(display_name="loss_chart", tooltip=(
                    "The four losses (total, denoise, prior, attention) per step on a log scale; also saved as "
                    "loss_chart.png in the run folder.")),
            ],
            hidden=[io.Hidden.unique_id, io.Hidden.extra_pnginfo, io.Hidden.prompt],
        )

    @classmethod
    def execute(cls, model, clip, vae, dataset, guidance: str, steps: int, output_name: str, resume: bool,
                options: TrainConfig | None = None) -> io.NodeOutput:
        config = replace(options or DEFAULTS, guidance=guidance, steps=steps)
        old_inputs = _old_layout_settings(cls.hidden.prompt, cls.hidden.unique_id)
        if old_inputs and options is not None:
            raise TLInputError(
                "options", f"the prompt also sets {', '.join(sorted(old_inputs))} on the training node itself "
                "(the layout of older workflows), so two values would compete.",
                "remove those inputs from the training node's prompt entry, or disconnect TL Training Options.")
        if old_inputs:
            log.info("training node %s: settings of an older prompt mapped over: %s", cls.hidden.unique_id,
                     ", ".join(f"{k}={v}" for k, v in sorted(old_inputs.items())))
            config = replace(config, **old_inputs)
        run, resume_from = plan_run(host.output_directory(), output_name.strip(), resume)
        pnginfo = cls.hidden.extra_pnginfo or {}
        job = TrainingJob(model=model, clip=clip, vae=vae, dataset=dataset, config=config, run=run,
                          resume_from=resume_from, node_id=cls.hidden.unique_id,
                          workflow=pnginfo.get("workflow") if isinstance(pnginfo, dict) else None,
                          embedding_folders=host.embedding_folders())
        result = train(job)
        loss_map = {"loss": [h["total"] for h in result.loss_history]}
        return io.NodeOutput(result.model, result.clip, result.weights(), loss_map, result.attention_preview,
                             result.trigger_text, result.loss_chart,
                             ui=ui.PreviewImage(result.attention_preview, cls=cls))


def _old_layout_settings(prompt: object, node_id: object) -> dict[str, object]:
    """Expert settings that an API prompt of the first layout gives the training node itself, checked
    against TL Training Options' widgets (ComfyUI checks only the inputs a node declares)."""
    if not isinstance(prompt, dict) or str(node_id) not in prompt:
        return {}
    inputs = prompt[str(node_id)].get("inputs", {})
    return legacy_settings(inputs, _options_widget_rules()) if isinstance(inputs, dict) else {}


def _options_widget_rules() -> dict[str, WidgetRule]:
    """TL Training Options' widgets as ComfyUI's validation reads them: type, min/max, dropdown list."""
    rules = {}
    for name, (kind, spec) in TrainingOptions.INPUT_TYPES()["required"].items():
        if isinstance(kind, list):  # the older spelling of a dropdown: the list itself
            kind, spec = "COMBO", {**spec, "options": kind}
        rules[name] = WidgetRule(kind=kind, minimum=spec.get("min"), maximum=spec.get("max"),
                                 options=tuple(spec.get("options", ())))
    return rules


class TrainingOptions(io.ComfyNode):
    """The trainer's expert settings, each at the paper's value until changed."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="TL_TrainingOptions",
            display_name="TL Training Options",
            category=f"{CATEGORY_ROOT}/training",
            description=(
                "Expert settings of Train Textual Localization (K/V): connect to its options input. Every value "
                "starts at the paper's; 0 means 'auto' for the number of concepts. On a small test model raise "
                "learning_rate; on an 8 GB card keep gradient_checkpointing on auto."
            ),
            inputs=[
                io.Float.Input("attention_weight", default=DEFAULTS.attention_weight, min=0.0, max=100.0, step=0.05,
                               tooltip=(
                    "Weight of the attention loss. The authors' code uses 1.0. Raise it if the token still "
                    "attends to the other objects; 0 turns guidance off.")),
                io.Float.Input("learning_rate", default=DEFAULTS.learning_rate, min=0.0, max=0.1, step=1e-6,
                               round=1e-8, tooltip=(
                    "AdamW learning rate. 0 = auto: 1e-5 x batch x 2 with prior images (the paper's --scale_lr "
                    "on one GPU: 4e-5 for one concept, 6e-5 for two). Constant, no warm-up.")),
                io.Int.Input("batch_size", default=DEFAULTS.batch_size, min=0, max=64, tooltip=(
                    "Photos per step. 0 = auto: 2 for one concept, 3 for two (the paper). Each concept's "
                    "prior images add the same number again to the UNet batch.")),
                io.Float.Input("prior_weight", default=DEFAULTS.prior_weight, min=0.0, max=10.0, step=0.05, tooltip=(
                    "Weight of class-prior preservation (the paper: 1.0). Needs class images on each Mask "
                    "Target; 0 turns it off.")),
                io.Int.Input("seed", default=DEFAULTS.seed, min=0, max=2**31 - 1, control_after_generate=False,
                             tooltip=(
                    "Seed for noise and timesteps (the paper: 42). The same seed and inputs give the same run.")),
                io.Int.Input("checkpoint_every", default=DEFAULTS.checkpoint_every, min=0, max=100000, tooltip=(
                    "Save a resumable checkpoint every N steps. 0 = auto: 50 per concept (the paper: 50 / 100).")),
                io.Combo.Input("precision", options=list(PRECISIONS), default=DEFAULTS.precision, tooltip=(
                    "auto: fp32 on the CPU, bf16 on GPUs that have it, else fp16 (with loss scaling). "
                    "The trainable weights always stay fp32.")),
                io.Combo.Input("gradient_checkpointing", options=list(CHECKPOINTING_MODES),
                               default=DEFAULTS.gradient_checkpointing, tooltip=(
                    "Recompute activations in the backward pass: much less memory, about a third slower. "
                    "auto: on for GPUs under 16 GB (SD1.5 at 512 px on an 8 GB card needs it) and for "
                    "SDXL; off on the CPU.")),
                io.Boolean.Input("train_token", default=DEFAULTS.train_token, tooltip=(
                    "Train each concept's token embedding (the paper does). Off: only W_K/W_V learn and the "
                    "token keeps its initial word's embedding.")),
                io.Boolean.Input("train_q", default=DEFAULTS.train_q, tooltip=(
                    "Also train W_Q (the paper's ablation 'wqwkwv'). Off by default, as in the paper.")),
                io.String.Input("prompt", default=DEFAULT_PROMPT, tooltip=(
                    "Training prompt; {concepts} becomes each concept's phrase joined with ' and '. "
                    "The paper: 'photo of a <new1> doll' and 'photo of a <new1> bucket and a <new2> doll'.")),
                io.String.Input("concept_phrase", default=DEFAULT_CONCEPT_PHRASE, tooltip=(
                    "How one concept is written in the prompt; {token} and {class} are filled in.")),
                io.Float.Input("weight_decay", default=DEFAULTS.weight_decay, min=0.0, max=1.0, step=0.001,
                               tooltip="AdamW weight decay on the trained deltas and tokens (the paper: 1e-2)."),
                io.Float.Input("grad_clip", default=DEFAULTS.grad_clip, min=0.0, max=100.0, step=0.1,
                               tooltip="Gradient norm clipping (the paper: 1.0)."),
                io.Int.Input("preview_every", default=DEFAULTS.preview_every, min=0, max=10000, tooltip=(
                    "Show the token's attention map next to its mask every N steps (0: only at the end).")),
                io.Int.Input("attention_size", default=DEFAULTS.attention_size, min=0, max=1024, step=8, tooltip=(
                    "Side of the maps compared with the masks. 0 = auto: half the image size, at most 256 "
                    "(the paper: 256 at 512 px).")),
                io.Int.Input("lora_rank", default=DEFAULTS.lora_rank, min=0, max=MAX_RANK, tooltip=(
                    "Also write the K/V deltas as a standard LoRA of this rank (kohya keys: ComfyUI's LoRA "
                    "loaders and other UIs read it) beside the full K/V file. 0: no LoRA file. 16 keeps "
                    "most of the delta at a fraction of the size; a layer's smaller side keeps it exact "
                    "(every layer: 768 on SD1.x, 1024 on SD2.x, 1280 on SDXL).")),
                io.Combo.Input("embedding_name", options=list(EMBEDDING_NAMES), default=DEFAULTS.embedding_name,
                               optional=True, tooltip=(
                    "How prompts name each learned token. run/token: embedding:<run>/<token>, the file "
                    "output/embeddings/<run>/<token>.safetensors that only this run writes. token (overwrite): "
                    "also embedding:<token>, output/embeddings/<token>.safetensors, replacing the file an earlier "
                    "run of the same token name wrote there (that run stays usable as embedding:<its run>/<token>). "
                    "The trigger output says which to type.")),
                io.Combo.Input("denoise_region", options=list(DENOISE_REGIONS), default=DEFAULTS.denoise_region,
                               optional=True, tooltip=(
                    "Where the denoising loss asks the model to redraw the photos. whole photo (the paper): "
                    "everything, the other objects of the photos included, which the shared words and K/V "
                    "can then learn and draw with the token. concepts and background: leaves out every latent "
                    "pixel a masked object that is no concept touches (the masks of the dataset's other "
                    "mask folders): those objects are never asked for. concepts only (Break-A-Scene): only "
                    "the concepts' masks; the background is not asked for either.")),
                io.Boolean.Input("prior_empty_prompt", default=DEFAULTS.prior_empty_prompt, optional=True, tooltip=(
                    "Also train the class images with the empty prompt. The sampler's cfg pushes each picture "
                    "away from the empty prompt's prediction, and the K/V deltas change that prediction too: "
                    "unheld, its drift comes back multiplied by cfg in every picture. Needs class images. "
                    "Off: the paper (only the class word holds the prior).")),
            ],
            outputs=[TLOptions.Output(display_name="options", tooltip=(
                "Connect to the options input of Train Textual Localization (K/V)."))],
        )

    @classmethod
    def execute(cls, **settings: object) -> io.NodeOutput:
        config = replace(DEFAULTS, **settings)
        config.validate()
        return io.NodeOutput(config)

