"""What a latent grid twice as fine costs the latent models: seconds per training step (forward
and backward, batch 64, this machine's threads) of each latent kind's demo UNet on the old
16x16x4 latents against the candidates for 32x32x4 ones:

- ``same UNet``: the old widths on the finer grid (4x the positions at every level);
- ``downsample first``: one narrow level (16 wide, or 8) added in front, at the new grid, so every
  old level keeps its resolution and width (what the demo profiles use now);
- ``patches of 2``: the finer latents folded 2x2 into channels (16x16x16), the old UNet's cost.

    python bench/latent_unet_cost.py [--batch 64] [--repeats 5]
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

import pandas as pd
import torch

from cxr_pipeline.models.diffusion import UNetProfile


def step_seconds(
    profile: UNetProfile,
    size: int,
    channels: int,
    condition: int,
    batch: int,
    repeats: int,
    num_class_embeds: int | None = None,
    cross_attention_dim: int | None = None,
) -> float:
    unet = profile.config(
        size, channels + condition, channels, num_class_embeds, cross_attention_dim=cross_attention_dim
    ).build()
    optimizer = torch.optim.AdamW(unet.parameters(), lr=1e-4)
    x = torch.randn(batch, channels + condition, size, size)
    t = torch.randint(0, 1000, (batch,))
    kwargs = {}
    if num_class_embeds:
        kwargs["class_labels"] = torch.randint(0, num_class_embeds, (batch,))
    if cross_attention_dim:
        hidden = torch.randn(batch, 24, cross_attention_dim)
        kwargs = {"encoder_hidden_states": hidden, "class_labels": hidden.mean(1)}
    times = []
    for _ in range(repeats + 1):
        started = time.perf_counter()
        loss = unet(x, t, **kwargs).sample.pow(2).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        times.append(time.perf_counter() - started)
    return min(times[1:])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    kinds = {  # old profile, its "downsample first" counterpart, conditioning channels, extras
        "latent_sr / arbitrary_sr": (UNetProfile((32, 64), 8, True), UNetProfile((16, 32, 64), 8, True), True, {}),
        "class_ddpm": (
            UNetProfile((32, 64, 64), 8, True, 2),
            UNetProfile((16, 32, 64, 64), 8, True, 2),
            False,
            {"num_class_embeds": 6},
        ),
        "text_ldm": (
            UNetProfile((32, 64, 64), 8, True, 2, 2),
            UNetProfile((16, 32, 64, 64), 8, True, 2, 2),
            False,
            {"cross_attention_dim": 128},
        ),
    }
    rows = []
    for name, (old, first, conditioned, extra) in kinds.items():

        def cost(profile, size, channels, conditioned=conditioned, extra=extra):
            return step_seconds(
                profile, size, channels, channels if conditioned else 0, args.batch, args.repeats, **extra
            )

        base = cost(old, 16, 4)
        narrow = replace(first, block_out_channels=(8, *first.block_out_channels[1:]))
        for label, seconds in [
            ("old: 16x16x4", base),
            ("same UNet, 32x32x4", cost(old, 32, 4)),
            ("downsample first, 32x32x4", cost(first, 32, 4)),
            ("downsample first at 8 wide, 32x32x4", cost(narrow, 32, 4)),
            ("patches of 2, 16x16x16", cost(old, 16, 16)),
        ]:
            rows.append(
                {
                    "kind": name,
                    "latents / UNet": label,
                    "s per step": round(seconds, 3),
                    "x old": round(seconds / base, 2),
                }
            )
            print(rows[-1], flush=True)
    print(pd.DataFrame(rows).to_markdown(index=False))


if __name__ == "__main__":
    main()
