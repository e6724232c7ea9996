"""Sampling time per image: DDIM at 25/50/100 steps against the full DDPM chain, on the same model
and batch, in one process. Uses the trained class-conditional model under CXR_HOME when there is
one (``./run.sh demo`` first), else a freshly initialized one of the demo size (same cost).

    python bench/sampling_speed.py [--batch 8] [--model PATH]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from cxr_pipeline.models.diffusion import ScheduleConfig, UNetConfig, sample
from cxr_pipeline.models.model_folder import load_model
from cxr_pipeline.settings import work_home


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--model", type=Path, default=None)
    args = parser.parse_args()
    home = work_home()
    folders = sorted((home / "models" / "class_ddpm").glob("*/model")) if args.model is None else [args.model]
    if folders:
        loaded = load_model(folders[-1])
        unet, schedule, source = loaded.unet, loaded.schedule, str(folders[-1])
    else:
        torch.manual_seed(0)
        unet = UNetConfig(64, 1, 1, (16, 32, 64), num_class_embeds=7, norm_num_groups=8).build().eval()
        schedule, source = ScheduleConfig(timesteps=1000), "untrained demo-size UNet"
    size = unet.config.sample_size
    labels = torch.arange(args.batch) % 6

    def per_image(sampler: str, steps: int) -> float:
        started = time.perf_counter()
        sample(
            unet,
            schedule,
            (args.batch, unet.config.in_channels, size, size),
            labels=labels,
            null_label=6,
            guidance=2.0,
            sampler=sampler,
            steps=steps,
            generator=torch.Generator().manual_seed(0),
        )
        return (time.perf_counter() - started) / args.batch

    print(f"model: {source}; batch {args.batch}; guidance 2.0 (two UNet passes per step); T={schedule.timesteps}")
    full = per_image("ddpm", schedule.timesteps)
    print(f"DDPM full chain ({schedule.timesteps} steps): {full:7.2f} s/image  (1.00x)")
    for steps in (25, 50, 100):
        seconds = per_image("ddim", steps)
        print(
            f"DDIM {steps:4d} steps:               {seconds:7.3f} s/image  ({seconds / full:.3f}x the full chain, {full / seconds:.1f}x faster)"
        )


if __name__ == "__main__":
    main()
