"""Evaluation stage: the CXR feature classifier, then each model evaluated on the test split.

Every evaluation asset is one MLflow run tagged with the model versions it evaluated. It logs each
figure as a metric (``<metric>_<task>_<method>``, see the README), writes a self-contained HTML
report and its Markdown twin (also logged as artifacts), copies the headline figures into the
evaluated model's own run, and tags the registered model version with the evaluation run.
"""

import os
import time
from collections.abc import Callable
from typing import Optional

import dagster as dg
import mlflow
import numpy as np
import pandas as pd
import torch

from cxr_pipeline import promotion, tracking
from cxr_pipeline.data import atomic
from cxr_pipeline.data.image_store import ImageStore
from cxr_pipeline.data.labels.metadata import content_hash
from cxr_pipeline.data.labels.vocabulary import DEFAULT_CLASSES
from cxr_pipeline.data.pairs import doses_built, low_dose_pair_dir, scales_built, sr_pair_dir
from cxr_pipeline.evaluation.generation import evaluate_generation
from cxr_pipeline.evaluation.restoration import (DENOISER_STRENGTHS, NLM_FACTORS, evaluate_denoising,
                                                 evaluate_super_resolution, tune_denoiser_strength, tune_nlm)
from cxr_pipeline.models.batches import StoreImages
from cxr_pipeline.models import kinds as model_kinds
from cxr_pipeline.models.classifier import ClassifierConfig, train_classifier
from cxr_pipeline.models.pipelines import ClassConditionalGenerator, LatentSuperResolution, LowDoseDenoiser
from cxr_pipeline.promotion import PromotionRule
from cxr_pipeline.reports.document import Figure, Report, Section, Table, markdown_table, write_report
from cxr_pipeline.reports.plots import line_plot
from resources import CxrSettings, MlflowTracking

from .diffusion import class_ddpm, latent_sr, low_dose_denoiser
from .labels import image_metadata
from .models import HEAVY_STEP, TRAINING_STEP, TrainingConfig, progress_logger, read_current_model, train_and_register
from .pairs import low_dose_pairs, sr_pairs



class ClassifierTrainingConfig(TrainingConfig):
    steps: int = 600
    batch_size: int = 32
    learning_rate: float = 2e-3
    eval_every: int = 100  # validation AUROC every this many steps
    classes: list[str] = list(DEFAULT_CLASSES)


@dg.asset(group_name="evaluation", deps=[image_metadata], kinds={"pytorch", "mlflow"}, **TRAINING_STEP)
def cxr_classifier(context: dg.AssetExecutionContext, config: ClassifierTrainingConfig, settings: CxrSettings,
                   mlflow_tracking: MlflowTracking) -> dg.MaterializeResult:
    """The CXR feature network: a pathology classifier on the single-label classes, trained on the
    train split with class-balanced batches and validated (AUROC per class) on val. Its features
    and predictions score the generator; registered as ``cxr-feature-classifier``."""
    paths = settings.paths()
    metadata = pd.read_parquet(paths.metadata)
    data_hash = content_hash(metadata)
    network = ClassifierConfig(widths=tuple(config.block_out_channels)) if config.block_out_channels else ClassifierConfig()
    train_config = config.train_config(eval_every=config.eval_every)
    params = {**{f"classifier.{k}": v for k, v in network.as_dict().items()},
              **{f"train.{k}": v for k, v in train_config.identity().items()}, "classes": ",".join(config.classes)}
    outcome, produced = train_and_register(
        context, settings, mlflow_tracking, model_kinds.CLASSIFIER, data_hash, params,
        lambda run_id: (train_classifier(metadata, ImageStore(paths.image_store), config.classes, network, train_config,
                                         paths.models / model_kinds.CLASSIFIER.folder, data_hash,
                                         progress=progress_logger(context)), {}),
        "CXR feature network for fd_cxr, KID and conditional accuracy")
    per_class = pd.DataFrame([{"class": name, "val AUROC": f"{outcome.metrics[f'val_auroc_{name}']:.3f}"}
                              for name in config.classes if f"val_auroc_{name}" in outcome.metrics])
    return dg.MaterializeResult(metadata={
        "val_auroc_macro": round(outcome.metrics["val_auroc_macro"], 4),
        "val_accuracy": round(outcome.metrics["val_accuracy"], 4),
        "val_auroc_per_class": dg.MetadataValue.md(markdown_table(per_class)),
        **produced,
    })


