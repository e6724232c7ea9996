"""Sampling in bf16 against fp32: each trained diffusion model's **val** figures and its sampling
time, with the UNet's forward passes in fp32 (``precision="no"``) and under bf16 autocast
(``precision="bf16"``, explicit attention on CPU), the chain and the VAE in fp32 in both. Where
each pipeline kind's ``cpu_bf16`` (what ``precision="auto"`` samples in on a CPU with native bf16)
comes from.

Per model, with the evaluations' own DDIM steps and defaults, on the val split (never test):
- latent SR x4: PSNR and fine detail from noise and from the LR latent (strength 0.3);
- arbitrary-scale SR: PSNR at x2, x2.5, x3, x4 and x6;
- denoiser: the strength search of the denoising evaluation, best PSNR per dose;
- class model: conditional accuracy (``--per-class`` samples of each class) and fd_cxr against
  the real val images, at the saved guidance;
- text model: prompt consistency (two samples of each single-finding val report) and fd_cxr, at
  the saved guidance.
The precisions run one after the other on the same inputs and seeds, ``--rounds`` times
(timing medians; the figures are deterministic). ``--fused`` adds bf16 with PyTorch's fused
attention kernel: what explicit attention saves in sampling. Needs a work folder where the models are
materialized (``./run.sh demo``).

    python experiments/sampling_precision.py [--home work] [--models latent_sr,arbitrary_sr,denoiser,class_ddpm,text_ldm] [--fused]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

from cxr_pipeline import kinds
from cxr_pipeline.data.degrade import DegradationMix
from cxr_pipeline.data.image_store import ImageStore
from cxr_pipeline.data.pairs import doses_built, low_dose_pair_dir, scale_exact_pairs, sr_pair_dir
from cxr_pipeline.evaluation.denoising import DENOISER_STRENGTHS, tune_denoiser_strength
from cxr_pipeline.evaluation.inputs import degraded_images, split_rows, stored_images
from cxr_pipeline.evaluation.text_measures import guidance_sweep, prompt_set
from cxr_pipeline.metrics.distribution import conditional_accuracy, frechet_distance
from cxr_pipeline.metrics.restoration import per_image_scores
from cxr_pipeline.model_record import current_model
from cxr_pipeline.models.classifier import embed, load_classifier
from cxr_pipeline.models.pipelines import (
    ArbitraryScaleSuperResolution,
    ClassConditionalGenerator,
    LatentSuperResolution,
    LowDoseDenoiser,
    TextConditionalGenerator,
)
from cxr_pipeline.settings import WorkPaths, work_home

VARIANTS = {"fp32": "no", "bf16": "bf16", "bf16, fused attention": "bf16"}
Scorer = Callable[[object], dict[str, float]]


def restoration_scores(prefix: str, restored: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    scores = per_image_scores(restored, target)
    return {f"{prefix} PSNR": float(scores["psnr"].mean()), f"{prefix} detail": float(scores["detail"].mean())}


def latent_sr(paths: WorkPaths, val: pd.DataFrame, args) -> tuple[type, str, Scorer]:
    record = current_model(paths, f"{kinds.LATENT_SR.key}_x4")
    high = stored_images(ImageStore(paths.image_store), val)
    low = degraded_images(sr_pair_dir(paths.pairs, 4), val)

    def score(model: LatentSuperResolution) -> dict[str, float]:
        return {
            **restoration_scores("x4 from noise", model(low, num_inference_steps=50), high),
            **restoration_scores("x4 from LR", model(low, num_inference_steps=50, strength=0.3), high),
        }

    return LatentSuperResolution, record.model_dir, score


def arbitrary_sr(paths: WorkPaths, val: pd.DataFrame, args) -> tuple[type, str, Scorer]:
    record = current_model(paths, kinds.ARBITRARY_SR.key)
    inputs = scale_exact_pairs(
        stored_images(ImageStore(paths.image_store), val),
        val["image_id"].astype(str),
        (2.0, 2.5, 3.0, 4.0, 6.0),
        DegradationMix(),
        0,
    )

    def score(model: ArbitraryScaleSuperResolution) -> dict[str, float]:
        return {
            f"x{scale:g} PSNR": float(
                per_image_scores(model(low, size=tuple(high.shape[-2:]), num_inference_steps=20), high)["psnr"].mean()
            )
            for scale, (high, low) in inputs.items()
        }

    return ArbitraryScaleSuperResolution, record.model_dir, score


def denoiser(paths: WorkPaths, val: pd.DataFrame, args) -> tuple[type, str, Scorer]:
    record = current_model(paths, kinds.DENOISER.key)
    clean = stored_images(ImageStore(paths.image_store), val)
    noisy = {dose: degraded_images(low_dose_pair_dir(paths.pairs, dose), val) for dose in doses_built(paths.pairs)}

    def score(model: LowDoseDenoiser) -> dict[str, float]:
        figures = {}
        for dose, images in noisy.items():
            strength, search = tune_denoiser_strength(model, clean, images, dose, DENOISER_STRENGTHS, 20)
            figures[f"I0 {dose:g} best PSNR"] = float(search["val PSNR"].max())
            figures[f"I0 {dose:g} strength"] = strength
        return figures

    return LowDoseDenoiser, record.model_dir, score


def class_ddpm(paths: WorkPaths, val: pd.DataFrame, args) -> tuple[type, str, Scorer]:
    record = current_model(paths, kinds.CLASS_DDPM.key)
    classifier, classifier_settings = load_classifier(Path(current_model(paths, kinds.CLASSIFIER.key).model_dir), "cpu")
    classes = len(classifier_settings.classes)
    labelled = val[val["class_id"].notna()]
    real_features, _ = embed(classifier, stored_images(ImageStore(paths.image_store), labelled))
    wanted = np.repeat(np.arange(classes), args.per_class)

    def score(model: ClassConditionalGenerator) -> dict[str, float]:
        features, probabilities = embed(classifier, model(wanted.tolist(), num_inference_steps=50))
        accuracy, per_class = conditional_accuracy(probabilities.argmax(1), wanted, classes)
        return {
            "cond_acc": accuracy,
            "worst class": float(np.nanmin(per_class)),
            "fd_cxr vs val": frechet_distance(real_features, features),
        }

    return ClassConditionalGenerator, record.model_dir, score


def text_ldm(paths: WorkPaths, val: pd.DataFrame, args) -> tuple[type, str, Scorer]:
    record = current_model(paths, kinds.TEXT_LDM.key)
    classifier, classifier_settings = load_classifier(Path(current_model(paths, kinds.CLASSIFIER.key).model_dir), "cpu")
    metadata = pd.read_parquet(paths.metadata)
    store = ImageStore(paths.image_store)
    prompts, reference = prompt_set(metadata, store, "val"), prompt_set(metadata, store, "train")
    reference_images = reference.images[np.random.default_rng(0).permutation(len(reference))[: len(prompts)]]

    def score(model: TextConditionalGenerator) -> dict[str, float]:
        guidance = float(model.settings.guidance_scale)
        sweep, _ = guidance_sweep(
            model,
            classifier,
            classifier_settings.classes,
            prompts,
            reference_images,
            [guidance],
            steps=20,
            seed=0,
            samples=2,
        )
        row = sweep.iloc[0]
        return {
            f"consistency w={guidance:g}": float(row["consistency"]),
            "fd_cxr vs val": float(row["fd_cxr"]),
            "fd_cxr real reference": float(row["fd_cxr_real_reference"]),
        }

    return TextConditionalGenerator, record.model_dir, score


MODELS = {
    "latent_sr": latent_sr,
    "arbitrary_sr": arbitrary_sr,
    "denoiser": denoiser,
    "class_ddpm": class_ddpm,
    "text_ldm": text_ldm,
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--home", default=str(work_home()), help="work folder (default: CXR_HOME, else ./work)")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--per-class", type=int, default=20, help="class model: samples per class")
    parser.add_argument("--fused", action="store_true", help="also bf16 with the fused attention kernel")
    args = parser.parse_args()
    paths = WorkPaths(Path(args.home))
    val = split_rows(pd.read_parquet(paths.metadata), "val")
    rows = []
    for name in args.models.split(","):
        pipeline, folder, score = MODELS[name](paths, val, args)
        variants = [v for v in VARIANTS if args.fused or "fused" not in v]
        loaded = {variant: pipeline.from_pretrained(folder, "cpu", precision=VARIANTS[variant]) for variant in variants}
        for variant, model in loaded.items():
            if "fused" in variant:
                for layer in model.model.unet.modules():
                    if isinstance(layer, Attention):
                        layer.set_processor(AttnProcessor2_0())
        seconds = {variant: [] for variant in variants}
        figures = {}
        for _ in range(args.rounds):
            for variant, model in loaded.items():
                started = time.perf_counter()
                figures[variant] = score(model)
                seconds[variant].append(time.perf_counter() - started)
        fp32 = statistics.median(seconds["fp32"])
        for variant in variants:
            taken = statistics.median(seconds[variant])
            rows.append(
                {
                    "model": name,
                    "sampling": variant,
                    "seconds": round(taken, 1),
                    "speed vs fp32": f"{fp32 / taken:.2f}x",
                    **{key: round(value, 3) for key, value in figures[variant].items()},
                }
            )
            print(rows[-1], flush=True)
    for name, table in pd.DataFrame(rows).groupby("model", sort=False):
        print(f"\n{name} (val, {len(val)} images)\n" + table.dropna(axis=1, how="all").to_markdown(index=False))


if __name__ == "__main__":
    main()
