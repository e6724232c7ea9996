"""Text-conditional recipes side by side, trained on the demo's train split and scored on **val**
(never test: this is where the recipe and the guidance scale are chosen).

Needs a work folder where ``latents``, ``report_encoder`` and ``cxr_classifier`` are materialized
(``./run.sh demo``, or ``dagster asset materialize --select '+latents,report_encoder,cxr_classifier'``).
Each recipe trains in this process from scratch into a temporary run folder; the table gives
training wall time and, per guidance scale, prompt consistency on val's normal and single-finding
reports (per finding too) and fd_cxr against its real-vs-real reference.

    python experiments/text_recipe.py --recipes levels2,warm [--steps 600] [--batch 64] [--guidance 1,2,3,4,7.5] [--samples 2]

``--samples``: samples per val report for prompt consistency (seeds 0, 1000, ...), fd_cxr on the first.
A recipe name ending in ``+bf16`` trains under CPU bf16 autocast (TrainConfig.cpu_bf16, with the
Trainer's explicit attention), as the asset does on CPUs that have it; without it, fp32.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from cxr_pipeline import kinds
from cxr_pipeline.data.image_store import ImageStore
from cxr_pipeline.evaluation.text_measures import consistency, predicted_classes, prompt_set
from cxr_pipeline.metrics.distribution import frechet_distance
from cxr_pipeline.model_record import current_model
from cxr_pipeline.models import diffusion_training as dt
from cxr_pipeline.models.batches import StoreImages
from cxr_pipeline.models.classifier import embed, load_classifier
from cxr_pipeline.models.diffusion import ScheduleConfig
from cxr_pipeline.models.pipelines import TextConditionalGenerator
from cxr_pipeline.models.report_encoder import ReportEncoder
from cxr_pipeline.models.training import TrainConfig
from cxr_pipeline.reports.grid import png_bytes
from cxr_pipeline.settings import WorkPaths, work_home

ROOT = Path(__file__).resolve().parents[1]

TRAIN = TrainConfig(steps=600, batch_size=64, learning_rate=2e-3, warmup_steps=50, ema_decay=0.99)
VPRED = ScheduleConfig(1000, prediction_type="v_prediction", snr_gamma=5.0)
# name -> (schedule, balance, text dropout, widths or None for the profile's, trainable encoder layers,
# resolution levels with cross-attention, warm start from the current class model)
RECIPES = {
    "frozen": (VPRED, True, 0.1, None, 0, 1, False),
    "trainable": (VPRED, True, 0.1, None, 1, 1, False),
    "levels2": (VPRED, True, 0.1, None, 0, 2, False),
    "warm": (VPRED, True, 0.1, None, 0, 2, True),
    "uniform": (VPRED, False, 0.1, None, 0, 1, False),
    "eps": (ScheduleConfig(1000), True, 0.1, None, 0, 1, False),
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--home", default=str(work_home()), help="work folder (default: CXR_HOME, else ./work)")
    parser.add_argument("--recipes", default="frozen")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--batch", type=int, default=None, help="override the batch size (64)")
    parser.add_argument("--guidance", default="1,2,3,4,7.5")
    parser.add_argument("--ddim-steps", type=int, default=20)
    parser.add_argument("--samples", type=int, default=1)
    parser.add_argument("--encoder", default=None, help="report encoder folder (default: the current one)")
    parser.add_argument(
        "--class-model", default=None, help="class model folder to warm-start from (default: the current one)"
    )
    parser.add_argument("--out", default=None, help="folder for sample grids and results.json")
    args = parser.parse_args()
    paths = WorkPaths(Path(args.home))
    metadata = pd.read_parquet(paths.metadata)
    store = ImageStore(paths.image_store)
    vae_dir, classifier_dir = current_model(paths, "vae").model_dir, current_model(paths, "classifier").model_dir
    encoder_dir = args.encoder or current_model(paths, "report_encoder").model_dir
    hidden = ReportEncoder.from_pretrained(encoder_dir).hidden_size
    val = prompt_set(metadata, store, "val")
    classifier, classifier_settings = load_classifier(classifier_dir, "cpu")
    class_names = list(classifier_settings.classes)
    val_features, _ = embed(classifier, val.images)
    train_images = StoreImages(store, metadata[metadata["split"] == "train"].reset_index(drop=True)).stack()
    reference, _ = embed(classifier, train_images[np.random.default_rng(0).permutation(len(train_images))[: len(val)]])
    fd_real = frechet_distance(val_features, reference)
    single = val.single_label()
    out = Path(args.out or tempfile.mkdtemp(prefix="text_recipe_"))
    out.mkdir(parents=True, exist_ok=True)
    channels, size = json.loads((paths.latents / "latents.json").read_text())["latent_shape"][:2]
    results = []
    for name in args.recipes.split(","):
        schedule, balance, dropout, widths, trainable, levels, warm = RECIPES[name.removesuffix("+bf16")]
        unet = replace(
            kinds.TEXT_LDM.unet_profiles["demo"].config(size, channels, channels, None, widths, hidden),
            cross_attention_levels=levels,
        )
        train = replace(
            TRAIN,
            steps=args.steps or TRAIN.steps,
            batch_size=args.batch or TRAIN.batch_size,
            cpu_bf16=name.endswith("+bf16"),
        )
        started = time.perf_counter()
        outcome = dt.train_text_ldm(
            metadata,
            paths.latents,
            Path(vae_dir),
            Path(encoder_dir),
            unet,
            schedule,
            train,
            Path(tempfile.mkdtemp(prefix=f"{name}_")),
            "bench",
            text_dropout=dropout,
            balance=balance,
            trainable_encoder_layers=trainable,
            warm_start_from=(args.class_model or current_model(paths, "class_ddpm").model_dir) if warm else None,
        )
        seconds = time.perf_counter() - started
        model = TextConditionalGenerator.from_pretrained(outcome.model_dir, "cpu")
        for scale in [float(g) for g in args.guidance.split(",")]:
            images = model(val.prompts, guidance_scale=scale, num_inference_steps=args.ddim_steps, generator=0)
            features, probabilities = embed(classifier, images)
            predicted = predicted_classes(
                model,
                classifier,
                [val.prompts[i] for i in single],
                probabilities[single].argmax(1),
                args.samples,
                guidance=scale,
                steps=args.ddim_steps,
                seed=0,
            )
            overall, per = consistency(predicted, np.tile(val.class_ids[single], args.samples), class_names)
            row = {
                "recipe": name,
                "steps": train.steps,
                "batch": train.batch_size,
                "train_s": round(seconds, 1),
                "guidance": scale,
                "samples": args.samples,
                "consistency": round(overall, 3),
                "worst": round(min(v for v in per.values() if np.isfinite(v)), 3),
                "fd_cxr": round(frechet_distance(val_features, features), 3),
                "fd_real": round(fd_real, 3),
                **{k: round(v, 2) for k, v in per.items()},
            }
            results.append(row)
            print(row, flush=True)
            (out / f"{name}_w{scale:g}.png").write_bytes(
                png_bytes(
                    np.concatenate(
                        [
                            np.concatenate(list(images[i : i + 8, 0].numpy()), axis=1)
                            for i in range(0, min(32, len(images)), 8)
                        ],
                        axis=0,
                    ),
                    upscale=2,
                )
            )
    (out / "results.json").write_text(json.dumps(results, indent=2))
    print(pd.DataFrame(results).drop(columns=[c for c in class_names if c in results[0]]).to_string(index=False))
    print(f"grids: {out}")


if __name__ == "__main__":
    main()
