"""The training node: Textual Localization on the loaded model. All the work is in textloc.training."""

from __future__ import annotations

from comfy_api.latest import io, ui

from ..textloc import host
from ..textloc.config import (
    CHECKPOINTING_MODES,
    DEFAULT_CONCEPT_PHRASE,
    DEFAULT_PROMPT,
    GUIDANCE_MODES,
    PRECISIONS,
    TrainConfig,
)
from ..textloc.run_files import plan_run
from ..textloc.training import TrainingJob, train
from .common import CATEGORY_ROOT, DATASET_TYPE, RESULT_TYPE

TLDataset = io.Custom(DATASET_TYPE)
TLResult = io.Custom(RESULT_TYPE)


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
                "output/loras/textual_localization/, each token to output/embeddings/ (use embedding:TOKEN), "
                "and checkpoints, loss history and the workflow to output/textual_localization/<name>/. "
                "Defaults follow the paper's released scripts; 0 means 'auto' for the number of concepts."
            ),
            is_output_node=True,
            inputs=[
                io.Model.Input("model", tooltip="The base model (SD1.x, SD2.x or SDXL). It is cloned, never changed."),
                io.Clip.Input("clip", tooltip="The checkpoint's text encoder: the new tokens are trained through it."),
                io.Vae.Input("vae", tooltip="Encodes the photos and class images to latents once, before training."),
                TLDataset.Input("dataset", tooltip="From Mask Target (one Mask Target per concept to learn)."),
                io.Combo.Input("guidance", options=list(GUIDANCE_MODES), default="hard", tooltip=(
                    "hard: the token's attention map should equal the mask (best localization in the paper). "
                    "soft: only attention outside the mask is penalised (freer, better text alignment). "
                    "none: no attention loss, i.e. plain Custom Diffusion, for comparison.")),
                io.Float.Input("attention_weight", default=1.0, min=0.0, max=100.0, step=0.05, tooltip=(
                    "Weight of the attention loss. The authors' code uses 1.0. Raise it if the token still "
                    "attends to the other objects; 0 turns guidance off.")),
                io.Int.Input("steps", default=0, min=0, max=100000, tooltip=(
                    "Optimizer steps. 0 = auto: 400 per concept (the paper: 400 for one, 800 for two). "
                    "A few dozen are enough to try the pipeline.")),
                io.Float.Input("learning_rate", default=0.0, min=0.0, max=0.1, step=1e-6, round=1e-8, tooltip=(
                    "AdamW learning rate. 0 = auto: 1e-5 x batch x 2 with prior images (the paper's --scale_lr "
                    "on one GPU: 4e-5 for one concept, 6e-5 for two). Constant, no warm-up.")),
                io.Int.Input("batch_size", default=0, min=0, max=64, tooltip=(
                    "Photos per step. 0 = auto: 2 for one concept, 3 for two (the paper). Each concept's "
                    "prior images add the same number again to the UNet batch.")),
                io.Float.Input("prior_weight", default=1.0, min=0.0, max=10.0, step=0.05, tooltip=(
                    "Weight of class-prior preservation (the paper: 1.0). Needs class images on each Mask "
                    "Target; 0 turns it off.")),
                io.Int.Input("seed", default=42, min=0, max=2**31 - 1, control_after_generate=False, tooltip=(
                    "Seed for noise and timesteps (the paper: 42). The same seed and inputs give the same run.")),
                io.Int.Input("checkpoint_every", default=0, min=0, max=100000, tooltip=(
                    "Save a resumable checkpoint every N steps. 0 = auto: 50 per concept (the paper: 50 / 100).")),
                io.String.Input("output_name", default="tl_concept", tooltip=(
                    "Run name: files go to output/textual_localization/<name>/ and "
                    "output/loras/textual_localization/<name>.safetensors. An existing run is never "
                    "overwritten: a fresh run gets _2, _3, ... unless resume is on.")),
                io.Boolean.Input("resume", default=False, tooltip=(
                    "Continue run <output_name> from its latest checkpoint (weights, tokens, optimizer, step "
                    "and random state), so the loss curve goes on as if never stopped. A name without a "
                    "checkpoint stops with the list of runs that can be resumed.")),
                io.Combo.Input("precision", options=list(PRECISIONS), default="auto", tooltip=(
                    "auto: fp32 on the CPU, bf16 on GPUs that have it, else fp16 (with loss scaling). "
                    "The trainable weights always stay fp32.")),
                io.Combo.Input("gradient_checkpointing", options=list(CHECKPOINTING_MODES), default="auto",
                               tooltip=(
                    "Recompute activations in the backward pass: much less memory, about a third slower. "
                    "auto: on for GPUs under 16 GB (SD1.5 at 512 px on an 8 GB card needs it) and for "
                    "SDXL; off on the CPU.")),
                io.Boolean.Input("train_token", default=True, tooltip=(
                    "Train each concept's token embedding (the paper does). Off: only W_K/W_V learn and the "
                    "token keeps its initial word's embedding.")),
                io.Boolean.Input("train_q", default=False, tooltip=(
                    "Also train W_Q (the paper's ablation 'wqwkwv'). Off by default, as in the paper.")),
                io.String.Input("prompt", default=DEFAULT_PROMPT, tooltip=(
                    "Training prompt; {concepts} becomes each concept's phrase joined with ' and '. "
                    "The paper: 'photo of a <new1> doll' and 'photo of a <new1> bucket and a <new2> doll'.")),
                io.String.Input("concept_phrase", default=DEFAULT_CONCEPT_PHRASE, tooltip=(
                    "How one concept is written in the prompt; {token} and {class} are filled in.")),
                io.Float.Input("weight_decay", default=0.01, min=0.0, max=1.0, step=0.001, tooltip=(
                    "AdamW weight decay on the trained deltas and tokens (the paper: 1e-2).")),
                io.Float.Input("grad_clip", default=1.0, min=0.0, max=100.0, step=0.1, tooltip=(
                    "Gradient norm clipping (the paper: 1.0).")),
                io.Int.Input("preview_every", default=10, min=0, max=10000, tooltip=(
                    "Show the token's attention map next to its mask every N steps (0: only at the end).")),
                io.Int.Input("attention_size", default=0, min=0, max=1024, step=8, tooltip=(
                    "Side of the maps compared with the masks. 0 = auto: half the image size, at most 256 "
                    "(the paper: 256 at 512 px).")),
            ],
            outputs=[
                io.Model.Output(display_name="MODEL", tooltip="A copy of the model with the learned K/V deltas."),
                io.Clip.Output(display_name="CLIP", tooltip="The text encoder; write embedding:TOKEN in prompts."),
                TLResult.Output(display_name="tl_result", tooltip="The learned weights, for Apply TL Weights."),
                io.LossMap.Output(display_name="loss", tooltip="Total loss per step (connect Plot Loss Graph)."),
                io.Image.Output(display_name="attention", tooltip="Each token's attention map | its mask."),
                io.String.Output(display_name="trigger", tooltip="What to type in prompts for the concepts."),
            ],
            hidden=[io.Hidden.unique_id, io.Hidden.extra_pnginfo],
        )

    @classmethod
    def execute(cls, model, clip, vae, dataset, guidance: str, attention_weight: float, steps: int,
                learning_rate: float, batch_size: int, prior_weight: float, seed: int, checkpoint_every: int,
                output_name: str, resume: bool, precision: str, gradient_checkpointing: str,
                train_token: bool, train_q: bool, prompt: str, concept_phrase: str, weight_decay: float,
                grad_clip: float, preview_every: int, attention_size: int) -> io.NodeOutput:
        config = TrainConfig(
            guidance=guidance, attention_weight=attention_weight, prior_weight=prior_weight, steps=steps,
            learning_rate=learning_rate, batch_size=batch_size, checkpoint_every=checkpoint_every, seed=seed,
            weight_decay=weight_decay, grad_clip=grad_clip, train_token=train_token, train_q=train_q,
            prompt=prompt, concept_phrase=concept_phrase, precision=precision,
            gradient_checkpointing=gradient_checkpointing, attention_size=attention_size,
            preview_every=preview_every)
        run, resume_from = plan_run(host.output_directory(), output_name.strip(), resume)
        pnginfo = cls.hidden.extra_pnginfo or {}
        job = TrainingJob(model=model, clip=clip, vae=vae, dataset=dataset, config=config, run=run,
                          resume_from=resume_from, node_id=cls.hidden.unique_id,
                          workflow=pnginfo.get("workflow") if isinstance(pnginfo, dict) else None)
        result = train(job)
        loss_map = {"loss": [h["total"] for h in result.loss_history]}
        return io.NodeOutput(result.model, result.clip, result.weights(), loss_map, result.attention_preview,
                             result.trigger_text, ui=ui.PreviewImage(result.attention_preview, cls=cls))
