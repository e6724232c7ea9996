"""The augmentation experiment's settings, measured on **val** (never test: this is where the demo
profile's classifier size, steps, seeds and the synthetic ratio are chosen), with the wall time of
each stage.

Needs a work folder where ``class_ddpm`` and ``text_ldm`` are materialized (``./run.sh demo``).
The generated pool is built (or reused) under ``<home>/models/synthetic_utility/pools``; each
configuration then trains every arm and seed in a temporary folder and scores it on the val
split's single-label images, with the same paired patient-and-seed intervals the asset reports
on test.

    python experiments/synthetic_utility.py --configs demo,wide [--arms real,real_synthetic,synthetic,real_balanced]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from cxr_pipeline.data.image_store import ImageStore
from cxr_pipeline.data.labels.metadata import content_hash
from cxr_pipeline.evaluation import synthetic_utility as su
from cxr_pipeline.model_record import current_model
from cxr_pipeline.models.batches import StoreImages
from cxr_pipeline.models.classifier import ClassifierConfig, labelled_rows
from cxr_pipeline.models.model_folder import describe
from cxr_pipeline.models.model_settings import ClassDDPMSettings
from cxr_pipeline.models.pipelines import (
    ClassConditionalGenerator,
    TextConditionalGenerator,
)
from cxr_pipeline.models.training import TrainConfig, run_key
from cxr_pipeline.settings import WorkPaths, work_home

ROOT = Path(__file__).resolve().parents[1]

DEMO = su.UTILITY_PROFILES["demo"]
# name -> (profile, synthetic ratio)
CONFIGS = {
    "demo": (DEMO, 1.0),
    "wide": (replace(DEMO, classifier=ClassifierConfig()), 1.0),  # the feature classifier's network
    "long": (replace(DEMO, steps=600), 1.0),
    "half": (DEMO, 0.5),
    "double": (DEMO, 2.0),
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--home", default=str(work_home()), help="work folder (default: CXR_HOME, else ./work)")
    parser.add_argument("--configs", default="demo")
    parser.add_argument("--arms", default=",".join(su.DEFAULT_ARMS))
    parser.add_argument("--seeds", type=int, default=None)
    parser.add_argument("--ddim-steps", type=int, default=10)
    args = parser.parse_args()
    paths = WorkPaths(Path(args.home))
    metadata = pd.read_parquet(paths.metadata)
    store = ImageStore(paths.image_store)
    pointers = {g: current_model(paths, g) for g in su.GENERATORS}
    class_names = list(describe(pointers[su.CLASS_GENERATOR].model_dir).settings_as(ClassDDPMSettings).classes)
    train, val = labelled_rows(metadata, "train"), labelled_rows(metadata, "val")
    real_counts = np.bincount(train["class_id"].astype(int), minlength=len(class_names))
    arms = su.arms_named(args.arms.split(","))
    ratios = sorted({CONFIGS[c][1] for c in args.configs.split(",")})
    plan = {}
    for ratio in ratios:
        for generator, counts in su.pool_plan(arms, real_counts, ratio).items():
            plan[generator] = np.maximum(plan.get(generator, counts), counts)
    key = run_key(
        "bench_pool",
        {g: pointers[g].model_dir for g in plan},
        {g: c.tolist() for g, c in plan.items()},
        args.ddim_steps,
        content_hash(metadata),
    )
    pool_dir = paths.models / "synthetic_utility" / "pools" / key
    timings = {}

    def timed(name, sampler):
        def run(requests, seed):
            started = time.perf_counter()
            images = sampler(requests, seed)
            timings[name] = (len(images), time.perf_counter() - started)
            return images

        return run

    samplers = {
        su.CLASS_GENERATOR: timed(
            "class_ddpm",
            lambda ids, seed: ClassConditionalGenerator.from_pretrained(pointers[su.CLASS_GENERATOR].model_dir)(
                ids, num_inference_steps=args.ddim_steps, generator=seed
            ).cpu(),
        ),
        su.TEXT_GENERATOR: timed(
            "text_ldm",
            lambda reports, seed: TextConditionalGenerator.from_pretrained(pointers[su.TEXT_GENERATOR].model_dir)(
                reports, num_inference_steps=args.ddim_steps, generator=seed
            ).cpu(),
        ),
    }
    pool = su.generate_pool(plan, class_names, su.training_reports(train), samplers, pool_dir)
    for name, (count, seconds) in timings.items():
        print(f"generation {name}: {count} images in {seconds:.1f} s ({count / seconds:.1f} img/s)")
    val_images = StoreImages(store, val).stack()
    val_labels = val["class_id"].astype(int).to_numpy()
    rarest = class_names[int(np.argmin(real_counts))]
    print(f"real training images per class: {dict(zip(class_names, real_counts.tolist()))}; rarest {rarest}")
    for name in args.configs.split(","):
        profile, ratio = CONFIGS[name]
        seeds = args.seeds or profile.seeds
        probabilities, seconds = {}, {}
        with tempfile.TemporaryDirectory() as scratch:
            for arm in arms:
                data = su.arm_training_set(arm, train, store, pool, ImageStore(pool_dir), ratio, len(class_names))
                su.check_provenance(data, set(train["image_id"]), class_names)
                probabilities[arm.name], started = [], time.perf_counter()
                for seed in range(seeds):
                    config = TrainConfig(
                        steps=profile.steps,
                        batch_size=profile.batch_size,
                        learning_rate=profile.learning_rate,
                        warmup_steps=min(30, profile.steps),
                        checkpoint_every=profile.steps,
                        eval_every=profile.steps,
                        log_every=profile.steps,
                        seed=seed,
                    )
                    probs, _ = su.train_arm(
                        data,
                        val_images,
                        val_labels,
                        val_images,
                        class_names,
                        profile.classifier,
                        config,
                        Path(scratch) / f"{arm.name}-{seed}",
                    )
                    probabilities[arm.name].append(probs)
                seconds[arm.name] = (time.perf_counter() - started) / seeds
        scores = su.utility_scores(probabilities, val_labels, val["patient_key"].astype(str).to_numpy(), class_names)
        print(
            f"\n## {name}: {profile.steps} steps x {profile.batch_size}, widths {profile.classifier.widths}, "
            f"ratio {ratio}, {seeds} seeds (val, {len(val)} images)"
        )
        print(
            f"| arm | s per seed | macro AUROC [95% CI] | Δ vs real [95% CI] | seed std | {rarest} AUROC | Δ {rarest} |"
        )
        print("|---|---|---|---|---|---|---|")
        for arm in arms:
            macro, rare = scores.row(arm.name, "auroc_macro"), scores.row(arm.name, f"auroc_{rarest}")
            diff = (
                "—"
                if arm.name == su.REAL
                else f"{macro['diff']:+.3f} [{macro['diff_low']:+.3f}, {macro['diff_high']:+.3f}]"
            )
            rare_diff = (
                "—"
                if arm.name == su.REAL
                else f"{rare['diff']:+.3f} [{rare['diff_low']:+.3f}, {rare['diff_high']:+.3f}]"
            )
            print(
                f"| {arm.name} | {seconds[arm.name]:.1f} | {macro['value']:.3f} [{macro['ci_low']:.3f}, "
                f"{macro['ci_high']:.3f}] | {diff} | {macro['seed_std']:.3f} | {rare['value']:.3f} | {rare_diff} |"
            )


if __name__ == "__main__":
    main()
