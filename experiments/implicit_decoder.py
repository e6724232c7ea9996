"""The implicit (LIIF) decoder over the demo VAE, on val: render quality against bicubic.

For each scale s, val images are shrunk by s (antialiased), encoded by the frozen VAE and rendered
back at the original size by the implicit decoder, next to bicubic upsampling of the same shrunk
image. At s = 1 the untrained decoder is exactly the VAE's plain decode (the ceiling); above 1
it renders beyond its native grid, which is what training on scales in [1, 4] teaches. Prints
val PSNR per scale before and after training, and the training wall time.

Needs a work folder where ``vae`` and ``image_metadata`` are materialized.

    python experiments/implicit_decoder.py [--steps 600] [--batch 16] [--queries 1024]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import pandas as pd

from cxr_pipeline import kinds
from cxr_pipeline.data.image_store import ImageStore
from cxr_pipeline.model_record import current_model
from cxr_pipeline.models.batches import StoreImages
from cxr_pipeline.models.implicit import (
    ImplicitDecoder,
    evaluate_rendering,
    train_implicit_decoder,
)
from cxr_pipeline.models.training import TrainConfig
from cxr_pipeline.models.vae import load_vae
from cxr_pipeline.settings import WorkPaths, work_home

ROOT = Path(__file__).resolve().parents[1]

SCALES = (1.0, 2.0, 2.5, 3.0, 4.0, 6.0)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--home", default=str(work_home()), help="work folder (default: CXR_HOME, else ./work)")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--queries", type=int, default=1024)
    parser.add_argument("--val-images", type=int, default=64)
    args = parser.parse_args()
    paths = WorkPaths(Path(args.home))
    metadata = pd.read_parquet(paths.metadata)
    vae_dir = Path(current_model(paths, kinds.VAE.key).model_dir)
    val = StoreImages(
        ImageStore(paths.image_store), metadata[metadata["split"] == "val"].iloc[: args.val_images]
    ).stack()
    before = evaluate_rendering(ImplicitDecoder.from_vae(load_vae(vae_dir)), val, SCALES)
    config = TrainConfig(
        steps=args.steps,
        batch_size=args.batch,
        learning_rate=2e-3,
        warmup_steps=30,
        ema_decay=0.99,
        checkpoint_every=args.steps,
        eval_every=args.steps,
        log_every=50,
        device="cpu",
    )
    with tempfile.TemporaryDirectory() as runs:
        started = time.perf_counter()
        outcome = train_implicit_decoder(
            metadata,
            ImageStore(paths.image_store),
            vae_dir,
            config,
            Path(runs),
            "bench",
            query_points=args.queries,
            progress=lambda e: e.kind == "step" and print(e.describe(), flush=True),
        )
        seconds = time.perf_counter() - started
        after = evaluate_rendering(ImplicitDecoder.from_pretrained(outcome.model_dir), val, SCALES)
    rows = []
    for scale in SCALES:
        name = f"x{scale:g}".replace(".", "p")
        if scale == 1.0:  # nothing to upsample: the untrained column is the VAE's ceiling
            rows.append(
                {
                    "scale": scale,
                    "bicubic": "—",
                    "untrained (VAE decode, bilinear)": round(before[f"val_psnr_render_{name}"], 2),
                    f"trained ({args.steps} steps)": round(after[f"val_psnr_render_{name}"], 2),
                    "gain over bicubic": "—",
                }
            )
            continue
        rows.append(
            {
                "scale": scale,
                "bicubic": round(before[f"val_psnr_bicubic_{name}"], 2),
                "untrained (VAE decode, bilinear)": round(before[f"val_psnr_render_{name}"], 2),
                f"trained ({args.steps} steps)": round(after[f"val_psnr_render_{name}"], 2),
                "gain over bicubic": round(after[f"val_psnr_render_{name}"] - after[f"val_psnr_bicubic_{name}"], 2),
            }
        )
    print(f"training: {seconds:.0f} s for {args.steps} steps of {args.batch} images")
    print(pd.DataFrame(rows).to_markdown(index=False))


if __name__ == "__main__":
    main()
