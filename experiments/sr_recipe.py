"""Latent super-resolution recipes side by side, trained on the demo's train split and scored on
**val** (never test: this is where recipes and the sampling start are chosen), beside bicubic,
bicubic through the VAE and the VAE ceiling on the same images.

Recipes:
- ``old``: the recipe before the change (epsilon prediction, T = 300, 200 x 16 at 5e-4);
- ``x0``: the UNet predicts the clean latent (min-SNR-5), 1000 x 64 at 2e-3;
- ``x0_residual``: the default now: the clean-latent target with plain (flat) weighting, diffusing
  the correction from the bicubic latent;
- ``v``: the class model's objective (v-prediction, min-SNR-5) on the same budget;
- ``regression``: the same UNet trained as a plain L2 regression (bicubic latent -> HR latent,
  no diffusion) on the same budget: what the sampling buys, or costs, in PSNR.

A recipe name ending in ``+fp32`` trains the same recipe without CPU bf16 autocast (the kind's
recipe uses it on CPUs that have it).

Needs a work folder where ``latents`` and ``sr_pairs`` are materialized.

    python experiments/sr_recipe.py --recipes old,x0_residual,regression [--steps 1000] [--strengths 1,0.5,0.3]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from cxr_pipeline import kinds
from cxr_pipeline.data.degrade import upsample_bicubic
from cxr_pipeline.data.image_store import ImageStore
from cxr_pipeline.data.pairs import sr_pair_dir
from cxr_pipeline.metrics.restoration import lr_consistency_psnr, per_image_scores
from cxr_pipeline.model_record import current_model
from cxr_pipeline.models import diffusion_training as dt
from cxr_pipeline.models.batches import EpochSampler, StoreImages
from cxr_pipeline.models.diffusion import UNetConfig
from cxr_pipeline.models.pipelines import LatentSuperResolution
from cxr_pipeline.models.training import TrainConfig, Trainer
from cxr_pipeline.models.vae import encode_mean, from_model, load_vae, reconstruct
from cxr_pipeline.settings import WorkPaths, work_home

ROOT = Path(__file__).resolve().parents[1]

# Variants of the kind's own recipe (kinds.LATENT_SR.recipe, what the asset trains), on a longer
# budget; "regression" trains the same UNet without diffusion.
DEFAULT = kinds.LATENT_SR.recipe(steps=1000)
RECIPES = {
    "old": replace(
        DEFAULT,
        prediction_type="epsilon",
        timesteps=300,
        residual=False,
        steps=200,
        batch_size=16,
        learning_rate=5e-4,
        warmup_steps=30,
        ema_decay=0.995,
    ),
    "x0": replace(DEFAULT, snr_gamma=5.0, residual=False),
    "x0_residual": DEFAULT,
    "v": replace(DEFAULT, prediction_type="v_prediction", snr_gamma=5.0, residual=False),
    "regression": DEFAULT,
}


def unet(latent_shape: list[int]) -> UNetConfig:
    return kinds.LATENT_SR.unet("demo", latent_shape[-1], 2 * latent_shape[0], latent_shape[0])


def train_regression(hr: torch.Tensor, lr: torch.Tensor, train: TrainConfig, runs: Path) -> torch.nn.Module:
    unet = kinds.LATENT_SR.unet("demo", hr.shape[-1], lr.shape[1], hr.shape[1]).build()
    sampler = EpochSampler(len(hr), train.batch_size, train.seed)

    def step(model, batch, generator):
        zero = torch.zeros(len(batch["target"]), dtype=torch.long)
        return ((model(batch["condition"], zero).sample.float() - batch["target"]) ** 2).mean(), {}

    batches = lambda s: {"target": hr[sampler.indices(s)], "condition": lr[sampler.indices(s)]}
    trainer = Trainer(unet, step, batches, train, runs / "regression", batch_size_of=lambda b: len(b["target"]))
    return trainer.fit().ema_model.eval()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--home", default=str(work_home()), help="work folder (default: CXR_HOME, else ./work)")
    parser.add_argument("--recipes", default="old,x0_residual,regression")
    parser.add_argument("--scale", type=int, default=4)
    parser.add_argument("--steps", type=int, default=None, help="override the new recipes' steps")
    parser.add_argument("--strengths", default="1,0.5,0.3", help="sampling starts: 1 = from noise")
    parser.add_argument("--ddim-steps", type=int, default=50)
    args = parser.parse_args()
    paths = WorkPaths(Path(args.home))
    metadata = pd.read_parquet(paths.metadata)
    vae_dir = Path(current_model(paths, "vae").model_dir)
    vae = load_vae(vae_dir)
    factor = dt.latent_scaling_factor(paths.latents)
    val = metadata[metadata["split"] == "val"].reset_index(drop=True)
    high = StoreImages(ImageStore(paths.image_store), val).stack()
    pair_dir = sr_pair_dir(paths.pairs, args.scale)
    index = pd.read_parquet(pair_dir / "index.parquet").set_index("image_id").loc[val["image_id"]].reset_index()
    low = StoreImages(ImageStore(pair_dir), index).stack()
    bicubic = torch.from_numpy(np.stack([upsample_bicubic(x[0].numpy(), args.scale) for x in low])).unsqueeze(1)

    table = []

    def score(name: str, images: torch.Tensor, train_s: float = 0, setting: str = "") -> None:
        scores = per_image_scores(images, high)
        table.append(
            {
                "recipe": name,
                "setting": setting,
                "train s": round(train_s),
                "val PSNR": round(float(scores["psnr"].mean()), 2),
                "val SSIM": round(float(scores["ssim"].mean()), 4),
                "LR-consistency": round(float(np.mean(lr_consistency_psnr(images, low))), 2),
            }
        )
        print(table[-1], flush=True)

    score("bicubic", bicubic)
    score("bicubic -> VAE", torch.cat([reconstruct(vae, b) for b in bicubic.split(64)]))
    score("VAE ceiling", torch.cat([reconstruct(vae, b) for b in high.split(64)]))
    for name in args.recipes.split(","):
        recipe = RECIPES[name.removesuffix("+fp32")]
        if name.endswith("+fp32"):
            recipe = replace(recipe, cpu_bf16=False)
        if args.steps and name != "old":
            recipe = replace(recipe, steps=args.steps)
        train = replace(
            recipe.train_config(), eval_every=recipe.steps, checkpoint_every=recipe.steps, log_every=100, device="cpu"
        )
        with tempfile.TemporaryDirectory() as runs:
            started = time.perf_counter()
            if name.startswith("regression"):
                hr = dt.scaled_latents(paths.latents, "hr", "train")
                lr = dt.scaled_latents(paths.latents, f"lr_x{args.scale}", "train")
                model = train_regression(hr, lr, train, Path(runs))
                train_s = time.perf_counter() - started
                with torch.no_grad():
                    condition = torch.cat([encode_mean(vae, b) for b in bicubic.split(64)]) * factor
                    out = model(condition, torch.zeros(len(condition), dtype=torch.long)).sample
                    images = from_model(vae.decode(out / factor).sample)
                score(name, images, train_s)
                continue
            shape = json.loads((paths.latents / "latents.json").read_text())["latent_shape"]
            outcome = dt.train_latent_sr(
                paths.latents,
                args.scale,
                vae_dir,
                unet(shape),
                recipe.schedule(),
                train,
                Path(runs),
                "bench",
                residual=recipe.residual,
                progress=lambda e, name=name: e.kind == "step" and print(f"{name}: {e.describe()}", flush=True),
            )
            train_s = time.perf_counter() - started
            for strength in [float(s) for s in args.strengths.split(",")]:
                images = LatentSuperResolution.from_pretrained(outcome.model_dir, "cpu")(
                    low, num_inference_steps=args.ddim_steps, strength=strength
                )
                score(name, images, train_s, f"DDIM {args.ddim_steps}, strength {strength:g}")
    print(pd.DataFrame(table).to_markdown(index=False))


if __name__ == "__main__":
    main()
