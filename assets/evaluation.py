"""Evaluation stage: the CXR feature classifier, then each model evaluated on the test split.

Each evaluation asset calls one suite from ``cxr_pipeline.evaluation.suites`` and publishes what
it returns as one MLflow run tagged with the Dagster lineage and the model versions it evaluated:
every figure as a metric (``<metric>_<task>_<method>``, see the README), a self-contained HTML
report and its Markdown twin (also artifacts), a link to it from each evaluated model's
training run, the registered version tagged with the evaluation run, and a WARN check that
says whether the model beats its classical baseline.
"""

import dataclasses
import os
import time
from typing import Optional

import dagster as dg
import pandas as pd

from cxr_pipeline.data.pairs import doses_built, scales_built
from cxr_pipeline.evaluation.restoration import DENOISER_STRENGTHS, NLM_FACTORS
from cxr_pipeline.evaluation.publish import evaluation_tags, publish_outcome, write_outcome
from cxr_pipeline.evaluation.caps import Draw, EvaluationCaps, caps_for, split_draw
from cxr_pipeline.evaluation.suites import (EvaluationOutcome, PromotionPolicy, SamplingBudget, split_rows,
                                            synthetic_utility_suite)
from cxr_pipeline.evaluation.synthetic_utility import UTILITY_PROFILES
from cxr_pipeline.evaluation.text_generation import GUIDANCE_SWEEP
from cxr_pipeline import compute, kinds
from cxr_pipeline.model_record import current_model, has_current_model
from cxr_pipeline.reports.document import markdown_table
from resources import CxrSettings, MlflowTracking

from .diffusion import arbitrary_sr, class_ddpm, latent_sr, low_dose_denoiser
from .labels import image_metadata
from .training import HEAVY_STEP, TRAINING_STEP, ahead, recipe_config, train_one
from .pairs import low_dose_pairs, sr_pairs
from .text import text_ldm



ClassifierTrainingConfig = recipe_config(kinds.CLASSIFIER.recipe, "ClassifierTrainingConfig")


@dg.asset(group_name="evaluation", deps=[image_metadata], kinds={"pytorch", "mlflow"}, **TRAINING_STEP)
def cxr_classifier(context: dg.AssetExecutionContext, config: ClassifierTrainingConfig, settings: CxrSettings,
                   mlflow_tracking: MlflowTracking) -> dg.MaterializeResult:
    """The CXR feature network: a pathology classifier on the single-label classes, trained on the
    train split with class-balanced batches and validated (AUROC per class) on val. Its features
    and predictions score the generator; registered as ``cxr-feature-classifier``."""
    recipe = config.recipe()
    registered, produced = train_one(context, kinds.CLASSIFIER, recipe, settings, mlflow_tracking)
    metrics = registered.outcome.metrics
    per_class = pd.DataFrame([{"class": name, "val AUROC": f"{metrics[f'val_auroc_{name}']:.3f}"}
                              for name in recipe.classes if f"val_auroc_{name}" in metrics])
    return dg.MaterializeResult(metadata={
        "val_auroc_macro": round(metrics["val_auroc_macro"], 4),
        "val_accuracy": round(metrics["val_accuracy"], 4),
        "val_auroc_per_class": dg.MetadataValue.md(markdown_table(per_class)),
        **produced,
    })


# --- Shared by the evaluation assets ------------------------------------------------------------------


