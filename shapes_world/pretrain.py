"""Pretrain the world model's UNet on the shapes world (CPU-sized) and write the committed weights file.

Two losses, both on ComfyUI's own UNet, CLIP and TAESD objects (so the file samples in ComfyUI
exactly as trained):
- denoising: epsilon prediction on SD1.5's discrete schedule, captions dropped 10 % of the time
  (for classifier-free guidance);
- word localisation on the *known* words only (the colour and shape words of the objects in the
  caption): each word's cross-attention map (the pack's capture path and map formula) is pulled
  to its object's exact mask, the hard-guidance formula, at timesteps up to 800. Without it 100
  denoising steps left the words at chance, so this localisation is trained in, not emergent.
The new concepts of the training sets (NEW_COLORS) never appear here.

    .venv/bin/python -m shapes_world.pretrain --minutes 40 [--resume]
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))

from shapes_world import model as world_model  # noqa: E402
from shapes_world.scenes import random_scene, render  # noqa: E402
from shapes_world.word_attention import encode_captions, noised_forward, unet_with_recorder, word_slots  # noqa: E402

ATTENTION_SIZE = 32
AUX_MAX_TIMESTEP = 800
CAPTION_DROPOUT = 0.1
WORD_SLOTS = 4  # colour and shape word of up to two objects


def load_components(unet_state: dict[str, torch.Tensor]) -> tuple:
    """(ModelPatcher, CLIP, VAE) of the world checkpoint with this UNet, as ordinary (trainable) tensors."""
    import comfy.sd

    model, clip, vae, _ = comfy.sd.load_state_dict_guess_config(world_model.checkpoint_state(unet_state))
    model.model.diffusion_model.float()
    return model, clip, vae


def check_single_tokens(clip, words: list[str]) -> None:
    """Each world word must be one CLIP token: its attention map is one column."""
    tokenizer = clip.tokenizer.clip_l.tokenizer
    for word in words:
        pieces = tokenizer(word)["input_ids"][1:-1]
        if len(pieces) != 1:
            raise ValueError(f"world word {word!r} is {len(pieces)} CLIP tokens; the world needs one")


class CaptionCache:
    """Conditioning per caption, encoded in batches as new captions appear."""

    def __init__(self, clip) -> None:
        self.clip = clip
        self.cache: dict[str, torch.Tensor] = {}

    def get(self, captions: list[str]) -> torch.Tensor:
        missing = sorted({c for c in captions if c not in self.cache})
        if missing:
            for caption, cond in zip(missing, encode_captions(self.clip, missing), strict=True):
                self.cache[caption] = cond
        return torch.stack([self.cache[c] for c in captions])


def make_batch(rng: np.random.Generator, count: int, clip) -> dict:
    """Images, captions, word slots and per-slot target masks for one step."""
    images, captions, columns, targets, valid = [], [], [], [], []
    for _ in range(count):
        scene = random_scene(rng)
        image, masks = render(scene, world_model.RESOLUTION)
        images.append(image)
        dropped = rng.random() < CAPTION_DROPOUT
        captions.append("" if dropped else scene.caption())
        slots = [] if dropped else [(p, i) for p, i, _ in word_slots(clip, scene)]
        cols = [p for p, _ in slots] + [0] * (WORD_SLOTS - len(slots))
        masks_t = [torch.from_numpy(masks[i]).float() for _, i in slots]
        masks_t += [torch.zeros(world_model.RESOLUTION, world_model.RESOLUTION)] * (WORD_SLOTS - len(slots))
        columns.append(cols)
        targets.append(torch.stack(masks_t))
        valid.append([1.0] * len(slots) + [0.0] * (WORD_SLOTS - len(slots)))
    target = F.interpolate(torch.stack(targets), size=(ATTENTION_SIZE, ATTENTION_SIZE), mode="area")
    return {"images": torch.from_numpy(np.stack(images)).float() / 255.0, "captions": captions,
            "columns": torch.tensor(columns), "targets": target, "valid": torch.tensor(valid)}


class Pretrainer:
    """The UNet of ComfyUI's loaded world model, its optimizer, its EMA copy and the data stream."""

    def __init__(self, unet_state: dict[str, torch.Tensor], seed: int, batch: int, lr: float, aux_weight: float):
        from textloc.attention.capture import AttentionRecorder, CaptureSpec

        self.patcher, self.clip, self.vae = load_components(unet_state)
        self.base = self.patcher.model
        self.unet = self.base.diffusion_model
        self.unet.train()
        check_single_tokens(self.clip, _world_words())
        self.captions = CaptionCache(self.clip)
        self.rng = np.random.default_rng(seed)
        self.generator = torch.Generator().manual_seed(seed)
        self.batch = batch
        self.aux_weight = aux_weight
        self.recorder = AttentionRecorder(CaptureSpec(columns=torch.zeros(1, WORD_SLOTS, dtype=torch.long),
                                                      rows=lambda b, _: slice(0, b), keep_graph=True))
        self.options = unet_with_recorder(self.unet, self.recorder)
        self.params = [p for p in self.unet.parameters()]
        for p in self.params:
            p.requires_grad_(True)
        self.optimizer = torch.optim.AdamW(self.params, lr=lr, weight_decay=0.0)
        self.ema = copy.deepcopy(self.unet).requires_grad_(False)
        self.step = 0

    def latents(self, images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            taesd = self.vae.first_stage_model
            return self.base.process_latent_in(taesd.encode(images.permute(0, 3, 1, 2) * 2 - 1)).float()

    def train_step(self) -> dict[str, float]:
        from textloc.training.losses import token_attention_map

        data = make_batch(self.rng, self.batch, self.clip)
        x0 = self.latents(data["images"])
        cond = self.captions.get(data["captions"])
        timesteps = torch.randint(0, 1000, (self.batch,), generator=self.generator)
        noise = torch.randn(x0.shape, generator=self.generator)
        self.recorder.spec.columns = data["columns"]
        self.recorder.begin_step()
        pred = noised_forward(self.base, x0, cond, timesteps, noise, self.options)
        denoise = F.mse_loss(pred.float(), noise)
        maps = token_attention_map(self.recorder.records(), sorted({r.height for r in self.recorder.records()}),
                                   ATTENTION_SIZE)
        weight = data["valid"] * (timesteps <= AUX_MAX_TIMESTEP).float()[:, None]
        per_slot = (maps - data["targets"]).square().mean(dim=(-2, -1))
        aux = (per_slot * weight).sum() / weight.sum().clamp_min(1.0)
        loss = denoise + self.aux_weight * aux
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.optimizer.step()
        with torch.no_grad():
            decay = min(0.995, (1 + self.step) / (10 + self.step))
            for e, p in zip(self.ema.parameters(), self.unet.parameters(), strict=True):
                e.lerp_(p, 1 - decay)
        self.step += 1
        return {"step": self.step, "denoise": float(denoise.detach()), "aux": float(aux.detach())}

    def ema_state(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in self.ema.state_dict().items()}


def _world_words() -> list[str]:
    from shapes_world.scenes import OBJECT_COLORS, SHAPES

    return [*OBJECT_COLORS, *SHAPES]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=40.0, help="stop after this long")
    parser.add_argument("--max-steps", type=int, default=0)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--aux-weight", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--save-every", type=int, default=50)
    parser.add_argument("--out", type=Path, default=world_model.WEIGHTS_PATH)
    parser.add_argument("--resume", action="store_true", help="start from the weights in --out")
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from headless.comfy_boot import boot_comfy

    boot_comfy(cpu=True)
    previous: dict = {}
    if args.resume:
        state, _, meta = world_model.load_weights(args.out)
        previous = json.loads(meta.get("pretraining", "{}"))
    else:
        state = world_model.random_unet_state()
    trainer = Pretrainer(state, args.seed + int(previous.get("steps", 0)), args.batch, args.lr, args.aux_weight)
    clip_digest = world_model.clip_digest(world_model.world_clip_state())
    done_before = int(previous.get("steps", 0))
    started = time.monotonic()
    log: list[dict[str, float]] = []

    def save() -> None:
        record = {"steps": done_before + trainer.step, "batch": args.batch, "lr": args.lr,
                  "aux_weight": args.aux_weight, "seed": args.seed, "resolution": world_model.RESOLUTION,
                  "seconds": round(float(previous.get("seconds", 0)) + time.monotonic() - started, 1),
                  "last_losses": log[-20:]}
        world_model.save_weights(args.out, unet=trainer.ema_state(),
                                 metadata={"pretraining": json.dumps(record), "clip_digest": clip_digest})

    while True:
        losses = trainer.train_step()
        log.append(losses)
        if trainer.step % 10 == 0:
            recent = log[-10:]
            elapsed = time.monotonic() - started
            print(f"step {done_before + trainer.step}: denoise {np.mean([r['denoise'] for r in recent]):.4f} "
                  f"aux {np.mean([r['aux'] for r in recent]):.4f} ({elapsed / trainer.step:.2f} s/step)", flush=True)
        if trainer.step % args.save_every == 0:
            save()
        out_of_time = time.monotonic() - started > args.minutes * 60
        if out_of_time or (args.max_steps and trainer.step >= args.max_steps):
            break
    save()
    print(f"wrote {args.out} after {done_before + trainer.step} steps")
    return 0


if __name__ == "__main__":
    sys.exit(main())
