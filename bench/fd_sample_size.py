"""How fd_cxr and KID behave with the sample count: both sets real, so the true distance is ~0.

Draws two disjoint sets of real images (different patients' images mixed, all splits) of N each,
embeds them with the current CXR feature classifier and prints FD and KID by N, with the ratio
of each FD to the FD at the largest N. Fréchet distance is biased upward at small N (the
covariance estimate is noisy), KID is not: this is why evaluation reports the counts and a
real-vs-real reference beside every figure.

    python bench/fd_sample_size.py [--home work] [--repeats 5]

Needs a work folder where ``cxr_classifier`` has been materialized (``./run.sh demo``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from cxr_pipeline.data.image_store import ImageStore
from cxr_pipeline.metrics.distribution import (
    frechet_distance,
    kernel_inception_distance,
)
from cxr_pipeline.model_record import current_model
from cxr_pipeline.models.batches import StoreImages
from cxr_pipeline.models.classifier import embed, load_classifier
from cxr_pipeline.settings import WorkPaths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", default="work")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    paths = WorkPaths(Path(args.home).resolve())
    model, _ = load_classifier(current_model(paths, "classifier").model_dir, "cpu")
    metadata = pd.read_parquet(paths.metadata)
    images = StoreImages(ImageStore(paths.image_store), metadata).stack()
    features, _ = embed(model, images)
    largest = len(features) // 2
    sizes = [n for n in (16, 32, 64, 128, 256, 512) if n < largest] + [largest]
    rows = []
    for n in sizes:
        fds, kids = [], []
        for repeat in range(args.repeats):
            order = np.random.default_rng(repeat).permutation(len(features))
            first, second = features[order[:n]], features[order[n : 2 * n]]
            fds.append(frechet_distance(first, second))
            kids.append(kernel_inception_distance(first, second, seed=repeat)[0])
        rows.append(
            {"N": n, "FD mean": np.mean(fds), "FD std": np.std(fds), "KID mean": np.mean(kids), "KID std": np.std(kids)}
        )
    table = pd.DataFrame(rows)
    table["FD / FD at largest N"] = table["FD mean"] / table["FD mean"].iloc[-1]
    print(f"{len(features)} real images, {features.shape[1]}-d features, {args.repeats} repeats per N")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))


if __name__ == "__main__":
    main()