# --- Shared by the evaluation assets ------------------------------------------------------------------


class EvaluationConfig(dg.Config):
    ddim_steps: int = 50
    spread_seeds: int = 4  # seeds per input for the sample-spread guard (1 turns it off)
    spread_images: int = 16  # the first this many test images get the extra seeds
    max_test_images: Optional[int] = None  # None: the whole test split
    bootstrap_resamples: int = 2000
    seed: int = 0
    device: str = "auto"
    # Champion / challenger: the new version becomes champion only if promotion_metric improves
    # and no guard gets worse by more than promotion_tolerance, on the same test split.
    promotion_metric: str = ""
    promotion_guards: list[str] = []
    promotion_tolerance: float = 0.0

    def rule(self, must_beat: tuple[tuple[str, str], ...], **names) -> PromotionRule:
        return PromotionRule(self.promotion_metric.format(**names),
                             tuple(guard.format(**names) for guard in self.promotion_guards),
                             tolerance=self.promotion_tolerance, must_beat=must_beat)


BEATS_BASELINE = "beats_classical_baseline"


def _baseline_check_spec(asset_name: str) -> list[dg.AssetCheckSpec]:
    return [dg.AssetCheckSpec(BEATS_BASELINE, asset=asset_name,
                              description="Warns when the evaluated model does not beat its classical baseline on the "
                                          "test split (bicubic, non-local means, chance-level conditional accuracy)")]


def _baseline_check(pairs: tuple[tuple[str, str], ...], metrics: dict[str, float]) -> dg.AssetCheckResult:
    """The promotion gate, shown in the UI: each model figure beside its baseline figure."""
    verdicts = promotion.against_baselines(pairs, metrics)
    return dg.AssetCheckResult(
        check_name=BEATS_BASELINE, passed=all(v.beaten for v in verdicts), severity=dg.AssetCheckSeverity.WARN,
        metadata={**{v.metric: float(round(v.value, 5)) for v in verdicts},
                  **{v.baseline: float(round(v.baseline_value, 5)) for v in verdicts},
                  "verdict": dg.MetadataValue.md("\n".join(f"- {v.describe()}" for v in verdicts))})


def _promote(context: dg.AssetExecutionContext, settings: CxrSettings, pointer: dict, metrics: dict[str, float],
             rule: PromotionRule, comparison_key: str,
             evaluate: Callable[[str], dict[str, float]]) -> tuple[promotion.Decision, Section]:
    """Challenger against champion on the same test split (``comparison_key``): the champion's
    recorded figures when its evaluation used the same split, else it is evaluated again now."""
    name, version = pointer["registered_model"], str(pointer["version"])
    champion_version, champion_tags = promotion.current_champion(name) or (None, {})
    champion_metrics = None
    if champion_version is not None and champion_version != version:
        champion_metrics = promotion.recorded_metrics(champion_tags, comparison_key)
        if champion_metrics is None:
            context.log.info(f"{name} v{champion_version} (champion) was evaluated on another test split: evaluating it now")
            champion_metrics = evaluate(str(tracking.registry_folder(name, champion_version,
                                                                     settings.paths().models / "registry")))
    decision = promotion.decide(rule, version, metrics, champion_version, champion_metrics)
    promotion.record_and_promote(name, decision, comparison_key)
    context.log.info(f"{name} v{version}: {'promoted to champion' if decision.promoted else 'not promoted'} "
                     f"({decision.reason})")
    text = (f"{name} v{version} is the challenger. Rule: {rule.metric} must improve; "
            f"{', '.join(rule.guards) or 'no guard'} must not get worse. Decision: "
            f"{'promoted to champion' if decision.promoted else 'not promoted'}: {decision.reason}.")
    return decision, Section(f"Promotion: {name}", text, [Table("Challenger against champion", decision.table())])


