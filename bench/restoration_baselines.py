"""What the stronger baselines cost, in one process on one work folder: the classical denoisers
(NLM on the image, the old baseline, against NLM on the stabilised counts) tuned on val and run
on test per dose, and the regression CNNs trained at the evaluation's defaults. Ratios are
against the old NLM path timed in the same process.

    CXR_HOME=work python bench/restoration_baselines.py [--threads 2]
"""

from __future__ import annotations

import argparse
import time

import pandas as pd
import torch

from cxr_pipeline.data.image_store import ImageStore
from cxr_pipeline.data.pairs import doses_built, low_dose_pair_dir, sr_pair_dir
from cxr_pipeline.evaluation.denoising import (
    denoising_baselines,
    detectors_of,
    nlm_denoise,
    tune_nlm,
)
from cxr_pipeline.evaluation.inputs import degraded_images, split_rows, stored_images
from cxr_pipeline.evaluation.suites import DenoisingOptions, SrOptions
from cxr_pipeline.models.regression import RegressionRecipe, train_regression
from cxr_pipeline.settings import WorkPaths, work_home


def timed(work, *args, **kwargs) -> float:
    start = time.perf_counter()
    work(*args, **kwargs)
    return time.perf_counter() - start


def old_nlm(val_clean, val_noisy, noisy, threads: int) -> None:
    nlm_denoise(noisy, tune_nlm(val_clean, val_noisy)[0], threads=threads)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    paths = WorkPaths(work_home())
    metadata = pd.read_parquet(paths.metadata)
    denoising, sr = DenoisingOptions(), SrOptions()
    store = ImageStore(paths.image_store)
    test, val = split_rows(metadata, "test"), split_rows(metadata, "val", denoising.val_images)
    val_clean = stored_images(store, val)
    rows = []
    old = new = 0.0
    for dose in doses_built(paths.pairs):
        directory = low_dose_pair_dir(paths.pairs, dose)
        index = pd.read_parquet(directory / "index.parquet").set_index("image_id")
        noisy, val_noisy = degraded_images(directory, test), degraded_images(directory, val)
        detectors = detectors_of(index.loc[test["image_id"]].reset_index())
        val_detectors = detectors_of(index.loc[val["image_id"]].reset_index())
        old += timed(old_nlm, val_clean, val_noisy, noisy, args.threads)
        new += timed(denoising_baselines, val_clean, val_noisy, val_detectors, noisy, detectors, dose)
    rows.append({"part": "NLM tuned on val, run on test (the old baseline), all doses", "seconds": old})
    rows.append({"part": "NLM + VST + NLM (the new classical baselines), all doses", "seconds": new})
    train, regression_val = split_rows(metadata, "train", sr.regression_train_images), split_rows(metadata, "val", 24)
    recipe = RegressionRecipe(steps=sr.regression_steps)
    seconds = timed(
        train_regression,
        degraded_images(sr_pair_dir(paths.pairs, 4), train),
        stored_images(store, train),
        degraded_images(sr_pair_dir(paths.pairs, 4), regression_val),
        stored_images(store, regression_val),
        recipe,
    )
    rows.append({"part": f"regression CNN, SR x4, {recipe.steps} steps", "seconds": seconds})
    doses = doses_built(paths.pairs)
    train = split_rows(metadata, "train", denoising.regression_train_images)
    recipe = RegressionRecipe(steps=denoising.regression_steps, crop=32)
    seconds = timed(
        train_regression,
        torch.cat([degraded_images(low_dose_pair_dir(paths.pairs, d), train) for d in doses]),
        stored_images(store, train).repeat(len(doses), 1, 1, 1),
        torch.cat([degraded_images(low_dose_pair_dir(paths.pairs, d), regression_val) for d in doses]),
        stored_images(store, regression_val).repeat(len(doses), 1, 1, 1),
        recipe,
    )
    rows.append({"part": f"regression CNN, denoising (all doses), {recipe.steps} steps", "seconds": seconds})
    table = pd.DataFrame(rows)
    table["x the old NLM path"] = table["seconds"] / old
    print(table.round(2).to_markdown(index=False))
    added = table["seconds"].sum() - old
    print(f"\nadded by this change: {added:.0f} s of {args.threads}-thread compute")


if __name__ == "__main__":
    main()
