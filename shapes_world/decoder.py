"""Train the world's TAESD decoder, so that generated 8x8 latents become pictures a person can read.

The encoder stays the hand-set 8x8 average pool (the UNet was trained on its latents). An average
pool still carries each cell's coverage by an object, so a decoder that knows the world can redraw
a ball's round edge and a box's straight one. It starts from the hand-set blurring decoder, with
small random residual branches, and learns from freshly rendered scenes (L1 + MSE).

    .venv/bin/python -m shapes_world.decoder --minutes 8
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))

from shapes_world import model as world_model  # noqa: E402
from shapes_world.scenes import scene_batch  # noqa: E402

DECODER_PREFIX = "taesd_decoder."
RESIDUAL_INIT_STD = 0.01


def build_taesd(decoder_state: dict[str, torch.Tensor] | None = None) -> torch.nn.Module:
    """ComfyUI's TAESD with the hand-set weights (and a trained decoder, if given), fp32."""
    from headless.comfy_boot import boot_comfy

    boot_comfy()
    from comfy.taesd.taesd import TAESD

    taesd = TAESD()
    state = world_model.taesd_state()
    if decoder_state:
        state.update({DECODER_PREFIX + k: v.float() for k, v in decoder_state.items()})
    taesd.load_state_dict(state)
    return taesd


def _perturb_residuals(decoder: torch.nn.Module, generator: torch.Generator) -> None:
    """Small random weights in every residual block and in the unused channels, so they can learn."""
    with torch.no_grad():
        for name, p in decoder.named_parameters():
            if name.endswith("weight") and (".conv." in name or name.startswith("1.")):
                p.add_(torch.randn(p.shape, generator=generator) * RESIDUAL_INIT_STD)


def train_decoder(minutes: float, steps: int, batch: int, lr: float, seed: int) -> dict[str, torch.Tensor]:
    taesd = build_taesd()
    encoder, decoder = taesd.taesd_encoder.eval(), taesd.taesd_decoder
    _perturb_residuals(decoder, torch.Generator().manual_seed(seed))
    optimizer = torch.optim.Adam(decoder.parameters(), lr=lr)
    started, step = time.monotonic(), 0
    while (not steps or step < steps) and time.monotonic() - started < minutes * 60:
        _, images, _ = scene_batch(seed * 100_000 + step, batch, world_model.RESOLUTION)
        target = torch.from_numpy(images).float().permute(0, 3, 1, 2) / 255.0
        with torch.no_grad():
            latents = encoder(target)
        out = decoder(latents)
        loss = F.l1_loss(out, target) + F.mse_loss(out, target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step += 1
        if step % 20 == 0:
            print(f"decoder step {step}: loss {float(loss):.4f} "
                  f"({(time.monotonic() - started) / step:.2f} s/step)", flush=True)
    return {k: v.detach().clone() for k, v in decoder.state_dict().items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=8.0)
    parser.add_argument("--steps", type=int, default=0)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--out", type=Path, default=world_model.WEIGHTS_PATH,
                        help="the weights file to write the decoder into (its UNet is kept)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    state = train_decoder(args.minutes, args.steps, args.batch, args.lr, args.seed)
    record = {"minutes": args.minutes, "batch": args.batch, "lr": args.lr, "seed": args.seed}
    world_model.save_weights(args.out, decoder=state, metadata={"decoder": json.dumps(record)})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