def _promotion_metadata(decisions: list[tuple[dict, promotion.Decision]]) -> dict:
    return {"promotion": dg.MetadataValue.md("\n\n".join(
        f"**{p['registered_model']} v{d.version}**: {'promoted to champion' if d.promoted else 'not promoted'} "
        f"({d.reason})\n\n" + markdown_table(d.table()) for p, d in decisions))}


def _split_rows(metadata: pd.DataFrame, split: str, limit: Optional[int] = None, labelled: bool = False) -> pd.DataFrame:
    rows = metadata[metadata["split"] == split]
    if labelled:
        rows = rows[rows["class_id"].notna()]
    rows = rows.reset_index(drop=True)
    return rows.iloc[:limit] if limit else rows


def _images(store: ImageStore, rows: pd.DataFrame) -> torch.Tensor:
    return StoreImages(store, rows).stack()


def _degraded(pair_dir, rows: pd.DataFrame) -> torch.Tensor:
    """The degraded versions of ``rows``' images from a pair store, in the same order."""
    index = pd.read_parquet(pair_dir / "index.parquet").set_index("image_id").loc[rows["image_id"]].reset_index()
    return _images(ImageStore(pair_dir), index)


def _training_curves(pointer: dict, title: str) -> Figure:
    steps, losses = tracking.metric_history(pointer["mlflow_run_id"], "train_loss")
    image = line_plot({"train loss": (steps, losses)}, f"{title}: training loss", "loss", log_y=True)
    return Figure(f"{title}: training loss", image, f"{pointer['registered_model']} v{pointer['version']}, "
                                                    f"MLflow run {pointer['mlflow_run_id']}")


def _is_headline(name: str) -> bool:
    return not name.endswith(("_std", "_ci_low", "_ci_high"))


def _publish(context: dg.AssetExecutionContext, settings: CxrSettings, mlflow_tracking: MlflowTracking, name: str,
             report: Report, metrics: dict[str, float], evaluated: list[tuple[dict, dict[str, float]]], params: dict,
             scores: Optional[pd.DataFrame] = None) -> dict:
    """Write the report, log the evaluation run, link it both ways; returns asset metadata."""
    folder = settings.paths().reports / name / f"{time.strftime('%Y%m%d-%H%M%S')}-{context.run.run_id[:8]}"
    html, markdown = write_report(report, folder)
    if scores is not None:
        atomic.write_csv(folder / "per_image_scores.csv", scores)
    tags = {"evaluation.models": ", ".join(f"{p['registered_model']} v{p['version']}" for p, _ in evaluated),
            "evaluation.model_run_ids": ",".join(p["mlflow_run_id"] for p, _ in evaluated), "evaluation.split": "test"}
    with mlflow_tracking.run(context, run_name=f"evaluate-{name}", tags=tags) as run:
        mlflow.log_params(params)
        mlflow.log_metrics({k: v for k, v in metrics.items() if np.isfinite(v)})
        mlflow.log_artifacts(str(folder), artifact_path="report")
    for pointer, model_metrics in evaluated:
        tracking.log_metrics_to_run(pointer["mlflow_run_id"], {k: v for k, v in model_metrics.items() if _is_headline(k)})
        tracking.tag_model_version(pointer["registered_model"], pointer["version"],
                                   {"evaluation_run_id": run.info.run_id, "evaluation_report": str(html)})
    context.log.info(f"report: {html}")
    return {
        "report": dg.MetadataValue.path(str(html)),
        "report_markdown": dg.MetadataValue.path(str(markdown)),
        "evaluation_mlflow_run_id": run.info.run_id,
        **{k: float(round(v, 5)) for k, v in metrics.items() if _is_headline(k) and np.isfinite(v)},
    }


# --- Super-resolution -----------------------------------------------------------------------------------


class SrEvaluationConfig(EvaluationConfig):
    full_chain: bool = False  # also sample with the full ancestral chain (T = 1000 steps: minutes on CPU)
    lr_start_strength: Optional[float] = 0.3  # also sample from the LR latent noised to this share of T; None: off
    promotion_metric: str = "psnr_sr_x{scale}_ddim"
    promotion_guards: list[str] = ["lr_consistency_psnr_sr_x{scale}_ddim"]


