"""Models stage: the VAE (one MLflow run per materialization) and the latents it produces."""

import json
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pandas as pd

from cxr_pipeline import kinds
from cxr_pipeline.data import atomic
from cxr_pipeline.data.image_store import ImageStore
from cxr_pipeline.data.pairs import scales_built, sr_pair_dir
from cxr_pipeline.kinds.base import with_data_classes
from cxr_pipeline.kinds.vae import FINE_DETAIL_FLOOR
from cxr_pipeline.model_record import current_model
from cxr_pipeline.models.vae import encode_latents
from cxr_pipeline.reports.document import markdown_table
from resources import CxrSettings, MlflowTracking

from .labels import image_metadata
from .pairs import sr_pairs
from .pools import WORK_FOLDER_WRITER
from .training import TRAINING_STEP, ahead, recipe_config, skipped, train_one


class VaeTrainingConfig(recipe_config(kinds.VAE.recipe, "VaeTrainingConfig")):  # type: ignore[misc]  # fields generated from the recipe
    """The run config of the asset: its kind's recipe, field for field."""


@dg.asset(
    group_name="models",
    deps=[image_metadata],
    kinds={"pytorch", "mlflow"},
    **ahead(TRAINING_STEP, 4),
    check_specs=[
        dg.AssetCheckSpec(
            "keeps_fine_detail",
            asset="vae",
            description=f"Warns when val reconstructions keep less than {FINE_DETAIL_FLOOR} "
            "of the images' fine detail (ribs, vessel markings)",
        )
    ],
)
def vae(
    context: dg.AssetExecutionContext, config: VaeTrainingConfig, settings: CxrSettings, mlflow_tracking: MlflowTracking
) -> dg.MaterializeResult:
    """AutoencoderKL for one-channel radiographs, trained on random windows of the train split,
    validated on whole val images (MSE, PSNR, SSIM, fine detail), registered in MLflow as ``cxr-vae``."""
    registered, produced = train_one(context, kinds.VAE, config.recipe(), settings, mlflow_tracking)
    produced["reconstructions"] = dg.MetadataValue.md(
        "val: input | reconstruction | 4x error\n\n" + produced.pop("samples").value
    )
    detail = float(registered.outcome.metrics["val_detail"])
    check = dg.AssetCheckResult(
        check_name="keeps_fine_detail",
        passed=detail >= FINE_DETAIL_FLOOR,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={"val_detail": round(detail, 4), "floor": FINE_DETAIL_FLOOR},
    )
    return dg.MaterializeResult(
        metadata={**{k: round(v, 5) for k, v in registered.outcome.metrics.items()}, **produced}, check_results=[check]
    )


@dg.asset(group_name="models", deps=[vae, sr_pairs], kinds={"numpy"}, **WORK_FOLDER_WRITER)
def latents(context: dg.AssetExecutionContext, settings: CxrSettings) -> dg.MaterializeResult:
    """HR and LR latents of every split with the scaling factor, so diffusion training never
    re-runs the encoder."""
    paths = settings.paths()
    record = current_model(paths, kinds.VAE.key)
    metadata = pd.read_parquet(paths.metadata)
    lr_stores = {}
    for scale in scales_built(paths.pairs):
        folder = sr_pair_dir(paths.pairs, scale)
        lr_stores[scale] = (ImageStore(folder), pd.read_parquet(folder / "index.parquet"))
    summary = encode_latents(
        metadata,
        ImageStore(paths.image_store),
        Path(record.model_dir),
        lr_stores,
        paths.latents,
        vae_record=record.as_dict(),
    )
    atomic.write_text(paths.latents / "vae.json", json.dumps(record.as_dict(), indent=2))
    reference = summary.get("input_distribution")
    context.log.info(
        f"latents {summary['latent_shape']} for {summary['splits']}, scaling factor {summary['scaling_factor']:.4f}"
    )
    return dg.MaterializeResult(
        metadata={
            "scaling_factor": round(summary["scaling_factor"], 6),
            "latent_shape": dg.MetadataValue.json(summary["latent_shape"]),
            "scales": dg.MetadataValue.json(summary["scales"]),
            **{f"{split}_images": n for split, n in summary["splits"].items()},
            "vae": record.label,
            **(
                {
                    "ood_threshold": round(reference["threshold"], 3),
                    "ood_val_median": round(reference["val_median"], 3),
                    "ood_test_flagged_share": reference["test_flagged_share"],
                }
                if reference
                else {}
            ),
            "path": dg.MetadataValue.path(str(paths.latents)),
        }
    )


class ClassifierTrainingConfig(recipe_config(kinds.CLASSIFIER.recipe, "ClassifierTrainingConfig")):  # type: ignore[misc]  # fields generated from the recipe
    """The run config of the asset: its kind's recipe, field for field."""


@dg.asset(
    group_name="models",
    deps=[image_metadata],
    kinds={"pytorch", "mlflow"},
    output_required=False,  # skipped, with its reason, on data without class labels
    **TRAINING_STEP,
)
def cxr_classifier(
    context: dg.AssetExecutionContext,
    config: ClassifierTrainingConfig,
    settings: CxrSettings,
    mlflow_tracking: MlflowTracking,
) -> Iterator[dg.MaterializeResult]:
    """The CXR feature network: a pathology classifier on the single-label classes, trained on the
    train split with class-balanced batches and validated (AUROC per class) on val. Its features
    and predictions score the generator; registered as ``cxr-feature-classifier``."""
    if skipped(context, kinds.CLASSIFIER, settings):
        return
    recipe = with_data_classes(config.recipe(), settings.paths())
    registered, produced = train_one(context, kinds.CLASSIFIER, recipe, settings, mlflow_tracking)
    metrics = registered.outcome.metrics
    per_class = pd.DataFrame(
        [
            {"class": name, "val AUROC": f"{metrics[f'val_auroc_{name}']:.3f}"}
            for name in recipe.classes
            if f"val_auroc_{name}" in metrics
        ]
    )
    yield dg.MaterializeResult(
        metadata={
            "val_auroc_macro": round(metrics["val_auroc_macro"], 4),
            "val_accuracy": round(metrics["val_accuracy"], 4),
            "val_auroc_per_class": dg.MetadataValue.md(markdown_table(per_class)),
            **produced,
        }
    )