class EvaluationConfig(dg.Config):
    ddim_steps: int = 50
    spread_seeds: int = 4  # seeds per input for the sample-spread guard (1 turns it off)
    spread_images: int = 16  # the first this many test images get the extra seeds
    # Caps on the images scored per split, drawn as whole patients (cxr_pipeline/evaluation/caps.py);
    # None: the profile's cap (demo: above every split, so all of it; full: 1000 test images)
    max_test_images: Optional[int] = None
    max_val_images: Optional[int] = None  # val-side choices and references (guidance sweeps, real-val FD)
    max_train_reference: Optional[int] = None  # training images memorization and retrieval compare against
    bootstrap_resamples: int = 2000
    seed: int = 0
    device: str = "auto"
    # The UNet's autocast while sampling: "auto" (bf16 on CUDA, and on CPUs with native bf16 for the
    # kinds whose val figures held in bf16: bench/sampling_precision.py), "no" (fp32), "bf16", "fp16"
    precision: str = "auto"
    # Champion / challenger: the new version becomes champion only if promotion_metric improves
    # and no guard gets worse by more than promotion_tolerance, on the same test split.
    promotion_metric: str = ""
    promotion_guards: list[str] = []
    promotion_tolerance: float = 0.0
    # Fine detail (metrics/detail.py) may not fall below the champion's beyond the challenger's interval.
    promotion_detail_guards: list[str] = []

    def budget(self) -> SamplingBudget:
        return SamplingBudget(ddim_steps=self.ddim_steps, spread_seeds=self.spread_seeds,
                              spread_images=self.spread_images, bootstrap_resamples=self.bootstrap_resamples,
                              seed=self.seed, device=self.device, precision=self.precision)

    def policy(self) -> PromotionPolicy:
        return PromotionPolicy(self.promotion_metric, tuple(self.promotion_guards), self.promotion_tolerance,
                               tuple(self.promotion_detail_guards))

    def caps(self, settings: CxrSettings) -> EvaluationCaps:
        return _caps(self, settings)


def _caps(config: dg.Config, settings: CxrSettings) -> EvaluationCaps:
    """The profile's caps with the ones the config sets."""
    base = caps_for(settings.profile_spec().name)
    overrides = {"test_images": getattr(config, "max_test_images", None),
                 "val_images": getattr(config, "max_val_images", None),
                 "train_reference": getattr(config, "max_train_reference", None),
                 "utility_train_images": getattr(config, "max_train_images", None)}
    return dataclasses.replace(base, **{k: v for k, v in overrides.items() if v is not None})


BEATS_BASELINE = "beats_classical_baseline"


def _baseline_check_spec(asset_name: str) -> list[dg.AssetCheckSpec]:
    return [dg.AssetCheckSpec(BEATS_BASELINE, asset=asset_name,
                              description="Warns when the evaluated model does not beat its classical baseline on the "
                                          "test split (bicubic, non-local means, chance-level conditional accuracy)")]


def _publish(context: dg.AssetExecutionContext, settings: CxrSettings, mlflow_tracking: MlflowTracking,
             config: dg.Config, outcome: EvaluationOutcome, check: Optional[dg.AssetCheckResult] = None,
             draws: tuple[Draw, ...] = (), **extra) -> dg.MaterializeResult:
    """Report folder, MLflow run (tagged with the Dagster lineage), asset metadata, and the
    promotion gate shown in the UI as a check: each model figure beside its baseline figure
    (or the asset's own ``check``). ``draws``: the test (and val) images the asset drew for
    the suite; suites that draw their own have noted them already."""
    outcome.note_draws(draws)
    for draw in outcome.draws:
        context.log.info(f"scored {draw.describe()}")
    folder = settings.paths().reports / outcome.name / f"{time.strftime('%Y%m%d-%H%M%S')}-{context.run.run_id[:8]}"
    html, markdown = write_outcome(outcome, folder)
    outcome.params = {**config.model_dump(), **outcome.params}
    with mlflow_tracking.run(context, run_name=f"evaluate-{outcome.name}", tags=evaluation_tags(outcome),
                             experiment=mlflow_tracking.evaluation_experiment) as run:
        run_id = publish_outcome(outcome, folder, html)
    context.log.info(f"report: {html}")
    verdicts = outcome.baseline_verdicts()
    check = check or dg.AssetCheckResult(
        check_name=BEATS_BASELINE, passed=all(v.beaten for v in verdicts), severity=dg.AssetCheckSeverity.WARN,
        metadata={**{v.metric: float(round(v.value, 5)) for v in verdicts},
                  **{v.baseline: float(round(v.baseline_value, 5)) for v in verdicts},
                  "verdict": dg.MetadataValue.md("\n".join(f"- {v.describe()}" for v in verdicts))})
    return dg.MaterializeResult(metadata={
        "summary": dg.MetadataValue.md(outcome.summary),
        **({"promotion": dg.MetadataValue.md(outcome.promotion_summary())} if outcome.promotions else {}),
        **extra,
        "images_scored": dg.MetadataValue.md("\n".join(f"- {d.describe()}" for d in outcome.draws)),
        "report": dg.MetadataValue.path(str(html)),
        "report_markdown": dg.MetadataValue.path(str(markdown)),
        "evaluation_mlflow_run_id": run_id,
        **mlflow_tracking.run_link(run, "evaluation_mlflow_run_url"),
        **outcome.headline(),
    }, check_results=[check])