@dg.asset(group_name="evaluation", deps=[latent_sr, sr_pairs], kinds={"pytorch", "mlflow"},
          check_specs=_baseline_check_spec("sr_evaluation"), **HEAVY_STEP)
def sr_evaluation(context: dg.AssetExecutionContext, config: SrEvaluationConfig, settings: CxrSettings,
                  mlflow_tracking: MlflowTracking) -> dg.MaterializeResult:
    """Each latent SR model on the test split against bicubic, bicubic through the VAE and the VAE
    ceiling: PSNR/SSIM/MAE, LR-consistency and the spread over seeds, with DDIM (from noise and
    from the LR latent) and with the full chain; then champion/challenger promotion per scale."""
    paths = settings.paths()
    mlflow_tracking.activate()
    metadata = pd.read_parquet(paths.metadata)
    rows = _split_rows(metadata, "test", config.max_test_images)
    high_resolution = _images(ImageStore(paths.image_store), rows)
    sections, metrics, evaluated, tables, scores, decisions, must_beat = [], {}, [], [], [], [], ()
    for scale in scales_built(paths.pairs):
        if not paths.model_pointer(model_kinds.latent_sr(scale).key).exists():
            continue
        pointer = read_current_model(settings, model_kinds.latent_sr(scale).key)
        low_resolution = _degraded(sr_pair_dir(paths.pairs, scale), rows)

        def evaluate(model_dir: str):
            return evaluate_super_resolution(
                LatentSuperResolution.from_pretrained(model_dir, config.device), high_resolution, low_resolution,
                rows["image_id"], rows["patient_key"], ddim_steps=config.ddim_steps, full_chain=config.full_chain,
                lr_start_strength=config.lr_start_strength, spread_seeds=config.spread_seeds,
                spread_images=config.spread_images, seed=config.seed, resamples=config.bootstrap_resamples)

        context.log.info(f"evaluating {pointer['registered_model']} v{pointer['version']} on {len(rows)} test images")
        result = evaluate(pointer["model_dir"])
        section = result.section()
        section.figures.append(_training_curves(pointer, f"Latent SR x{scale}"))
        must_beat += result.must_beat()
        decision, promotion_section = _promote(context, settings, pointer, result.metrics(),
                                               config.rule(result.must_beat(), scale=scale),
                                               promotion.split_key(rows["image_id"]), lambda d: evaluate(d).metrics())
        sections += [section, promotion_section]
        metrics.update(result.metrics())
        evaluated.append((pointer, result.metrics()))
        decisions.append((pointer, decision))
        tables.append(f"**x{scale}**\n\n" + markdown_table(result.table()))
        scores.append(result.scores.assign(task=result.task))
    if not evaluated:
        raise FileNotFoundError("no trained latent SR model: materialize latent_sr first")
    report = Report("Super-resolution evaluation", _summary_text(rows, evaluated), sections)
    produced = _publish(context, settings, mlflow_tracking, "sr_evaluation", report, metrics, evaluated,
                        config.model_dump(), pd.concat(scores, ignore_index=True))
    return dg.MaterializeResult(metadata={"summary": dg.MetadataValue.md("\n\n".join(tables)), "test_images": len(rows),
                                          **_promotion_metadata(decisions), **produced},
                                check_results=[_baseline_check(must_beat, metrics)])


def _summary_text(rows: pd.DataFrame, evaluated: list[tuple[dict, dict]]) -> str:
    models = ", ".join(f"{p['registered_model']} v{p['version']}" for p, _ in evaluated)
    return (f"{models}, evaluated on the test split: {len(rows)} images of {rows['patient_key'].nunique()} patients "
            f"(patient-level split, no patient shared with train or val). All intensities in [0, 1]; PSNR in dB with "
            f"data range 1.")


# --- Denoising ------------------------------------------------------------------------------------------


