"""Zoom beyond the training size: does the arbitrary-scale model enlarge the anatomy, or paint a
texture? Measured on **val** images of a work folder with a trained ``arbitrary_sr`` model.

Each val image (at the model's training size) is zoomed x1..x4 by the model (the app's former
Generate/Restore zoom: output sides above the training images'), and bicubic beside it. For each
set it prints the strongest narrow spectral peak above its ring (``metrics/periodic.py``): its
height in dB and its period in output pixels. Enlarged anatomy moves its texture to a period s
times longer at zoom s; a texture painted per pixel keeps the same period in output pixels at
every zoom. Writes a PNG of the first images at each zoom for looking at.

    python experiments/zoom_artifacts.py [--home work] [--images 6] [--steps 10] [--out /tmp/zoom.png]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd
import torch
from PIL import Image
from skimage.transform import resize

from cxr_pipeline.data.degrade import bicubic_to
from cxr_pipeline.data.image_store import ImageStore
from cxr_pipeline.metrics.periodic import strongest_peak
from cxr_pipeline.model_record import current_model
from cxr_pipeline.models.pipelines import ArbitraryScaleSuperResolution
from cxr_pipeline.settings import WorkPaths, work_home


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--home", default=None)
    parser.add_argument("--images", type=int, default=6)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--out", default="zoom_artifacts.png")
    args = parser.parse_args()
    paths = WorkPaths(work_home(args.home))
    record = current_model(paths, "arbitrary_sr")
    model = ArbitraryScaleSuperResolution.from_pretrained(record.model_dir, "auto")
    rows = pd.read_parquet(paths.metadata)
    rows = rows[rows["split"] == "val"].head(args.images)
    images = np.stack(
        ImageStore(paths.image_store).read_many(rows["shard"].tolist(), rows["shard_index"].astype(int).tolist())
    ).astype(np.float32)
    print(f"{record.label}, {len(images)} val images at {images.shape[-1]} px, DDIM {args.steps}")
    table, strips = [], []
    for zoom in (1, 2, 3, 4):
        side = images.shape[-1] * zoom
        started = time.perf_counter()
        zoomed = (
            images
            if zoom == 1
            else model(torch.from_numpy(images)[:, None], scale=zoom, num_inference_steps=args.steps, generator=0)[:, 0]
            .float()
            .cpu()
            .numpy()
        )
        seconds = time.perf_counter() - started
        bicubic = np.stack([bicubic_to(image, (side, side)) for image in images])
        model_peak, bicubic_peak = strongest_peak(zoomed), strongest_peak(bicubic)
        table.append(
            {
                "zoom": f"x{zoom}",
                "output px": side,
                "model peak dB": round(model_peak.db, 1),
                "model period px": round(model_peak.period_px, 2),
                "bicubic peak dB": round(bicubic_peak.db, 1),
                "bicubic period px": round(bicubic_peak.period_px, 2),
                "seconds": round(seconds, 1),
            }
        )
        shown = images.shape[-1] * 4  # every zoom shown at the x4 size (nearest), so periods compare by eye
        strips.append(np.concatenate([resize(z, (shown, shown), order=0) for z in zoomed[:3]], axis=1))
    print(pd.DataFrame(table).to_markdown(index=False))
    Image.fromarray((np.clip(np.concatenate(strips, axis=0), 0, 1) * 255).astype(np.uint8)).save(args.out)
    print(f"images (rows x1..x4, each shown at the x4 size): {args.out}")


if __name__ == "__main__":
    main()
