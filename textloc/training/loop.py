"""The Textual Localization training loop on a ComfyUI model (method notes §2-3).

One UNet pass per step over [instance images ; class images of each concept]: the instance
denoising loss, the class-prior loss and the identifier tokens' attention loss all come from it.
Trainable: a delta on W_K/W_V (optionally W_Q) of every attn2 layer, attached as weight
wrappers to a clone of the input model, and one embedding vector per concept fed through
ComfyUI's own CLIP. The input model and CLIP keep their values.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from .. import __version__, host
from ..attention.capture import AttentionRecorder, CaptureSpec, first_rows, install_recorder
from ..attention.localization import attention_iou, attention_mass_inside
from ..config import EMBEDDING_SHARED, TrainConfig, instance_prompt, use_checkpointing
from ..data.dataset import MultiConceptDataset
from ..errors import TLInputError
from ..evaluation.pictures import attention_sheet, loss_chart, note_picture, to_pil
from ..weights.files import (
    atomic_file,
    atomic_write_text,
    build_metadata,
    capture_rng,
    kv_base_hash,
    load_training_checkpoint,
    restore_optimizer,
    restore_rng,
    save_embedding,
    save_kv_deltas,
    save_training_checkpoint,
)
from ..weights.lora_export import export_path, save_kv_lora
from ..weights.trained import TrainedWeights
from .grad_checkpointing import gradient_checkpointing
from .kv_deltas import as_diff_patches, attach_deltas, delta_tensors
from .losses import (
    concepts_attention_loss,
    default_resolutions,
    denoise_weights,
    instance_denoise_loss,
    prepare_target_mask,
    prior_loss,
    token_attention_map,
)
from .run_files import RunFiles, check_embedding_names, prompt_embedding_name
from .token_embedding import (
    PromptTokens,
    TrainableToken,
    build_prompt_tokens,
    encode,
    make_autograd_safe,
    trainable_text_encoder,
)

log = logging.getLogger(__name__)
NUM_TRAIN_TIMESTEPS = 1000
CONSOLE_LINES_PER_RUN = 20  # progress lines in the server console, for people who run headless
KV_FILE_DTYPE = torch.float16  # half the size of fp32; the deltas are small next to the weights
EVENT_STEP = "textloc.train.step"
SHEET_PANEL = 256  # px per panel of the saved attention sheet and the node's IMAGE output
LIVE_PANEL = 156  # px per panel of the live preview: three panels fit the browser's 512 px with full-size text
LOSS_CHART_FILE = "loss_chart.png"
START_TOKENS = 1  # the start-of-text token's key and value get no gradient (method notes §2.9)


class TrainingStopped(RuntimeError):
    """Training cannot go on (e.g. the loss became NaN); the message says where the last checkpoint is."""


@dataclass
class StepLosses:
    step: int
    total: float
    denoise: float
    prior: float
    attention: float

    def as_dict(self) -> dict[str, float]:
        return {"step": self.step, "total": self.total, "denoise": self.denoise,
                "prior": self.prior, "attention": self.attention}


@dataclass
class TrainResult:
    model: Any
    clip: Any
    run: RunFiles
    kv_deltas: dict[str, torch.Tensor]
    token_vectors: dict[str, dict[str, torch.Tensor]]
    metadata: dict[str, str]
    loss_history: list[dict[str, float]]
    steps_done: int
    attention_preview: torch.Tensor  # IMAGE [1, H, W, 3]: photo | map over it | mask over it, a row per concept
    trigger_text: str
    localization: dict[str, dict[str, list[float]]]  # "before"/"after" -> measures per concept
    loss_chart: torch.Tensor  # IMAGE [1, H, W, 3]: total/denoise/prior/attention per step, log scale
    embedding_names: dict[str, str] = field(default_factory=dict)  # token -> what follows `embedding:`
    files: list[Path] = field(default_factory=list)

    def weights(self) -> TrainedWeights:
        return TrainedWeights(
            kv_deltas=self.kv_deltas, token_vectors=self.token_vectors, metadata=self.metadata,
            kv_path=self.run.kv_path, embedding_paths={t: self.run.embedding_path(t) for t in self.token_vectors},
            embedding_names=self.embedding_names)


@dataclass
class TrainingJob:
    """Everything one run needs, gathered by the node."""

    model: Any
    clip: Any
    vae: Any
    dataset: MultiConceptDataset
    config: TrainConfig
    run: RunFiles
    resume_from: Path | None = None
    node_id: str | None = None
    workflow: dict[str, Any] | None = None
    on_step: Callable[[StepLosses], None] | None = None
    # ComfyUI's embeddings folders in search order: a token file found before output/embeddings would
    # shadow the run's `embedding:` name, which is refused before training (empty: not checked)
    embedding_folders: list[Path] = field(default_factory=list)


def _autocast(device: torch.device, precision: str) -> Any:
    dtype = _compute_dtype(device, precision)
    if dtype == torch.float32:
        return nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def _compute_dtype(device: torch.device, precision: str) -> torch.dtype:
    """fp32 on the CPU (bf16 autocast there is several times slower); bf16, else fp16, on GPUs."""
    if precision == "fp32" or (precision == "auto" and device.type == "cpu"):
        return torch.float32
    if precision == "fp16":
        return torch.float16
    if precision == "bf16" or (device.type == "cuda" and torch.cuda.is_bf16_supported()):
        return torch.bfloat16
    return torch.float16


def _encode_images(vae: Any, images: torch.Tensor) -> torch.Tensor:
    """VAE latents of IMAGE [N, H, W, 3] (no augmentation: the authors train with --noaug).

    Encoded in inference mode, as every other use of the loaded VAE is: ComfyUI moves the VAE to the
    GPU on this call, and moved outside inference mode its weights broke a later VAE Decode of the same
    graph (torch 2.11 on CUDA: "Inference tensors do not track version counter"). The clone is a
    normal tensor that training may use.
    """
    with torch.inference_mode():
        latents = vae.encode(images[..., :3]).float()
    return latents.clone()


def _cycle(count: int, step: int, batch: int) -> list[int]:
    """The authors' fixed order: sample i of step s is (s * batch + i) mod count."""
    return [(step * batch + i) % count for i in range(batch)]