class DenoisingEvaluationConfig(EvaluationConfig):
    nlm_factors: list[float] = list(NLM_FACTORS)  # candidates for NLM's h / sigma, tuned on val
    strengths: list[float] = list(DENOISER_STRENGTHS)  # candidates for the denoiser's start, tuned on val
    val_images: int = 24  # validation images both are tuned on
    promotion_metric: str = "psnr_denoise_i0_1000_diffusion"  # the lowest dose: the hardest case
    promotion_guards: list[str] = ["ssim_denoise_i0_1000_diffusion"]


@dg.asset(group_name="evaluation", deps=[low_dose_denoiser, low_dose_pairs], kinds={"pytorch", "mlflow"},
          check_specs=_baseline_check_spec("denoising_evaluation"), **HEAVY_STEP)
def denoising_evaluation(context: dg.AssetExecutionContext, config: DenoisingEvaluationConfig, settings: CxrSettings,
                         mlflow_tracking: MlflowTracking) -> dg.MaterializeResult:
    """The low-dose denoiser per dose level on the test split, against the noisy input and
    non-local means (both tuned on val), then champion/challenger promotion."""
    paths = settings.paths()
    mlflow_tracking.activate()
    pointer = read_current_model(settings, model_kinds.DENOISER.key)
    metadata = pd.read_parquet(paths.metadata)
    rows = _split_rows(metadata, "test", config.max_test_images)
    val_rows = _split_rows(metadata, "val", config.val_images)
    store = ImageStore(paths.image_store)
    clean, val_clean = _images(store, rows), _images(store, val_rows)
    doses = doses_built(paths.pairs)
    if not doses:
        raise FileNotFoundError("no low-dose pairs: materialize low_dose_pairs first")
    noisy = {dose: (_degraded(low_dose_pair_dir(paths.pairs, dose), val_rows),
                    _degraded(low_dose_pair_dir(paths.pairs, dose), rows)) for dose in doses}

    def evaluate(model_dir: str):
        results, model = [], LowDoseDenoiser.from_pretrained(model_dir, config.device)
        for dose, (val_noisy, test_noisy) in noisy.items():
            factor, nlm_search = tune_nlm(val_clean, val_noisy, config.nlm_factors)
            strength, strength_search = tune_denoiser_strength(model, val_clean, val_noisy, dose, config.strengths,
                                                               config.ddim_steps, config.seed)
            context.log.info(f"I0 {dose:g}: on val, NLM h = {factor:g} sigma, denoiser strength {strength:g}")
            tuning = [Table(f"NLM h search on val, I0 = {dose:g}", nlm_search.round(3)),
                      Table(f"Denoiser strength search on val, I0 = {dose:g}", strength_search.round(3))]
            results.append(evaluate_denoising(model, clean, test_noisy, rows["image_id"], rows["patient_key"], dose,
                                              factor, strength, tuning, ddim_steps=config.ddim_steps,
                                              spread_seeds=config.spread_seeds, spread_images=config.spread_images,
                                              seed=config.seed, resamples=config.bootstrap_resamples))
        return results

    def merged_metrics(results) -> dict[str, float]:
        return {k: v for result in results for k, v in result.metrics().items()}

    results = evaluate(pointer["model_dir"])
    metrics = merged_metrics(results)
    must_beat = tuple(pair for result in results for pair in result.must_beat())  # every dose level
    decision, promotion_section = _promote(context, settings, pointer, metrics, config.rule(must_beat),
                                           promotion.split_key(rows["image_id"]), lambda d: merged_metrics(evaluate(d)))
    sections = [result.section() for result in results]
    sections += [Section("Training", figures=[_training_curves(pointer, "Low-dose denoiser")]), promotion_section]
    report = Report("Low-dose denoising evaluation", _summary_text(rows, [(pointer, metrics)]), sections)
    produced = _publish(context, settings, mlflow_tracking, "denoising_evaluation", report, metrics,
                        [(pointer, metrics)], config.model_dump(),
                        pd.concat([r.scores.assign(task=r.task) for r in results], ignore_index=True))
    tables = [f"**I0 = {r.task.removeprefix('denoise_i0_')}**\n\n" + markdown_table(r.table()) for r in results]
    return dg.MaterializeResult(metadata={"summary": dg.MetadataValue.md("\n\n".join(tables)), "test_images": len(rows),
                                          **_promotion_metadata([(pointer, decision)]), **produced},
                                check_results=[_baseline_check(must_beat, metrics)])


