"""Arbitrary-scale super-resolution on val: the recipe's choices, measured in one process.

Trains the arbitrary-scale model as the ``arbitrary_sr`` asset does (implicit decoder head, then
the latent diffusion model on continuous scales), with the asset's defaults unless told
otherwise, and scores it on **val** at each scale against bicubic at that scale, its own latent
path without diffusion, and the work folder's fixed-scale model (``latent_sr``) at the scales it
was trained for, all on the same inputs. Also prints:
- the decoder head off the latent grid (rendering at 0.8 and 0.95 of the grid, where the
  pipeline uses it) trained, untrained (bilinear over the plain decode) and against the plain
  decode resized with an antialiased bicubic filter;
- val PSNR with 50 and 20 DDIM steps per scale (the evaluation's default is chosen here);
- beyond the training range, the scale-conditioned model told the true scale (the default)
  against told the nearest scale it was trained on;
- the wall time of each stage.

Needs a work folder where ``latents`` (and for the comparison ``latent_sr``) are materialized.

    python experiments/arbitrary_sr.py [--steps 600] [--decoder-steps 300] [--draws 6] [--scale-max 4]
                                 [--no-scale-conditioning] [--linear-strata] [--warm-start]
                                 [--fp32] [--runs DIR]

``--warm-start`` starts the UNet from the work folder's fixed-scale model (x4), as the recipe
does; ``--fp32`` trains the UNet without the recipe's CPU bf16 autocast; ``--runs`` keeps the
runs, so variants share the decoder head and the encoded conditions.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import pandas as pd

from cxr_pipeline import kinds
from cxr_pipeline.data.degrade import DegradationMix
from cxr_pipeline.data.image_store import ImageStore
from cxr_pipeline.data.pairs import scale_exact_pairs
from cxr_pipeline.evaluation.inputs import split_rows, stored_images
from cxr_pipeline.evaluation.restoration import evaluate_arbitrary_scale
from cxr_pipeline.metrics.restoration import per_image_scores
from cxr_pipeline.model_record import ModelRecord, current_model, has_current_model
from cxr_pipeline.models.diffusion import ScheduleConfig
from cxr_pipeline.models.diffusion_training import train_arbitrary_sr
from cxr_pipeline.models.implicit import ImplicitDecoder, evaluate_rendering
from cxr_pipeline.models.pipelines import (
    ArbitraryScaleSuperResolution,
    LatentSuperResolution,
)
from cxr_pipeline.models.training import TrainConfig
from cxr_pipeline.models.vae import load_vae
from cxr_pipeline.settings import WorkPaths, work_home

ROOT = Path(__file__).resolve().parents[1]

SCALES = (2.0, 2.5, 3.0, 4.0, 6.0)


def record(paths: WorkPaths, key: str) -> ModelRecord | None:
    return current_model(paths, key) if has_current_model(paths, key) else None


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--home", default=str(work_home()), help="work folder (default: CXR_HOME, else ./work)")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--decoder-steps", type=int, default=300)
    parser.add_argument("--draws", type=int, default=6)
    parser.add_argument("--scale-max", type=float, default=4.0)
    parser.add_argument("--no-scale-conditioning", action="store_true", help="do not tell the UNet the scale")
    parser.add_argument(
        "--linear-strata", action="store_true", help="scale strata equal in scale, not in scale squared"
    )
    parser.add_argument("--warm-start", action="store_true", help="start from the fixed-scale x4 model")
    parser.add_argument("--fp32", action="store_true", help="train the UNet without CPU bf16 autocast (the recipe's)")
    parser.add_argument("--val-images", type=int, default=48)
    parser.add_argument("--runs", default=None, help="keep the training runs here (default: a temporary folder)")
    args = parser.parse_args()
    paths = WorkPaths(Path(args.home))
    metadata = pd.read_parquet(paths.metadata)
    vae_dir = current_model(paths, kinds.VAE.key).model_dir
    shape = json.loads((paths.latents / "latents.json").read_text())["latent_shape"]
    unet = kinds.LATENT_SR.unet_profiles["demo"].config(shape[-1], 2 * shape[0], shape[0])
    if not args.no_scale_conditioning:
        unet = replace(unet, class_embed_type="timestep")
    schedule = ScheduleConfig(prediction_type="sample")
    train = TrainConfig(
        steps=args.steps,
        batch_size=args.batch,
        learning_rate=2e-3,
        warmup_steps=50,
        ema_decay=0.99,
        checkpoint_every=args.steps,
        eval_every=args.steps,
        log_every=100,
        device="cpu",
        cpu_bf16=not args.fp32,
    )
    decoder_train = TrainConfig(
        steps=args.decoder_steps,
        batch_size=16,
        learning_rate=2e-3,
        warmup_steps=30,
        ema_decay=0.99,
        checkpoint_every=args.decoder_steps,
        eval_every=args.decoder_steps,
        log_every=100,
        device="cpu",
    )
    stages: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as scratch:
        runs = Path(args.runs or scratch)
        started = time.perf_counter()
        outcome = train_arbitrary_sr(
            metadata,
            ImageStore(paths.image_store),
            paths.latents,
            vae_dir,
            unet,
            schedule,
            train,
            decoder_train,
            runs,
            "bench",
            scale_min=1.0,
            scale_max=args.scale_max,
            draws_per_image=args.draws,
            draws_by_area=not args.linear_strata,
            warm_start_from=(
                current_model(paths, kinds.LATENT_SR.at_scale(4).key).model_dir if args.warm_start else None
            ),
            progress=lambda e: e.kind == "step" and print(e.describe(), flush=True),
        )
        stages["training, both stages"] = time.perf_counter() - started
        model = ArbitraryScaleSuperResolution.from_pretrained(outcome.model_dir, "cpu")

        val_rows = split_rows(metadata, "val", args.val_images)
        val = stored_images(ImageStore(paths.image_store), val_rows)
        untrained = evaluate_rendering(ImplicitDecoder.from_vae(load_vae(vae_dir)), val, (0.8, 0.95))
        trained = evaluate_rendering(model.decoder, val, (0.8, 0.95))
        decoder_rows = [
            {
                "ratio of the grid": ratio,
                "decode + antialiased bicubic resize": round(trained[f"val_psnr_resized_{name}"], 2),
                "implicit, untrained (bilinear)": round(untrained[f"val_psnr_render_{name}"], 2),
                f"implicit, trained ({args.decoder_steps} steps)": round(trained[f"val_psnr_render_{name}"], 2),
            }
            for ratio, name in ((0.8, "x0p8"), (0.95, "x0p95"))
        ]

        fixed = {
            float(s): LatentSuperResolution.from_pretrained(p.model_dir, "cpu")
            for s in (2, 4)
            if (p := record(paths, kinds.LATENT_SR.at_scale(s).key))
        }
        inputs = scale_exact_pairs(val, val_rows["image_id"].astype(str), SCALES, DegradationMix(), 0)
        rows = []
        for scale, (high, low) in inputs.items():
            started = time.perf_counter()
            result = evaluate_arbitrary_scale(
                model,
                high,
                low,
                val_rows["image_id"],
                val_rows["patient_key"],
                scale,
                fixed=fixed.get(scale),
                ddim_steps=50,
                spread_seeds=1,
                resamples=500,
            )
            stages[f"val x{scale:g}, 50 steps"] = time.perf_counter() - started
            started = time.perf_counter()
            coarse = model(low, size=tuple(high.shape[-2:]), num_inference_steps=20, generator=0)
            stages[f"val x{scale:g}, 20 steps (model only)"] = time.perf_counter() - started
            clamped = "—"
            if model.scale_conditioned and scale > model.scale_range[1]:
                model.extrapolate = False
                told = model(low, size=tuple(high.shape[-2:]), num_inference_steps=20, generator=0)
                model.extrapolate = True
                clamped = round(float(per_image_scores(told, high)["psnr"].mean()), 2)
            summaries, versus = result.summaries, result.versus
            rows.append(
                {
                    "scale": f"x{scale:g}",
                    "LR px": low.shape[-1],
                    "HR px": high.shape[-1],
                    "bicubic": round(summaries["bicubic"]["psnr"].mean, 2),
                    "no diffusion": round(summaries["bicubic_vae"]["psnr"].mean, 2),
                    "arbitrary (50)": round(summaries["arbitrary"]["psnr"].mean, 2),
                    "arbitrary (20)": round(float(per_image_scores(coarse, high)["psnr"].mean()), 2),
                    "told the range's end (20)": clamped,
                    "gain over bicubic": result.gains["arbitrary"].text(2),
                    "fixed-scale": round(summaries["fixed"]["psnr"].mean, 2) if "fixed" in summaries else "—",
                    "fixed-scale (20)": round(
                        float(
                            per_image_scores(fixed[scale](low, num_inference_steps=20, generator=0), high)[
                                "psnr"
                            ].mean()
                        ),
                        2,
                    )
                    if scale in fixed
                    else "—",
                    "arbitrary - fixed": versus["fixed"].text(2) if "fixed" in versus else "—",
                    "LR-consistency": round(summaries["arbitrary"]["lr_consistency_psnr"].mean, 1),
                }
            )
    print(
        f"\nval: {len(val_rows)} images; training {args.steps} x {args.batch} (diffusion), {args.decoder_steps} x 16 "
        f"(decoder), {args.draws} scales per image in [1, {args.scale_max:g}], "
        f"scale conditioning {'off' if args.no_scale_conditioning else 'on'}, strata {'linear' if args.linear_strata else 'by area'}, "
        f"{'from the fixed-scale x4 model' if args.warm_start else 'from scratch'}\n"
    )
    print(pd.DataFrame(rows).to_markdown(index=False))
    print("\ndecoder head off the latent grid (val PSNR against the antialiased shrink of the image):\n")
    print(pd.DataFrame(decoder_rows).to_markdown(index=False))
    print("\nwall time (s):\n")
    print(pd.DataFrame([{"stage": k, "s": round(v, 1)} for k, v in stages.items()]).to_markdown(index=False))


if __name__ == "__main__":
    main()