# --- The evaluations ------------------------------------------------------------------------------------


class SrEvaluationConfig(EvaluationConfig):
    full_chain: bool = False  # also sample with the full ancestral chain (T = 1000 steps: minutes on CPU)
    lr_start_strength: Optional[float] = 0.3  # also sample from the LR latent noised to this share of T; None: off
    promotion_metric: str = "psnr_sr_x{scale}_ddim"
    promotion_guards: list[str] = ["lr_consistency_psnr_sr_x{scale}_ddim"]
    promotion_detail_guards: list[str] = ["detail_sr_x{scale}_ddim"]


@dg.asset(group_name="evaluation", deps=[latent_sr, sr_pairs], kinds={"pytorch", "mlflow"},
          check_specs=_baseline_check_spec("sr_evaluation"), **HEAVY_STEP)
def sr_evaluation(context: dg.AssetExecutionContext, config: SrEvaluationConfig, settings: CxrSettings,
                  mlflow_tracking: MlflowTracking) -> dg.MaterializeResult:
    """Each latent SR model on the test split against bicubic, bicubic through the VAE and the VAE
    ceiling: PSNR/SSIM/MAE, LR-consistency and the spread over seeds, with DDIM (from noise and
    from the LR latent) and optionally the full chain; then champion/challenger promotion per scale."""
    paths = settings.paths()
    compute.count_as_heavy_step()  # its share of the cores beside the other heavy steps
    mlflow_tracking.activate()
    test = split_draw(pd.read_parquet(paths.metadata), "test", config.caps(settings).test_images, seed=config.seed)
    rows = test.rows
    models = [(scale, current_model(paths, kinds.LATENT_SR.at_scale(scale).key))
              for scale in scales_built(paths.pairs) if has_current_model(paths, kinds.LATENT_SR.at_scale(scale).key)]
    outcome = kinds.LATENT_SR.suite(models, rows, paths.image_store, paths.pairs, config.budget(), config.policy(),
                                     paths.registry_cache, full_chain=config.full_chain,
                                     lr_start_strength=config.lr_start_strength, log=context.log.info)
    return _publish(context, settings, mlflow_tracking, config, outcome, draws=(test,), test_images=len(rows))


class ArbitrarySrEvaluationConfig(EvaluationConfig):
    # x0 prediction of a residual: on val 20 DDIM steps score what 50 do, for the arbitrary-scale
    # and the fixed-scale model alike (bench/arbitrary_sr.py), in less than half the time
    ddim_steps: int = 20
    scales: list[float] = [2.0, 2.5, 3.0, 4.0, 6.0]  # x6 is outside the default training range
    degradation_mix: bool = True  # LR made as sr_pairs makes it (at x2 and x4, the same images)
    pair_seed: int = 0
    promotion_metric: str = "psnr_gain_sr_mean_arbitrary"  # the paired gain over bicubic, averaged over scales
    promotion_guards: list[str] = ["lr_consistency_psnr_sr_x4_arbitrary"]
    promotion_detail_guards: list[str] = ["detail_sr_x4_arbitrary"]


@dg.asset(group_name="evaluation", deps=[arbitrary_sr, latent_sr, sr_pairs], kinds={"pytorch", "mlflow"},
          check_specs=_baseline_check_spec("arbitrary_sr_evaluation"), **HEAVY_STEP)
