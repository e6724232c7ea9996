"""Autoencoder recipes side by side: reconstruction PSNR / SSIM and fine detail (the detail ratio
of metrics/detail.py: 1.0 keeps the real images' fine anatomy) on **val** (the latent models'
ceiling) against training wall time, trained in this process on the demo's train split.

- ``old``: the recipe before the 32 px windows, 300 steps of 16 whole 64 px images;
- ``crop32``: random 32 px windows (a quarter of the cost per image), ``--steps`` of ``--batch``,
  on the profile's architecture;
- architectures, all on the ``crop32`` recipe: ``d4`` (the old grid: (16, 32, 64), 16x16x4 latents
  at 64 px, self-attention at the latent grid), ``d4c16`` (16 latent channels, same grid),
  ``d4wide`` (twice the widths, same grid: more capacity), ``d2`` (a latent grid twice as fine:
  two blocks, one downsampling), ``d2wide`` (the same with the widths doubled), ``d2flat`` (``d2``
  without the self-attention at the latent grid, whose cost grows with the square of its positions),
  ``d4flat`` (the old grid without it: what the attention alone changes).

Needs a work folder where ``image_metadata`` is materialized.

    python experiments/vae_recipe.py --recipes old,crop32 [--steps 1200] [--batch 32]

A recipe name ending in ``+bf16`` trains the same recipe under CPU bf16 autocast (TrainConfig.cpu_bf16).
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import pandas as pd

from cxr_pipeline.data.image_store import ImageStore
from cxr_pipeline.kinds.vae import VAE_PROFILES
from cxr_pipeline.models.training import TrainConfig
from cxr_pipeline.models.vae import VaeConfig, train_vae
from cxr_pipeline.settings import WorkPaths, work_home

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--home", default=str(work_home()), help="work folder (default: CXR_HOME, else ./work)")
    parser.add_argument("--recipes", default="old,crop32")
    parser.add_argument("--steps", type=int, default=1200)
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()
    paths = WorkPaths(Path(args.home))
    metadata = pd.read_parquet(paths.metadata)
    store = ImageStore(paths.image_store)
    recipes = {
        "old": (TrainConfig(steps=300, batch_size=16, learning_rate=2e-3, warmup_steps=30, ema_decay=0.995), None),
        "crop32": (
            TrainConfig(steps=args.steps, batch_size=args.batch, learning_rate=2e-3, warmup_steps=30, ema_decay=0.995),
            32,
        ),
    }
    base = VaeConfig()  # the grid before the fine one: (16, 32, 64), /4, self-attention at the latent grid
    architectures = {
        "d4": base,
        "d4c16": dataclasses.replace(base, latent_channels=16),
        "d4wide": dataclasses.replace(base, block_out_channels=tuple(2 * c for c in base.block_out_channels)),
        "d2": dataclasses.replace(base, block_out_channels=base.block_out_channels[:2]),
        "d2wide": dataclasses.replace(base, block_out_channels=tuple(2 * c for c in base.block_out_channels[:2])),
        "d2flat": dataclasses.replace(base, block_out_channels=base.block_out_channels[:2], mid_attention=False),
        "d4flat": dataclasses.replace(base, mid_attention=False),
    }
    rows = []
    for name in args.recipes.split(","):
        key = name.removesuffix("+bf16")
        vae_config = architectures.get(key, VAE_PROFILES["demo"])
        train, crop = recipes["crop32" if key in architectures else key]
        train = TrainConfig(
            **{
                **train.__dict__,
                "eval_every": train.steps,
                "checkpoint_every": train.steps,
                "log_every": 100,
                "device": "cpu",
                "cpu_bf16": name.endswith("+bf16"),
            }
        )
        with tempfile.TemporaryDirectory() as runs:
            started = time.perf_counter()
            outcome = train_vae(
                metadata,
                store,
                Path(runs),
                vae_config,
                train,
                "bench",
                crop=crop,
                progress=lambda e, name=name: e.kind == "step" and print(f"{name}: {e.describe()}", flush=True),
            )
            rows.append(
                {
                    "recipe": name,
                    "latents": f"/{vae_config.downsampling_factor} x{vae_config.latent_channels}",
                    "steps": train.steps,
                    "batch": train.batch_size,
                    "crop": crop or "whole",
                    "train s": round(time.perf_counter() - started),
                    "val PSNR": round(outcome.metrics["val_psnr"], 2),
                    "val SSIM": round(outcome.metrics["val_ssim"], 4),
                    "val detail": round(outcome.metrics["val_detail"], 3),
                }
            )
            print(rows[-1], flush=True)
    print(pd.DataFrame(rows).to_markdown(index=False))


if __name__ == "__main__":
    main()
