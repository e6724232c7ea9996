"""The regression baselines' recipes side by side, on **val** (never test: this is where the
evaluation's defaults were chosen). Each recipe trains on the demo's training pairs with the
checkpoint chosen on the first ``--val-images`` val images, and is scored on the *rest* of val, so
the choice of checkpoint does not flatter the score that picks the recipe.

Recipes are ``name=channels:blocks:steps:crop``, with ``:blind`` at the end for a denoiser not
told the dose; the defaults compare a wide network trained briefly with a narrower one trained
longer, at about the same CPU time.

    CXR_HOME=work python experiments/regression_recipe.py --task denoise
    CXR_HOME=work python experiments/regression_recipe.py --task sr --scale 4
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd
import torch

from cxr_pipeline.data.image_store import ImageStore
from cxr_pipeline.data.pairs import doses_built, low_dose_pair_dir, sr_pair_dir
from cxr_pipeline.evaluation.inputs import degraded_images, split_rows, stored_images
from cxr_pipeline.metrics.restoration import per_image_scores
from cxr_pipeline.models.regression import RegressionRecipe, restore, train_regression
from cxr_pipeline.settings import WorkPaths, work_home

DEFAULTS = {
    "denoise": "wide=48:6:600:32,narrow=32:6:1000:32,big_crops=48:6:400:48",
    "sr": "wide=48:6:1000:48,wider=64:6:700:48,narrow=32:6:1500:48",
}


def dose_level(photons: float) -> float:
    """What a dose-told network gets: ``log10(I0)``, a constant plane beside the image."""
    return float(np.log10(photons))


def pairs(paths: WorkPaths, task: str, scale: int, rows: pd.DataFrame):
    """(inputs, targets, conditions or None) for ``rows``; denoising stacks every dose."""
    clean = stored_images(ImageStore(paths.image_store), rows)
    if task == "sr":
        return degraded_images(sr_pair_dir(paths.pairs, scale), rows), clean, None
    doses = doses_built(paths.pairs)
    noisy = torch.cat([degraded_images(low_dose_pair_dir(paths.pairs, d), rows) for d in doses])
    levels = torch.cat([torch.full((len(rows),), dose_level(d)) for d in doses])
    return noisy, clean.repeat(len(doses), 1, 1, 1), levels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", choices=("denoise", "sr"), required=True)
    parser.add_argument("--scale", type=int, default=4)
    parser.add_argument("--recipes", default=None)
    parser.add_argument("--val-images", type=int, default=24, help="val images the checkpoint is chosen on")
    args = parser.parse_args()
    paths = WorkPaths(work_home())
    metadata = pd.read_parquet(paths.metadata)
    train, val = split_rows(metadata, "train", 2000), split_rows(metadata, "val")
    choose, score = val.iloc[: args.val_images], val.iloc[args.val_images :]
    x, y, c = pairs(paths, args.task, args.scale, train)
    xc, yc, cc = pairs(paths, args.task, args.scale, choose)
    xs, ys, cs = pairs(paths, args.task, args.scale, score)
    rows = []
    for spec in (args.recipes or DEFAULTS[args.task]).split(","):
        name, numbers = spec.split("=")
        parts = numbers.split(":")
        blind = parts[-1] == "blind"
        channels, blocks, steps, crop = (int(v) for v in parts[:4])
        recipe = RegressionRecipe(channels=channels, blocks=blocks, steps=steps, crop=crop)
        start = time.perf_counter()
        told = c is not None and not blind
        trained = train_regression(x, y, xc, yc, recipe, conditions=(c, cc) if told else None)
        seconds = time.perf_counter() - start
        scores = per_image_scores(restore(trained.model, xs, cs if told else None), ys)
        rows.append(
            {
                "recipe": name,
                "channels:blocks:steps:crop": numbers,
                "seconds": round(seconds),
                "best step": trained.best_step,
                "val PSNR (held-out val)": round(float(scores["psnr"].mean()), 3),
                "SSIM": round(float(scores["ssim"].mean()), 4),
                "detail": round(float(scores["detail"].mean()), 3),
            }
        )
        print(rows[-1], flush=True)
    print(pd.DataFrame(rows).to_markdown(index=False))


if __name__ == "__main__":
    main()