def arbitrary_sr_evaluation(context: dg.AssetExecutionContext, config: ArbitrarySrEvaluationConfig,
                            settings: CxrSettings, mlflow_tracking: MlflowTracking) -> dg.MaterializeResult:
    """The arbitrary-scale model on the test split at each scale against bicubic at that scale, its
    latent path without diffusion and, where trained, the fixed-scale model on the same inputs:
    PSNR/SSIM/MAE, LR-consistency, spread, the gain by scale; then champion/challenger promotion."""
    paths = settings.paths()
    compute.count_as_heavy_step()  # its share of the cores beside the other heavy steps
    mlflow_tracking.activate()
    test = split_draw(pd.read_parquet(paths.metadata), "test", config.caps(settings).test_images, seed=config.seed)
    rows = test.rows
    fixed = [(scale, current_model(paths, kinds.LATENT_SR.at_scale(scale).key))
             for scale in scales_built(paths.pairs) if has_current_model(paths, kinds.LATENT_SR.at_scale(scale).key)]
    outcome = kinds.ARBITRARY_SR.suite(
        current_model(paths, kinds.ARBITRARY_SR.key), fixed, rows, paths.image_store, config.scales,
        config.budget(), config.policy(), paths.registry_cache, degradation_mix=config.degradation_mix,
        pair_seed=config.pair_seed, log=context.log.info)
    return _publish(context, settings, mlflow_tracking, config, outcome, draws=(test,), test_images=len(rows))


class DenoisingEvaluationConfig(EvaluationConfig):
    # The denoiser predicts x0 of a residual, so a coarse chain loses nothing: on val, 20 DDIM steps
    # against 50 are +0.18 / +0.09 / -0.13 dB at I0 1000 / 3000 / 10000 in 0.43x the time
    # (bench/denoiser_sampling_steps.py).
    ddim_steps: int = 20
    nlm_factors: list[float] = list(NLM_FACTORS)  # candidates for NLM's h / sigma, tuned on val
    strengths: list[float] = list(DENOISER_STRENGTHS)  # candidates for the denoiser's start, tuned on val
    val_images: int = 24  # validation images both are tuned on
    promotion_metric: str = "psnr_denoise_i0_1000_diffusion"  # the lowest dose: the hardest case
    promotion_guards: list[str] = ["ssim_denoise_i0_1000_diffusion"]
    promotion_detail_guards: list[str] = ["detail_denoise_i0_1000_diffusion"]


@dg.asset(group_name="evaluation", deps=[low_dose_denoiser, low_dose_pairs], kinds={"pytorch", "mlflow"},
          check_specs=_baseline_check_spec("denoising_evaluation"), **HEAVY_STEP)
def denoising_evaluation(context: dg.AssetExecutionContext, config: DenoisingEvaluationConfig, settings: CxrSettings,
                         mlflow_tracking: MlflowTracking) -> dg.MaterializeResult:
    """The low-dose denoiser per dose level on the test split, against the noisy input and
    non-local means (both tuned on val), then champion/challenger promotion."""
    paths = settings.paths()
    compute.count_as_heavy_step()  # its share of the cores beside the other heavy steps
    mlflow_tracking.activate()
    metadata = pd.read_parquet(paths.metadata)
    test = split_draw(metadata, "test", config.caps(settings).test_images, seed=config.seed)
    rows = test.rows
    outcome = kinds.DENOISER.suite(current_model(paths, kinds.DENOISER.key), rows,
                              split_rows(metadata, "val", config.val_images), paths.image_store, paths.pairs,
                              doses_built(paths.pairs), config.budget(), config.policy(), paths.registry_cache,
                              nlm_factors=config.nlm_factors, strengths=config.strengths, log=context.log.info)
    return _publish(context, settings, mlflow_tracking, config, outcome, draws=(test,), test_images=len(rows))


class GenerationEvaluationConfig(EvaluationConfig):
    samples_per_class: int = 10  # for conditional accuracy and diversity; raise for publication figures
    fd_samples: Optional[int] = None  # generated images for fd_cxr/KID/FID; None: as many as real test images
    guidance_scale: Optional[float] = None  # None: the model's default
    fid_inception_weights: Optional[str] = None  # path; None: $CXR_FID_INCEPTION_WEIGHTS, else not computed
    fid_inception_sha256: Optional[str] = None  # pin the file's full digest
    promotion_metric: str = "fd_cxr_class_ddpm"
    promotion_guards: list[str] = ["cond_acc_class_ddpm"]
    promotion_detail_guards: list[str] = ["detail_class_ddpm"]


@dg.asset(group_name="evaluation", deps=[class_ddpm, cxr_classifier], kinds={"pytorch", "mlflow"},
          check_specs=_baseline_check_spec("generation_evaluation"), **HEAVY_STEP)