# --- Generation -----------------------------------------------------------------------------------------


class GenerationEvaluationConfig(EvaluationConfig):
    samples_per_class: int = 10  # for conditional accuracy and diversity; raise for publication figures
    fd_samples: Optional[int] = None  # generated images for fd_cxr/KID/FID; None: as many as real test images
    guidance_scale: Optional[float] = None  # None: the model's default
    fid_inception_weights: Optional[str] = None  # path; None: $CXR_FID_INCEPTION_WEIGHTS, else not computed
    fid_inception_sha256: Optional[str] = None  # pin the file's full digest
    promotion_metric: str = "fd_cxr_class_ddpm"
    promotion_guards: list[str] = ["cond_acc_class_ddpm"]


@dg.asset(group_name="evaluation", deps=[class_ddpm, cxr_classifier], kinds={"pytorch", "mlflow"},
          check_specs=_baseline_check_spec("generation_evaluation"), **HEAVY_STEP)
def generation_evaluation(context: dg.AssetExecutionContext, config: GenerationEvaluationConfig, settings: CxrSettings,
                          mlflow_tracking: MlflowTracking) -> dg.MaterializeResult:
    """The class-conditional DDPM against real test images: fd_cxr and KID on the CXR feature
    network, conditional accuracy, MS-SSIM diversity, and Inception FID when its weights are
    available locally."""
    paths = settings.paths()
    mlflow_tracking.activate()
    pointer = read_current_model(settings, model_kinds.CLASS_DDPM.key)
    classifier = read_current_model(settings, model_kinds.CLASSIFIER.key)
    metadata = pd.read_parquet(paths.metadata)
    rows = _split_rows(metadata, "test", config.max_test_images, labelled=True)
    val_rows = _split_rows(metadata, "val", labelled=True)
    store = ImageStore(paths.image_store)
    weights = config.fid_inception_weights or os.environ.get("CXR_FID_INCEPTION_WEIGHTS")
    real_test, real_val = _images(store, rows), _images(store, val_rows)

    def evaluate(model_dir: str):
        return evaluate_generation(ClassConditionalGenerator.from_pretrained(model_dir, config.device),
                                   classifier["model_dir"], real_test, rows["class_id"].astype(int).to_numpy(),
                                   real_val, samples_per_class=config.samples_per_class, fd_samples=config.fd_samples,
                                   ddim_steps=config.ddim_steps, guidance=config.guidance_scale, seed=config.seed,
                                   inception_weights=weights, inception_sha256=config.fid_inception_sha256,
                                   device=config.device)

    result = evaluate(pointer["model_dir"])
    context.log.info(f"fid_inception: {result.fid.reason}")
    section = result.section()
    section.figures.append(_training_curves(pointer, "Class-conditional DDPM"))
    metrics = result.metrics()
    # fd_cxr and KID depend on the feature network: a comparison needs the same classifier too.
    comparison_key = f"{promotion.split_key(rows['image_id'])}-classifier-v{classifier['version']}"
    decision, promotion_section = _promote(context, settings, pointer, metrics, config.rule(result.must_beat()),
                                           comparison_key,
                                           lambda d: evaluate(d).metrics())
    report = Report("Class-conditional generation evaluation",
                    f"{pointer['registered_model']} v{pointer['version']} scored with {classifier['registered_model']} "
                    f"v{classifier['version']} against the {len(rows)} single-label test images.",
                    [section, promotion_section])
    params = {**config.model_dump(), "fid_inception": result.fid.reason, "classifier": f"v{classifier['version']}"}
    produced = _publish(context, settings, mlflow_tracking, "generation_evaluation", report, metrics,
                        [(pointer, metrics)], params)
    return dg.MaterializeResult(metadata={
        "summary": dg.MetadataValue.md(markdown_table(result.headline()) + "\n\n" + markdown_table(result.per_class())),
        "fid_inception_status": result.fid.reason,
        **_promotion_metadata([(pointer, decision)]),
        **produced,
    }, check_results=[_baseline_check(result.must_beat(), metrics)])
