"""Does ``torch.compile`` pay for a demo training on this machine, compile time counted?

The issue's lever "compilation": each demo latent model's whole training step (forward, loss,
backward, AdamW at its demo batch, bf16 where its recipe uses it) timed eager and under
``torch.compile`` (inductor). Prints the compile time (the first steps), seconds per step after
it, and the break-even number of steps: a training shorter than that is slower compiled.

    python bench/compile_training.py [--steps 10] [--models class,latent_sr]
"""

from __future__ import annotations

import argparse
import time

import torch

from cxr_pipeline import kinds
from cxr_pipeline.kinds.vae import VAE_PROFILES
from cxr_pipeline.models.training import fixed_batch_step


def models():
    side = 64 // VAE_PROFILES["demo"].downsampling_factor
    yield "class", True, 1000, lambda: kinds.CLASS_DDPM.unet_profiles["demo"].config(side, 4, 4, num_class_embeds=7).build(), \
        lambda: (torch.randn(64, 4, side, side), torch.randint(0, 1000, (64,)), torch.randint(0, 7, (64,))), \
        lambda m, x, t, c: m(x, t, class_labels=c).sample
    yield "latent_sr", False, 400, lambda: kinds.LATENT_SR.unet_profiles["demo"].config(side, 8, 4).build(), \
        lambda: (torch.randn(64, 8, side, side), torch.randint(0, 1000, (64,))), lambda m, x, t: m(x, t).sample


def timed(build, make_inputs, forward, bf16: bool, compiled: bool, steps: int) -> tuple[float, float]:
    """(seconds of the first two steps, seconds per step after them)."""
    torch.manual_seed(0)
    step = fixed_batch_step(build().train(), make_inputs(), forward, bf16)

    if compiled:
        step = torch.compile(step)
    started = time.perf_counter()
    for _ in range(2):
        step()
    first = time.perf_counter() - started
    started = time.perf_counter()
    for _ in range(steps):
        step()
    return first, (time.perf_counter() - started) / steps


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--models", default="class,latent_sr")
    args = parser.parse_args()
    wanted = set(args.models.split(","))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'model':10s} {'eager s/step':>12s} {'compile s':>10s} {'compiled s/step':>16s} {'ratio':>6s} "
          f"{'break-even steps':>17s} {'recipe steps':>13s}")
    for name, bf16, recipe_steps, build, make_inputs, forward in models():
        if name not in wanted:
            continue
        eager_first, eager = timed(build, make_inputs, forward, bf16, False, args.steps)
        first, compiled = timed(build, make_inputs, forward, bf16, True, args.steps)
        overhead = first - 2 * compiled
        gain = eager - compiled
        even = f"{overhead / gain:.0f}" if gain > 0 else "never"
        print(f"{name:10s} {eager:12.3f} {overhead:10.1f} {compiled:16.3f} {eager / compiled:6.2f} {even:>17s} "
              f"{recipe_steps:13d}", flush=True)


if __name__ == "__main__":
    main()
