"""Low-dose denoising recipes side by side, trained on the demo's train split and scored on **val**
(never test: this is where recipes are chosen), against non-local means tuned on the same val
images (so the baseline gets at least the tuning the model gets).

Recipes:
- ``old``: the recipe before the change (epsilon prediction, whole 64 px images, 200 x 16);
- ``x0_crop``: the UNet predicts the clean image (min-SNR-5) on random 32 px windows;
- ``x0_residual``: the default now: the same, diffusing the correction from the low-dose image;
- ``regression``: the same UNet trained as a plain L2 regression (noisy -> clean, no diffusion) on
  the same budget, the honest extra baseline: what the sampling buys, or costs, in PSNR.

Needs a work folder where ``low_dose_pairs`` is materialized.

    python experiments/denoiser_recipe.py --recipes old,x0_residual,regression [--steps 1500]

A recipe name ending in ``+bf16`` trains the same recipe under CPU bf16 autocast (TrainConfig.cpu_bf16).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import pandas as pd
import torch

from cxr_pipeline.data.image_store import ImageStore
from cxr_pipeline.data.pairs import doses_built, low_dose_pair_dir
from cxr_pipeline.evaluation.denoising import nlm_denoise, tune_denoiser_strength, tune_nlm
from cxr_pipeline.metrics.restoration import per_image_scores
from cxr_pipeline.models import diffusion_training as dt
from cxr_pipeline.models.batches import EpochSampler, StoreImages
from cxr_pipeline.models.diffusion import ScheduleConfig, UNetConfig
from cxr_pipeline.models.pipelines import LowDoseDenoiser
from cxr_pipeline.models.training import TrainConfig, Trainer
from cxr_pipeline.models.vae import from_model, to_model
from cxr_pipeline.settings import WorkPaths, work_home

ROOT = Path(__file__).resolve().parents[1]

WIDTHS = (16, 32, 64)
NEW_TRAIN = TrainConfig(steps=1500, batch_size=32, learning_rate=2e-3, warmup_steps=50, ema_decay=0.99)
X0 = ScheduleConfig(1000, "squaredcos_cap_v2", prediction_type="sample", snr_gamma=5.0)
# name -> (schedule, train config, crop, residual); "regression" reuses the new recipe's budget and crop.
RECIPES = {
    "old": (
        ScheduleConfig(1000, "squaredcos_cap_v2"),
        TrainConfig(steps=200, batch_size=16, learning_rate=5e-4, warmup_steps=30, ema_decay=0.995),
        None,
        False,
    ),
    "x0_crop": (X0, NEW_TRAIN, 32, False),
    "x0_residual": (X0, NEW_TRAIN, 32, True),
    "x0_residual_flat": (replace(X0, snr_gamma=None), NEW_TRAIN, 32, True),
    "v_residual": (
        ScheduleConfig(1000, "squaredcos_cap_v2", prediction_type="v_prediction", snr_gamma=5.0),
        NEW_TRAIN,
        32,
        True,
    ),
    "regression": (None, NEW_TRAIN, 32, False),
}
STRENGTHS = (0.05, 0.1, 0.2, 0.4, 0.7, 1.0)


def train_regression(
    rows: pd.DataFrame,
    clean: StoreImages,
    noisy: list[StoreImages],
    doses: list[float],
    train: TrainConfig,
    crop: int,
    runs: Path,
) -> torch.nn.Module:
    """The same UNet, dose-conditioned the same way, mapping the noisy image to the clean one at t = 0."""
    unet = UNetConfig(64, 1, 1, WIDTHS, 1, num_class_embeds=len(doses) + 1, norm_num_groups=8).build()
    sampler = EpochSampler(len(rows) * len(doses), train.batch_size, train.seed)

    def batches(step: int) -> dict:
        return dt.low_dose_batch(clean, noisy, sampler.indices(step), crop, train.seed, step)

    def step(model, batch, generator):
        zero = torch.zeros(len(batch["target"]), dtype=torch.long)
        out = model(batch["condition"], zero, class_labels=batch["labels"]).sample
        return ((out.float() - batch["target"]) ** 2).mean(), {}

    trainer = Trainer(unet, step, batches, train, runs / "regression", batch_size_of=lambda b: len(b["target"]))
    return trainer.fit().ema_model.eval()


@torch.no_grad()
def regress(model: torch.nn.Module, noisy: torch.Tensor, label: int) -> torch.Tensor:
    zero = torch.zeros(len(noisy), dtype=torch.long)
    return from_model(model(to_model(noisy), zero, class_labels=torch.full((len(noisy),), label)).sample.float())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--home", default=str(work_home()), help="work folder (default: CXR_HOME, else ./work)")
    parser.add_argument("--recipes", default="old,x0_residual,regression")
    parser.add_argument("--steps", type=int, default=None, help="override the new recipes' steps")
    parser.add_argument("--val-images", type=int, default=48)
    parser.add_argument("--ddim-steps", type=int, default=50)
    args = parser.parse_args()
    paths = WorkPaths(Path(args.home))
    metadata = pd.read_parquet(paths.metadata)
    store = ImageStore(paths.image_store)
    doses = doses_built(paths.pairs)
    rows = metadata[metadata["split"] == "train"].reset_index(drop=True)
    val = metadata[metadata["split"] == "val"].reset_index(drop=True).iloc[: args.val_images]
    clean, val_clean = StoreImages(store, rows), StoreImages(store, val).stack()
    dose_stores, noisy, val_noisy = {}, [], {}
    for dose in doses:
        folder = low_dose_pair_dir(paths.pairs, dose)
        index = pd.read_parquet(folder / "index.parquet").set_index("image_id")
        dose_stores[dose] = (ImageStore(folder), index.reset_index())
        noisy.append(StoreImages(ImageStore(folder), index.loc[rows["image_id"]].reset_index()))
        val_noisy[dose] = StoreImages(ImageStore(folder), index.loc[val["image_id"]].reset_index()).stack()

    table = []
    for dose in doses:
        factor, _ = tune_nlm(val_clean, val_noisy[dose])
        for name, images in (
            ("noisy input", val_noisy[dose]),
            (f"NLM (h = {factor:g} sigma)", nlm_denoise(val_noisy[dose], factor)),
        ):
            scores = per_image_scores(images, val_clean)
            table.append(
                {
                    "recipe": name,
                    "I0": dose,
                    "train s": 0,
                    "val PSNR": round(float(scores["psnr"].mean()), 2),
                    "val SSIM": round(float(scores["ssim"].mean()), 4),
                    "setting": "",
                }
            )
            print(table[-1], flush=True)
    for name in args.recipes.split(","):
        schedule, train, crop, residual = RECIPES[name.removesuffix("+bf16")]
        if args.steps and name != "old":
            train = replace(train, steps=args.steps)
        train = replace(
            train,
            checkpoint_every=train.steps,
            eval_every=train.steps,
            log_every=100,
            device="cpu",
            cpu_bf16=name.endswith("+bf16"),
        )
        with tempfile.TemporaryDirectory() as runs:
            started = time.perf_counter()
            if schedule is None:
                model = train_regression(rows, clean, noisy, doses, train, crop, Path(runs))
                train_s = time.perf_counter() - started
                for i, dose in enumerate(doses):
                    scores = per_image_scores(regress(model, val_noisy[dose], i), val_clean)
                    table.append(
                        {
                            "recipe": name,
                            "I0": dose,
                            "train s": round(train_s),
                            "steps": train.steps,
                            "val PSNR": round(float(scores["psnr"].mean()), 2),
                            "val SSIM": round(float(scores["ssim"].mean()), 4),
                            "setting": "",
                        }
                    )
                    print(table[-1], flush=True)
                continue
            unet = UNetConfig(64, 2, 1, WIDTHS, 1, num_class_embeds=len(doses) + 1, norm_num_groups=8)
            outcome = dt.train_denoiser(
                metadata,
                store,
                dose_stores,
                unet,
                schedule,
                train,
                Path(runs),
                "bench",
                crop=crop,
                residual=residual,
                progress=lambda e, name=name: e.kind == "step" and print(f"{name}: {e.describe()}", flush=True),
            )
            train_s = time.perf_counter() - started
            for dose in doses:
                denoiser = LowDoseDenoiser.from_pretrained(outcome.model_dir, "cpu")
                strength, search = tune_denoiser_strength(
                    denoiser, val_clean, val_noisy[dose], dose, STRENGTHS, args.ddim_steps
                )
                best = search.loc[search["val PSNR"].idxmax()]
                restored = denoiser(val_noisy[dose], dose=dose, strength=strength, num_inference_steps=args.ddim_steps)
                scores = per_image_scores(restored, val_clean)
                table.append(
                    {
                        "recipe": name,
                        "I0": dose,
                        "train s": round(train_s),
                        "steps": train.steps,
                        "val PSNR": round(float(best["val PSNR"]), 2),
                        "val SSIM": round(float(scores["ssim"].mean()), 4),
                        "setting": f"strength {strength:g}",
                    }
                )
                print(table[-1], flush=True)
    print(pd.DataFrame(table).to_markdown(index=False))


if __name__ == "__main__":
    main()