def generation_evaluation(context: dg.AssetExecutionContext, config: GenerationEvaluationConfig, settings: CxrSettings,
                          mlflow_tracking: MlflowTracking) -> dg.MaterializeResult:
    """The class-conditional DDPM against real test images: fd_cxr and KID on the CXR feature
    network, conditional accuracy, MS-SSIM diversity, and Inception FID when its weights are
    available locally."""
    paths = settings.paths()
    compute.count_as_heavy_step()  # its share of the cores beside the other heavy steps
    mlflow_tracking.activate()
    metadata = pd.read_parquet(paths.metadata)
    caps = config.caps(settings)
    test, val = (split_draw(metadata, split, cap, labelled=True, seed=config.seed)
                 for split, cap in (("test", caps.test_images), ("val", caps.val_images)))
    rows = test.rows
    outcome = kinds.CLASS_DDPM.suite(
        current_model(paths, kinds.CLASS_DDPM.key), current_model(paths, kinds.CLASSIFIER.key),
        rows, val.rows, paths.image_store, config.budget(), config.policy(),
        paths.registry_cache, samples_per_class=config.samples_per_class, fd_samples=config.fd_samples,
        guidance_scale=config.guidance_scale,
        inception_weights=config.fid_inception_weights or os.environ.get("CXR_FID_INCEPTION_WEIGHTS"),
        inception_sha256=config.fid_inception_sha256, log=context.log.info)
    return _publish(context, settings, mlflow_tracking, config, outcome, draws=(test, val), test_images=len(rows),
                    fid_inception_status=outcome.params["fid_inception"])


class TextGenerationEvaluationConfig(EvaluationConfig):
    ddim_steps: int = 20
    guidance_scales: list[float] = list(GUIDANCE_SWEEP)  # swept on val; the most consistent within 3x the real FD
    guidance_scale: Optional[float] = None  # set: use it and skip the sweep
    consistency_samples: int = 2  # samples per normal or single-finding test report for prompt consistency
    sweep_samples: int = 2  # the same on val, per guidance scale of the sweep
    promotion_metric: str = "prompt_consistency_text_ldm"
    promotion_guards: list[str] = ["fd_cxr_text_ldm", "memorized_share_text_ldm_feature"]
    promotion_detail_guards: list[str] = ["detail_text_ldm"]


@dg.asset(group_name="evaluation", deps=[text_ldm, cxr_classifier], kinds={"pytorch", "mlflow"},
          check_specs=_baseline_check_spec("text_generation_evaluation"), **ahead(HEAVY_STEP, 1))
def text_generation_evaluation(context: dg.AssetExecutionContext, config: TextGenerationEvaluationConfig,
                               settings: CxrSettings, mlflow_tracking: MlflowTracking) -> dg.MaterializeResult:
    """The text-conditional model sampled from the test split's own reports: prompt consistency
    (per finding, against the model without its prompt and a retrieval baseline), negation,
    fd_cxr / KID / precision-recall-density-coverage, memorization against the training images,
    within-prompt diversity; guidance chosen on val; then champion/challenger promotion."""
    paths = settings.paths()
    compute.count_as_heavy_step()  # its share of the cores beside the other heavy steps
    mlflow_tracking.activate()
    metadata = pd.read_parquet(paths.metadata)
    outcome = kinds.TEXT_LDM.suite(
        current_model(paths, kinds.TEXT_LDM.key), current_model(paths, kinds.CLASSIFIER.key),
        metadata, paths.image_store, config.budget(), config.policy(), paths.registry_cache,
        caps=config.caps(settings), guidance_scales=config.guidance_scales, guidance_scale=config.guidance_scale,
        consistency_samples=config.consistency_samples, sweep_samples=config.sweep_samples, log=context.log.info)
    return _publish(context, settings, mlflow_tracking, config, outcome, test_reports=outcome.params["test_reports"])