def _preview_picture(preview: torch.Tensor) -> tuple[str, Image.Image, int]:
    """The (format, image, max size) triple ComfyUI's progress hook sends to the browser."""
    return ("JPEG", to_pil(preview), 512)


def _save_picture(picture: torch.Tensor, path: Path) -> None:
    """PNG written atomically: a kill mid-write leaves no half picture under the final name."""
    with atomic_file(path) as tmp:
        to_pil(picture).save(tmp, format="PNG")


class _Trainer:
    """State of one run: the cloned model with its deltas, the tokens, data, optimizer, RNG."""

    def __init__(self, job: TrainingJob) -> None:
        self.job = job
        dataset = job.dataset
        self.concepts = list(dataset.concepts)
        self.with_prior = job.config.prior_weight > 0 and bool(self.concepts) and all(
            c.class_images is not None and len(c.class_images) > 0 for c in self.concepts)
        self.config = job.config.resolved(len(self.concepts), self.with_prior, dataset.resolution)
        self.config.validate()
        # Before anything is loaded: refuses a token that the rest of the prompt also spells, or a token
        # name a prompt could not reach this run's file by.
        self.prompt_text = instance_prompt(self.config, [(c.token, c.class_word) for c in self.concepts])
        check_embedding_names(job.run, [c.token for c in self.concepts], self.config.embedding_name,
                              job.embedding_folders)
        self.device = host.torch_device()
        self.generator = torch.Generator().manual_seed(self.config.seed)
        self.history: list[dict[str, float]] = []
        self.start_step = 0
        self.resolutions: list[int] = []
        self.token_positions: list[int] = []
        self.instance_adm: torch.Tensor | None = None
        self.instance_cache: tuple[torch.Tensor, list[int]] | None = None
        self.prompt_tokens: PromptTokens | None = None

    # --- set-up -------------------------------------------------------------------------
    def prepare(self) -> None:
        job, cfg = self.job, self.config
        self.patcher = job.model.clone()
        self.deltas = attach_deltas(self.patcher, ("q", "k", "v") if cfg.train_q else ("k", "v"))
        self.recorder = AttentionRecorder(CaptureSpec(columns=torch.zeros(1, 1, dtype=torch.long),
                                                      rows=first_rows(1), frozen_keys=START_TOKENS))
        install_recorder(self.patcher, self.recorder)
        host.load_for_training(self.patcher)
        make_autograd_safe(self.patcher.model)
        self.base_model = self.patcher.model
        self.base_hash = kv_base_hash({k: self._base_weight(k) for k in self.deltas})
        self.tokens = {c.token: TrainableToken.from_clip(job.clip, c.token, c.init_word) for c in self.concepts}
        self.instance_latents = _encode_images(job.vae, job.dataset.images).to(self.device)
        # Mask Target has already fitted the class images to the dataset resolution.
        self.class_latents = [_encode_images(job.vae, c.class_images).to(self.device)
                              for c in self.concepts] if self.with_prior else []
        if self.class_latents and cfg.prior_empty_prompt:  # one more group: every class image, empty prompt
            self.class_latents.append(torch.cat(self.class_latents))
        self.targets = [prepare_target_mask(c.masks, cfg.attention_size).to(self.device) for c in self.concepts]
        self.denoise_weights = denoise_weights(
            torch.stack([c.masks for c in self.concepts], dim=1), job.dataset.folder_masks.transpose(0, 1),
            cfg.denoise_region, tuple(self.instance_latents.shape[-2:])).to(self.device)
        self.params: list[tuple[str, torch.nn.Parameter]] = [(key, d.delta) for key, d in self.deltas.items()]
        for tok in self.tokens.values():
            for param in tok.parameters():
                param.requires_grad_(cfg.train_token)
            if cfg.train_token:
                self.params.extend(tok.named_parameters())
        for _, p in self.params:
            p.requires_grad_(True)
        self.optimizer = torch.optim.AdamW([p for _, p in self.params], lr=cfg.learning_rate,
                                           betas=(0.9, 0.999), weight_decay=cfg.weight_decay, eps=1e-8)
        self.scaler = torch.amp.GradScaler(self.device.type,
                                           enabled=_compute_dtype(self.device, cfg.precision) == torch.float16)

    def _base_weight(self, key: str) -> torch.Tensor:
        module_path = key[len("diffusion_model."):-len(".weight")]
        return self.base_model.diffusion_model.get_submodule(module_path).weight

    def resume(self, checkpoint_dir: Path) -> None:
        ckpt = load_training_checkpoint(checkpoint_dir)
        if set(ckpt.kv_deltas) != set(self.deltas) or set(ckpt.token_vectors) != set(self.tokens):
            raise TLInputError("resume", f"checkpoint {checkpoint_dir} was made for other layers or tokens.",
                               "resume with the same model, concepts and settings, or turn resume off.")
        with torch.no_grad():
            for key, delta in self.deltas.items():
                delta.delta.copy_(ckpt.kv_deltas[key].to(delta.delta))
        for token, vectors in ckpt.token_vectors.items():
            self.tokens[token].load_state(vectors)
        restore_optimizer(self.optimizer, ckpt, [n for n, _ in self.params])
        restore_rng(ckpt.rng, {"train": self.generator})
        self.history = list(ckpt.loss_history)
        self.start_step = ckpt.step

    # --- conditioning -------------------------------------------------------------------
    def instance_condition(self) -> tuple[torch.Tensor, list[int]]:
        """The instance prompt's conditioning (differentiable in the token vectors) and token columns."""
        if self.prompt_tokens is None:  # the token entries hold the Parameters: tokenize once per run
            self.prompt_tokens = build_prompt_tokens(self.job.clip, self.prompt_text, self.tokens)
        prompt = self.prompt_tokens
        cond, pooled = encode(self.job.clip, prompt.tokens)
        columns = [prompt.positions[c.token][0] for c in self.concepts]
        self.token_positions = columns
        self.instance_adm = self._adm(pooled)
        return cond.to(self.device, torch.float32), columns

    def _adm(self, pooled: torch.Tensor | None) -> torch.Tensor | None:
        """SDXL-style UNets also take a vector of the pooled text embedding and the image size."""
        if not getattr(self.base_model, "adm_channels", 0):
            return None
        size = self.job.dataset.resolution
        adm = self.base_model.encode_adm(pooled_output=pooled, width=size, height=size, crop_w=0, crop_h=0,
                                         target_width=size, target_height=size, device=self.device)
        return None if adm is None else adm.to(self.device, torch.float32)

    def class_conditions(self) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
        """(cond, adm vector or None) of each group of class images: each concept's class word, the
        prior images' prompt, then the empty prompt when `prior_empty_prompt` is on."""
        prompts = [c.class_word for c in self.concepts] + ([""] if self.config.prior_empty_prompt else [])
        conds = []
        with torch.no_grad():
            for text in prompts:
                cond, pooled = self.job.clip.encode_from_tokens(self.job.clip.tokenize(text), return_pooled=True)
                conds.append((cond.to(self.device, torch.float32).clone(), self._adm(pooled)))
        return conds

    # --- passes -------------------------------------------------------------------------
    @staticmethod
    def _rows(adm: torch.Tensor | None, count: int) -> torch.Tensor | None:
        return None if adm is None else adm[:1].expand(count, -1)

    def _forward(self, x0: torch.Tensor, context: torch.Tensor, sigmas: torch.Tensor,
                 noise: torch.Tensor, adm: torch.Tensor | None = None) -> torch.Tensor:
        """Predicted noise for a batch, from ComfyUI's apply_model (which returns x0)."""
        sampling = self.base_model.model_sampling
        xt = sampling.noise_scaling(sigmas, noise, x0)
        extra = {} if adm is None else {"y": adm}
        # apply_model writes per-call keys into transformer_options: give it its own copy.
        options = dict(self.patcher.model_options["transformer_options"])
        with _autocast(self.device, self.config.precision):
            denoised = self.base_model.apply_model(xt, sigmas, c_crossattn=context, transformer_options=options,
                                                   **extra)
        return (xt - denoised.float()) / sigmas.view(-1, 1, 1, 1)

    def _capture(self, columns: list[int], rows: int, keep_graph: bool, resolutions: list[int] | None) -> None:
        spec = self.recorder.spec
        spec.columns = torch.tensor([columns])
        spec.rows = first_rows(rows)
        spec.keep_graph = keep_graph
        spec.resolutions = set(resolutions) if resolutions else None
        self.recorder.begin_step()

    def discover_resolutions(self, context: torch.Tensor, columns: list[int]) -> None:
        """One no-grad pass tells which map sizes exist here; keep every level but the finest."""
        self._capture(columns, 1, keep_graph=False, resolutions=None)
        with torch.no_grad():
            sigma = self.base_model.model_sampling.sigma(torch.tensor([500.0])).to(self.device)
            latent = self.base_model.process_latent_in(self.instance_latents[:1])
            self._forward(latent, context[:1], sigma, torch.zeros_like(latent), self._rows(self.instance_adm, 1))
        self.resolutions = default_resolutions(r.height for r in self.recorder.records())

    def measure(self, timesteps: tuple[int, ...] = (250, 500, 750)) -> dict[str, list[float]]:
        """How each token's attention sits on the training photos (no grad, fixed noise, own RNG).

        Per concept, averaged over photos and timesteps: `mask_mse` (the hard-guidance objective),
        `outside_energy` (the soft-guidance objective), `inside_own_mask` (share of the map's mass
        on its object), `inside_other_objects` (share on the other objects' masks) and `iou`.
        """
        generator = torch.Generator().manual_seed(1234)
        masks = torch.stack([c.masks for c in self.concepts], dim=1).to(self.device)  # [N, C, H, W]
        targets = torch.stack(self.targets, dim=1)  # [N, C, S, S], as in training
        objects = torch.cat([masks, self.job.dataset.folder_masks.to(self.device).transpose(0, 1)], dim=1)
        others = (objects.amax(1, keepdim=True) - masks).clamp(0, 1)  # every other object's pixels
        sums: dict[str, torch.Tensor] = {}
        with torch.no_grad():
            context, columns = self.instance_condition()
            latents = self.base_model.process_latent_in(self.instance_latents)
            for t in timesteps:
                self._capture(columns, len(latents), keep_graph=False, resolutions=self.resolutions)
                noise = torch.randn(latents.shape, generator=generator).to(self.device)
                sigma = self.base_model.model_sampling.sigma(torch.full((len(latents),), float(t))).to(self.device)
                self._forward(latents, context.expand(len(latents), -1, -1), sigma, noise,
                              self._rows(self.instance_adm, len(latents)))
                maps = token_attention_map(self.recorder.records(), self.resolutions, self.config.attention_size)
                values = {
                    "mask_mse": (maps - targets).square().mean((0, 2, 3)),
                    "outside_energy": ((targets == 0) * maps.square()).mean((0, 2, 3)),
                    "inside_own_mask": attention_mass_inside(maps, masks).mean(0),
                    "inside_other_objects": attention_mass_inside(maps, others).mean(0),
                    "iou": attention_iou(maps, masks).mean(0),
                }
                for name, value in values.items():
                    sums[name] = sums.get(name, 0) + value.float().cpu() / len(timesteps)
        return {name: [round(v, 6) for v in value.tolist()] for name, value in sums.items()}

    def step(self, step: int, class_conds: list[tuple[torch.Tensor, torch.Tensor | None]]
             ) -> tuple[StepLosses, torch.Tensor, int]:
        cfg = self.config
        batch = cfg.batch_size
        if cfg.train_token or self.instance_cache is None:  # a frozen token needs one encode only
            self.instance_cache = self.instance_condition()
        context_inst, columns = self.instance_cache
        inst_idx = _cycle(len(self.instance_latents), step, batch)
        x0_parts = [self.instance_latents[inst_idx]]
        ctx_parts = [context_inst.expand(batch, -1, -1)]
        adm_parts = [self._rows(self.instance_adm, batch)]
        for latents, (cond, adm) in zip(self.class_latents, class_conds, strict=True):
            x0_parts.append(latents[_cycle(len(latents), step, batch)])
            ctx_parts.append(cond.expand(batch, -1, -1))
            adm_parts.append(self._rows(adm, batch))
        x0 = self.base_model.process_latent_in(torch.cat(x0_parts))
        context = torch.cat(ctx_parts)
        adm_batch = None if adm_parts[0] is None else torch.cat(adm_parts)
        timesteps = torch.randint(0, NUM_TRAIN_TIMESTEPS, (len(x0),), generator=self.generator)
        noise = torch.randn(x0.shape, generator=self.generator).to(self.device)
        sigmas = self.base_model.model_sampling.sigma(timesteps.float()).to(self.device)

        use_attention = cfg.guidance != "none" and cfg.attention_weight > 0
        self._capture(columns, batch, keep_graph=use_attention, resolutions=self.resolutions)
        eps = self._forward(x0, context, sigmas, noise, adm_batch)
        l_denoise = instance_denoise_loss(eps[:batch], noise[:batch], weights=self.denoise_weights[inst_idx])
        l_prior = prior_loss(eps[batch:], noise[batch:]) if self.with_prior else eps.new_zeros(())
        maps = token_attention_map(self.recorder.records(), self.resolutions, cfg.attention_size)
        targets = torch.stack([t[inst_idx] for t in self.targets], dim=1)
        l_attention = concepts_attention_loss(maps, targets, cfg.guidance) if use_attention else eps.new_zeros(())
        total = l_denoise + cfg.prior_weight * l_prior + cfg.attention_weight * l_attention
        losses = StepLosses(step + 1, total.item(), l_denoise.item(), l_prior.item(), l_attention.item())
        if math.isfinite(losses.total):
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(total).backward()
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_([p for _, p in self.params], cfg.grad_clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
        return losses, maps.detach(), inst_idx[0]

    # --- files --------------------------------------------------------------------------
    def check_finite(self, step: int, last_checkpoint: Path | None) -> None:
        """Stop before a NaN or infinite weight reaches a file (a finite loss does not rule one out)."""
        stop_if_not_finite(((name, p.detach()) for name, p in self.params), step, last_checkpoint)

    def metadata(self, steps_done: int, localization: dict[str, Any] | None = None) -> dict[str, str]:
        cfg = self.config
        return build_metadata(
            tokens=[c.token for c in self.concepts], class_words=[c.class_word for c in self.concepts],
            init_words=[c.init_word for c in self.concepts], guidance=cfg.guidance,
            attention_weight=cfg.attention_weight, prior_weight=cfg.prior_weight if self.with_prior else 0.0,
            steps=steps_done, learning_rate=cfg.learning_rate, batch_size=cfg.batch_size,
            resolution=self.job.dataset.resolution, seed=cfg.seed, prompt=self.prompt_text,
            trained=["q", "k", "v"] if cfg.train_q else ["k", "v"], train_token=cfg.train_token,
            run_name=self.job.run.name, base_model_family=host.model_family(self.job.model), base_hash=self.base_hash,
            base_model_prediction=host.model_prediction(self.job.model),
            dataset=self.job.dataset.name, pack_version=__version__, attention_resolutions=self.resolutions,
            token_positions=self.token_positions, denoise_region=cfg.denoise_region,
            prior_empty_prompt=cfg.prior_empty_prompt and self.with_prior,
            **({"localization": localization} if localization else {}),
        )

    def save_checkpoint(self, steps_done: int) -> Path:
        return save_training_checkpoint(
            self.job.run.checkpoints_dir, steps_done, delta_tensors(self.deltas),
            {t: tok.state() for t, tok in self.tokens.items()}, self.optimizer,
            [n for n, _ in self.params], capture_rng({"train": self.generator}),
            self.metadata(steps_done), self.history)

    def attention_sheet(self, maps: torch.Tensor, sample: int, step: int, panel: int) -> torch.Tensor:
        """Photo `sample` | each token's map over it | its mask over it, one labelled row per concept."""
        return attention_sheet(
            self.job.dataset.images[sample:sample + 1], maps,
            torch.stack([c.masks[sample] for c in self.concepts]), [c.token for c in self.concepts], step,
            panel=panel, class_words=[c.class_word for c in self.concepts])

    def loss_chart(self) -> torch.Tensor:
        return loss_chart(self.history, f"{self.job.run.name}: training losses ({self.config.guidance} guidance)")

    def save_final(self, steps_done: int, preview: torch.Tensor, chart: torch.Tensor,
                   meta: dict[str, str]) -> list[Path]:
        run = self.job.run
        files = [run.kv_path]
        save_kv_deltas(run.kv_path, delta_tensors(self.deltas), meta, dtype=KV_FILE_DTYPE)
        for token, tok in self.tokens.items():
            save_embedding(run.embedding_path(token), tok.state(), {**meta, "token": token})
            files.append(run.embedding_path(token))
            if self.config.embedding_name == EMBEDDING_SHARED:  # asked for: replaces an earlier run's file
                save_embedding(run.shared_embedding_path(token), tok.state(), {**meta, "token": token})
                files.append(run.shared_embedding_path(token))
        run.run_dir.mkdir(parents=True, exist_ok=True)
        _write_json(run.loss_path, {"history": self.history, "metadata": meta})
        files.append(run.loss_path)
        if self.job.workflow is not None:
            _write_json(run.workflow_path, self.job.workflow)
            files.append(run.workflow_path)
        picture = run.attention_dir / f"attention_step{steps_done:06d}.png"
        _save_picture(preview, picture)
        _save_picture(chart, run.run_dir / LOSS_CHART_FILE)
        files.extend([picture, run.run_dir / LOSS_CHART_FILE])
        return files


def stop_if_not_finite(tensors: Iterable[tuple[str, torch.Tensor]], step: int, last_checkpoint: Path | None) -> None:
    """TrainingStopped naming the first non-finite tensor: the trainer never writes weights that sample black."""
    for name, tensor in tensors:
        if not bool(torch.isfinite(tensor).all()):
            raise TrainingStopped(
                f"the trained weight '{name}' became NaN or infinite by step {step}; training stopped there "
                f"without saving it. Last good checkpoint: {last_checkpoint or 'none yet'}. Fix: lower "
                "learning_rate or use precision fp32, then resume from that checkpoint.")


def progress_line(run_name: str, losses: StepLosses, total: int, eta_seconds: float) -> str:
    """'tl_ball: step 40/400, loss 0.1234 (denoise 0.1, prior 0.02, attention 0.003), 2m05s left'."""
    minutes, seconds = divmod(int(round(eta_seconds)), 60)
    return (f"{run_name}: step {losses.step}/{total}, loss {losses.total:.4f} (denoise {losses.denoise:.4f}, "
            f"prior {losses.prior:.4f}, attention {losses.attention:.4f}), {minutes}m{seconds:02d}s left")


def _write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=1))


