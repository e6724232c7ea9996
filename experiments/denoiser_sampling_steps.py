"""How many DDIM steps does the trained low-dose denoiser need? Val PSNR and sampling time.

The denoising evaluation spends its time sampling: the strength search on val, the test images and
the extra seeds of the spread guard, all with ``ddim_steps`` DDIM steps over the chosen share of T.
The denoiser predicts x0 of a residual, so a coarse chain may lose nothing. For each step count,
the strength search on the same val images as the evaluation (never test): the best val PSNR per
dose, the strength it picks, and the wall time of the search, against 50 steps in this process.

Needs a work folder where ``low_dose_denoiser`` and ``low_dose_pairs`` are materialized.

    python experiments/denoiser_sampling_steps.py [--steps 50,20,10] [--val-images 24]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd

from cxr_pipeline import kinds
from cxr_pipeline.data.image_store import ImageStore
from cxr_pipeline.data.pairs import doses_built, low_dose_pair_dir
from cxr_pipeline.evaluation.denoising import DENOISER_STRENGTHS, tune_denoiser_strength
from cxr_pipeline.evaluation.inputs import degraded_images, split_rows, stored_images
from cxr_pipeline.model_record import current_model
from cxr_pipeline.models.pipelines import LowDoseDenoiser
from cxr_pipeline.settings import WorkPaths, work_home

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--home", default=str(work_home()), help="work folder (default: CXR_HOME, else ./work)")
    parser.add_argument("--steps", default="50,20,10")
    parser.add_argument("--val-images", type=int, default=24)
    args = parser.parse_args()
    paths = WorkPaths(Path(args.home))
    model = LowDoseDenoiser.from_pretrained(current_model(paths, kinds.DENOISER.key).model_dir, "cpu")
    val = split_rows(pd.read_parquet(paths.metadata), "val", args.val_images)
    clean = stored_images(ImageStore(paths.image_store), val)
    noisy = {dose: degraded_images(low_dose_pair_dir(paths.pairs, dose), val) for dose in doses_built(paths.pairs)}
    rows, reference = [], None
    for steps in [int(s) for s in args.steps.split(",")]:
        started = time.perf_counter()
        found = {
            dose: tune_denoiser_strength(model, clean, images, dose, DENOISER_STRENGTHS, steps)
            for dose, images in noisy.items()
        }
        seconds = time.perf_counter() - started
        reference = reference or seconds
        for dose, (strength, search) in found.items():
            rows.append(
                {
                    "DDIM steps": steps,
                    "I0": dose,
                    "best val PSNR": round(float(search["val PSNR"].max()), 2),
                    "strength": strength,
                    "search s": round(seconds, 1),
                    "time vs first": round(seconds / reference, 2),
                }
            )
            print(rows[-1], flush=True)
    print(pd.DataFrame(rows).to_markdown(index=False))


if __name__ == "__main__":
    main()