class SyntheticUtilityConfig(dg.Config):
    """Unset fields take the profile's value (``UTILITY_PROFILES``: the demo trims the classifier
    and the seeds; ``full`` runs all six arms, the feature classifier's network, five seeds)."""

    arms: Optional[list[str]] = None  # of: real, real_synthetic, real_class, real_text, synthetic, real_balanced
    seeds: Optional[int] = None  # classifier trainings per arm
    classifier_steps: Optional[int] = None
    classifier_widths: Optional[list[int]] = None
    synthetic_ratio: float = 1.0  # generated images per real image of each class, in the matched arms
    # 10 DDIM steps: on val the arms score what 20 give (real + synthetic -0.006 against -0.008
    # macro AUROC, bench/synthetic_utility.py) in 0.58x the generation time
    ddim_steps: int = 10
    class_guidance: Optional[float] = None  # None: the model's saved default
    text_guidance: Optional[float] = None
    bootstrap_resamples: int = 2000
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"  # the generators' sampling precision, as in EvaluationConfig
    # Caps on the real images per split, drawn as whole patients (cxr_pipeline/evaluation/caps.py);
    # None: the profile's. The training cap also sizes the generated pool.
    max_train_images: Optional[int] = None
    max_val_images: Optional[int] = None
    max_test_images: Optional[int] = None

    def profile(self, name: str):
        base = UTILITY_PROFILES[name]
        classifier = (dataclasses.replace(base.classifier, widths=tuple(self.classifier_widths))
                      if self.classifier_widths else base.classifier)
        return dataclasses.replace(base, arms=tuple(self.arms or base.arms), seeds=self.seeds or base.seeds,
                                   steps=self.classifier_steps or base.steps, classifier=classifier)


NOT_WORSE = "synthetic_not_worse_than_real"


@dg.asset(group_name="evaluation", deps=[class_ddpm, text_ldm, image_metadata], kinds={"pytorch", "mlflow"},
          check_specs=[dg.AssetCheckSpec(NOT_WORSE, asset="synthetic_utility",
                                         description="Warns when a classifier trained on real plus generated images "
                                                     "is worse on the real test split than one trained on real images "
                                                     "only (the macro-AUROC difference's interval lies below 0)")],
          **ahead(TRAINING_STEP, 1))
def synthetic_utility(context: dg.AssetExecutionContext, config: SyntheticUtilityConfig, settings: CxrSettings,
                      mlflow_tracking: MlflowTracking) -> dg.MaterializeResult:
    """Does the synthetic data help? One classifier recipe trained on real, real + generated,
    generated only and real + generated-to-balance images (several seeds each), scored on the
    real test split: accuracy, macro and per-class AUROC with paired patient-bootstrap intervals
    of the difference to real only. Generated from training labels and reports only."""
    paths = settings.paths()
    compute.count_as_heavy_step()  # its share of the cores beside the other heavy steps
    mlflow_tracking.activate()
    profile = config.profile(settings.profile_spec().name)
    outcome = synthetic_utility_suite(
        current_model(paths, kinds.CLASS_DDPM.key), current_model(paths, kinds.TEXT_LDM.key),
        pd.read_parquet(paths.metadata), paths.image_store, paths.models / "synthetic_utility", profile.arms,
        profile=profile, caps=_caps(config, settings), ratio=config.synthetic_ratio, ddim_steps=config.ddim_steps,
        class_guidance=config.class_guidance, text_guidance=config.text_guidance,
        bootstrap_resamples=config.bootstrap_resamples, seed=config.seed, device=config.device,
        precision=config.precision, log=context.log.info)
    metrics = outcome.metrics
    high = metrics.get("auroc_utility_diff_real_synthetic_ci_high")
    difference = {k: float(round(metrics[k], 5)) for k in ("auroc_utility_diff_real_synthetic",
                                                            "auroc_utility_diff_real_synthetic_ci_low",
                                                            "auroc_utility_diff_real_synthetic_ci_high") if k in metrics}
    check = dg.AssetCheckResult(
        check_name=NOT_WORSE, passed=high is None or high >= 0, severity=dg.AssetCheckSeverity.WARN,
        metadata={**difference, "verdict": "real_synthetic not run" if high is None else
                  ("real + synthetic is not worse than real only" if high >= 0 else
                   "real + synthetic is worse than real only: the whole interval lies below 0")})
    return _publish(context, settings, mlflow_tracking, config, outcome, check=check,
                    generated_images=outcome.params["generated_images"], seeds=profile.seeds)