def train(job: TrainingJob) -> TrainResult:
    """Run (or resume) one training job; writes checkpoints as it goes and the results at the end."""
    with torch.inference_mode(False), torch.enable_grad():
        trainer = _Trainer(job)
        trainer.prepare()
        if job.resume_from is not None:
            trainer.resume(job.resume_from)
        cfg = trainer.config
        with trainable_text_encoder(job.clip):
            class_conds = trainer.class_conditions() if trainer.with_prior else []
            context, columns = trainer.instance_condition()
            trainer.discover_resolutions(context.detach(), columns)
            before = trainer.measure()
            pbar = host.progress_bar(cfg.steps, job.node_id)
            pbar.update_absolute(trainer.start_step, cfg.steps)
            started, last_maps, last_checkpoint = time.monotonic(), None, job.resume_from
            unet = trainer.base_model.diffusion_model
            checkpointing = use_checkpointing(cfg.gradient_checkpointing, trainer.device.type,
                                              host.device_memory_bytes(trainer.device),
                                              sum(p.numel() for p in unet.parameters()))
            with gradient_checkpointing(unet, checkpointing):
                for step in range(trainer.start_step, cfg.steps):
                    host.check_interrupted()
                    losses, maps, sample = trainer.step(step, class_conds)
                    if not math.isfinite(losses.total):
                        raise TrainingStopped(
                            f"the loss became {losses.total} at step {losses.step}; training stopped there. "
                            f"Last good checkpoint: {last_checkpoint or 'none yet'}. Fix: lower learning_rate "
                            "or use precision fp32, then resume from that checkpoint.")
                    trainer.history.append(losses.as_dict())
                    done = step + 1
                    show = done == cfg.steps or (cfg.preview_every > 0 and done % cfg.preview_every == 0)
                    live = None
                    if show:  # the batch's first instance photo; its maps are kept for the final sheet
                        last_maps = (maps[0].cpu(), sample, done)
                        live = _preview_picture(trainer.attention_sheet(*last_maps, panel=LIVE_PANEL))
                    if done % cfg.checkpoint_every == 0 or done == cfg.steps:
                        trainer.check_finite(done, last_checkpoint)
                        last_checkpoint = trainer.save_checkpoint(done)
                    elapsed = time.monotonic() - started
                    eta = elapsed / (done - trainer.start_step) * (cfg.steps - done)
                    host.send_event(EVENT_STEP, {**losses.as_dict(), "node": job.node_id, "max": cfg.steps,
                                                 "eta_seconds": eta, "run": job.run.name})
                    if done == cfg.steps or done % max(1, cfg.steps // CONSOLE_LINES_PER_RUN) == 0:
                        log.info("%s", progress_line(job.run.name, losses, cfg.steps, eta))
                    if job.on_step:
                        job.on_step(losses)
                    pbar.update_absolute(done, cfg.steps, live)
            after = trainer.measure()
        if last_maps is None:  # resumed a finished run: nothing left to train
            preview = note_picture("the run was already finished:\nno step ran, so there is no new map",
                                   (812, 320), title=job.run.name)
        else:
            preview = trainer.attention_sheet(*last_maps, panel=SHEET_PANEL)
        chart = trainer.loss_chart()
        localization = {"before": before, "after": after}
        meta = trainer.metadata(cfg.steps, localization)
        # The MODEL output carries exactly what the K/V file holds (fp16), so the stock LoRA loader
        # applied to the file gives the same model. A delta beyond fp16's range would be inf there.
        kv = {key: delta.to(KV_FILE_DTYPE) for key, delta in delta_tensors(trainer.deltas).items()}
        trainer.check_finite(cfg.steps, last_checkpoint)
        stop_if_not_finite(kv.items(), cfg.steps, last_checkpoint)
        files = trainer.save_final(cfg.steps, preview, chart, meta)
        trained = job.model.clone()
        trained.add_patches(as_diff_patches(kv), 1.0)
        names = {c.token: prompt_embedding_name(job.run, c.token, cfg.embedding_name) for c in trainer.concepts}
        trigger = " and ".join(f"embedding:{names[c.token]} {c.class_word}" for c in trainer.concepts)
        result = TrainResult(
            model=trained, clip=job.clip, run=job.run, kv_deltas=kv,
            token_vectors={t: tok.state() for t, tok in trainer.tokens.items()},
            metadata=meta, loss_history=trainer.history, steps_done=cfg.steps,
            attention_preview=preview, trigger_text=trigger, localization=localization, loss_chart=chart,
            embedding_names=names, files=files)
        if cfg.lora_rank:  # the same deltas as a standard low-rank LoRA, for loaders outside this pack
            lora_path = export_path(job.run.output_dir, job.run.name, cfg.lora_rank)
            result.files += [file for file in save_kv_lora(lora_path, result.weights(), cfg.lora_rank,
                                                           job.run.output_dir) if file not in result.files]
        return result
