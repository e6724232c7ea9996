"""How the arbitrary-scale model meets an output size off its latent grid, chosen on **val**.

For the work folder's current arbitrary-scale model, at each scale, on the first ``--val-images``
val images (cropped so the scale is exact, LR made as the evaluation makes it), each rendering
(``pad``: mirror the output-size canvas out to the grid and crop back; ``resize``: stretch the
field of view over the grid and resize the decode; ``implicit``: the same stretch, rendered by
the implicit decoder) against bicubic on the same inputs:

- PSNR and its gain over bicubic, SSIM, the fine-detail ratio (detail kept, 1 = the truth's);
- LR-consistency (the output brought back to the LR grid against the LR input, dB);
- the registration error against the truth (median over images of the larger of |dy|, |dx|,
  output px; :func:`cxr_pipeline.metrics.restoration.registration_shift`), bicubic's beside it.

On the grid the renderings are the same path, so only off-grid scales differ. Run it on each
demo's work folder (``CXR_DEMO=ct_slices`` for the CT one)::

    python experiments/arbitrary_sr_rendering.py [--home WORK] [--model FOLDER] [--val-images 48] [--steps 20]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from cxr_pipeline import kinds
from cxr_pipeline.data.degrade import DegradationMix, bicubic_to
from cxr_pipeline.data.image_store import ImageStore
from cxr_pipeline.data.pairs import scale_exact_pairs
from cxr_pipeline.evaluation.inputs import split_rows, stored_images
from cxr_pipeline.metrics.restoration import lr_consistency_psnr, per_image_scores, registration_shift
from cxr_pipeline.model_record import current_model
from cxr_pipeline.models.pipelines import ArbitraryScaleSuperResolution
from cxr_pipeline.settings import WorkPaths, work_home

SCALES = (2.0, 2.5, 3.0, 4.0, 6.0)
RENDERINGS = ("pad", "resize", "implicit")


def scores(name: str, scale: float, out: torch.Tensor, high: torch.Tensor, low: torch.Tensor) -> dict:
    table = per_image_scores(out, high)
    shifts = [np.abs(registration_shift(o[0].numpy(), h[0].numpy(), scale)).max() for o, h in zip(out, high)]
    return {
        "scale": scale,
        "method": name,
        "psnr": table["psnr"].mean(),
        "ssim": table["ssim"].mean(),
        "detail": table["detail"].mean(),
        "lr_consistency": float(np.mean(lr_consistency_psnr(out, low))),
        "registration_px": float(np.median(shifts)),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--home", default=str(work_home()), help="work folder (default: CXR_HOME, else ./work)")
    parser.add_argument("--val-images", type=int, default=48)
    parser.add_argument("--steps", type=int, default=20, help="DDIM steps (the evaluation's default)")
    parser.add_argument("--model", default=None, help="a model folder (default: the work folder's current one)")
    args = parser.parse_args()
    paths = WorkPaths(Path(args.home))
    rows = split_rows(pd.read_parquet(paths.metadata), "val", args.val_images)
    images = stored_images(ImageStore(paths.image_store), rows)
    inputs = scale_exact_pairs(images, rows["image_id"].astype(str), SCALES, DegradationMix(), 0)
    folder = args.model or current_model(paths, kinds.ARBITRARY_SR.key).model_dir
    model = ArbitraryScaleSuperResolution.from_pretrained(folder, "cpu")
    found = []
    for scale, (high, low) in inputs.items():
        bicubic = torch.from_numpy(np.stack([bicubic_to(x[0].numpy(), tuple(high.shape[-2:])) for x in low])).unsqueeze(
            1
        )
        found.append(scores("bicubic", scale, bicubic, high, low))
        for rendering in RENDERINGS if float(high.shape[-1]) % model.factor else ("pad",):
            model.rendering = rendering
            started = time.perf_counter()
            out = model(low, scale=scale, num_inference_steps=args.steps, generator=0)
            found.append({**scores(rendering, scale, out, high, low), "seconds": time.perf_counter() - started})
    table = pd.DataFrame(found)
    bicubic = table[table["method"] == "bicubic"].set_index("scale")["psnr"]
    table["gain_over_bicubic"] = table["psnr"] - table["scale"].map(bicubic)
    print(f"{len(rows)} val images, {args.steps} DDIM steps, {folder}")
    print(table.round(3).to_markdown(index=False))


if __name__ == "__main__":
    main()
