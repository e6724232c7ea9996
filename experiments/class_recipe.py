"""Class-conditional recipes side by side, trained on the demo's train split and scored on **val**
(never test: this is where recipes and guidance scales are chosen).

Needs a work folder where ``latents`` and ``cxr_classifier`` are materialized (``./run.sh demo``,
or ``dagster asset materialize --select '+latents,cxr_classifier'``). Each recipe trains in this
process from scratch into a temporary run folder; the table gives training wall time, conditional
accuracy (worst class too), fd_cxr against its real-vs-real reference, the fine-detail ratio
(metrics/detail.py) against its real-vs-real reference, and within-class MS-SSIM against real, at
each guidance scale.

    python experiments/class_recipe.py --recipes old,latent [--steps 1000] [--guidance 1,2,3,4]

A recipe name ending in ``+bf16`` trains the same recipe under CPU bf16 autocast (TrainConfig.cpu_bf16).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from cxr_pipeline import kinds
from cxr_pipeline.data.image_store import ImageStore
from cxr_pipeline.data.labels.vocabulary import DEFAULT_CLASSES
from cxr_pipeline.evaluation.generation import evaluate_generation
from cxr_pipeline.kinds.class_ddpm import PIXEL_UNET_PROFILES
from cxr_pipeline.model_record import current_model
from cxr_pipeline.models import diffusion_training as dt
from cxr_pipeline.models.batches import StoreImages
from cxr_pipeline.models.diffusion import UNetProfile
from cxr_pipeline.models.pipelines import ClassConditionalGenerator
from cxr_pipeline.reports.grid import png_bytes
from cxr_pipeline.settings import WorkPaths, work_home

ROOT = Path(__file__).resolve().parents[1]

# Variants of the kind's own recipe (kinds.CLASS_DDPM.recipe, what the asset trains: "latent"), on a
# longer budget, each with its UNet: the kind's profile unless named. "old" is the pixel recipe
# the latent one replaced.
DEFAULT = kinds.CLASS_DDPM.recipe(steps=1000, cpu_bf16=False)
RECIPES = {
    "old": (
        replace(
            DEFAULT,
            space="pixel",
            prediction_type="epsilon",
            snr_gamma=None,
            steps=200,
            batch_size=16,
            learning_rate=5e-4,
            warmup_steps=30,
            ema_decay=0.995,
        ),
        PIXEL_UNET_PROFILES["demo"],
    ),
    "latent": (DEFAULT, None),
    "latent_eps": (replace(DEFAULT, prediction_type="epsilon", snr_gamma=None), None),
    # min-SNR weighting lowers the weight of the low-noise steps, where fine texture is drawn
    "latent_flat": (replace(DEFAULT, snr_gamma=None), None),
    "latent_wide": (DEFAULT, UNetProfile((64, 128), 16, True)),
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--home", default=str(work_home()), help="work folder (default: CXR_HOME, else ./work)")
    parser.add_argument("--recipes", default="old,latent")
    parser.add_argument("--steps", type=int, default=None, help="override the latent recipes' steps")
    parser.add_argument("--guidance", default="1,2,3,4")
    parser.add_argument("--samples-per-class", type=int, default=16)
    parser.add_argument("--ddim-steps", type=int, default=50)
    parser.add_argument(
        "--keep",
        default=None,
        help="train into this folder and keep it (say, for experiments/text_recipe.py --class-model)",
    )
    args = parser.parse_args()
    paths = WorkPaths(Path(args.home))
    metadata = pd.read_parquet(paths.metadata)
    store = ImageStore(paths.image_store)
    classifier = current_model(paths, "classifier").model_dir
    vae = current_model(paths, "vae").model_dir
    val = metadata[(metadata["split"] == "val") & metadata["class_id"].notna()].reset_index(drop=True)
    reference = metadata[(metadata["split"] == "train") & metadata["class_id"].notna()].sample(len(val), random_state=0)
    real_val, real_reference = StoreImages(store, val).stack(), StoreImages(store, reference).stack()
    latent_shape = json.loads((paths.latents / "latents.json").read_text())["latent_shape"]
    rows = []
    for name in args.recipes.split(","):
        recipe, profile = RECIPES[name.removesuffix("+bf16")]
        if args.steps and recipe.space == "latent":
            recipe = replace(recipe, steps=args.steps)
        train = replace(
            recipe.train_config(),
            eval_every=recipe.steps,
            checkpoint_every=recipe.steps,
            log_every=50,
            device="cpu",
            cpu_bf16=name.endswith("+bf16"),
        )
        classes = len(DEFAULT_CLASSES) + 1
        schedule = recipe.schedule()
        if recipe.space == "latent":
            profile = profile or kinds.CLASS_DDPM.unet_profiles["demo"]
            unet = profile.config(latent_shape[1], latent_shape[0], latent_shape[0], num_class_embeds=classes)
            space_args = {"latents_dir": paths.latents, "vae_dir": Path(vae)}
        else:
            unet = profile.config(int(real_val.shape[-1]), 1, 1, num_class_embeds=classes)
            space_args = {}
        with contextlib.nullcontext(args.keep) if args.keep else tempfile.TemporaryDirectory() as runs:
            started = time.perf_counter()
            outcome = dt.train_class_ddpm(
                metadata,
                store,
                DEFAULT_CLASSES,
                unet,
                schedule,
                train,
                Path(runs),
                "bench",
                guidance_scale=2.0,
                progress=lambda e, name=name: e.kind == "step" and print(f"{name}: {e.describe()}", flush=True),
                **space_args,
            )
            train_s = time.perf_counter() - started
            print(f"{name}: model in {outcome.model_dir}", flush=True)
            generator = ClassConditionalGenerator.from_pretrained(outcome.model_dir, "cpu")
            for guidance in [float(g) for g in args.guidance.split(",")]:
                result = evaluate_generation(
                    generator,
                    classifier,
                    real_val,
                    val["class_id"].astype(int),
                    real_reference,
                    samples_per_class=args.samples_per_class,
                    ddim_steps=args.ddim_steps,
                    guidance=guidance,
                    device="cpu",
                )
                generated = [g for g, _ in result.diversity.values() if not np.isnan(g)]
                real = [r for _, r in result.diversity.values() if not np.isnan(r)]
                rows.append(
                    {
                        "recipe": name,
                        "train s": round(train_s),
                        "steps": train.steps,
                        "guidance": guidance,
                        "cond_acc": round(result.cond_acc, 3),
                        "worst class": round(float(np.nanmin(result.cond_acc_per_class)), 3),
                        "fd_cxr": round(result.fd_cxr, 2),
                        "fd real-vs-real": round(result.fd_cxr_real, 2),
                        "fd ratio": round(result.fd_cxr / result.fd_cxr_real, 2),
                        "detail": round(result.detail[0], 3),
                        "detail real-vs-real": round(result.detail_real, 3),
                        "ms-ssim gen": round(float(np.mean(generated)), 3),
                        "ms-ssim real": round(float(np.mean(real)), 3),
                    }
                )
                print(rows[-1], flush=True)
                if guidance == 2.0 or len(args.guidance.split(",")) == 1:
                    grid = result.figures[0].image
                    out = ROOT / "work" / "bench" / f"class_{name}_g{guidance:g}.png"
                    out.parent.mkdir(parents=True, exist_ok=True)
                    out.write_bytes(png_bytes(grid, upscale=2))
    print(pd.DataFrame(rows).to_markdown(index=False))


if __name__ == "__main__":
    main()
