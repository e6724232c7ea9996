"""The evaluation suites, without Dagster: each scores the current model on the test split next
to its baselines, challenges the registry's champion on the same images (``score_and_challenge``,
the skeleton they share), and assembles the report. Scoring only: publishing (report folder,
MLflow run, registry tags and aliases) is ``publish.py``; the statistics are
``cxr_pipeline.metrics.statistics``; rendering is ``cxr_pipeline.reports``.

An asset only reads its inputs, calls one suite (its model kind's ``suite``), opens the MLflow run
its resource tags with the Dagster lineage, publishes, and turns the outcome into asset metadata
and the baseline check.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pandas as pd
import torch

from .. import promotion, tracking
from ..data.degrade import DegradationMix
from ..data.image_store import ImageStore
from ..data.pairs import low_dose_pair_dir, low_resolution_at, sr_pair_dir
from ..data.labels.metadata import content_hash
from ..model_record import ModelRecord
from ..model_source import registry_folder
from ..models.batches import StoreImages
from ..models.classifier import labelled_rows
from ..models.diffusion import describe
from ..models.training import TrainConfig, run_key
from ..models.pipelines import (ArbitraryScaleSuperResolution, ClassConditionalGenerator, DiffusionPipeline,
                                LatentSuperResolution, LowDoseDenoiser, TextConditionalGenerator)
from ..promotion import Decision, PromotionRule
from ..reports.document import Figure, Report, Section, Table, markdown_table
from ..reports.plots import interval_plot, line_plot
from .generation import evaluate_generation
from ..reports.synthetic_utility import arms_table, example_grid, goals_table, utility_section
from .synthetic_utility import (CLASS_GENERATOR, GENERATORS, REAL, TEXT_GENERATOR, SyntheticUtilityResult, UtilityProfile,
                                arm_training_set, arms_named, check_provenance, generate_pool, pool_plan,
                                train_arm, training_reports, utility_scores)
from .caps import Draw, EvaluationCaps, draw_patients
from .text_generation import GUIDANCE_SWEEP, evaluate_text_generation, prompts_of, reported_rows
from .restoration import (centre_crop, evaluate_arbitrary_scale, evaluate_denoising, evaluate_super_resolution,
                          exact_side, tune_denoiser_strength, tune_nlm)

Log = Callable[[str], None]


@dataclass(frozen=True)
class SamplingBudget:
    """How hard every suite samples and resamples; the same knobs for every model."""

    ddim_steps: int = 50
    spread_seeds: int = 4  # seeds per input for the sample-spread guard (1 turns it off)
    spread_images: int = 16  # the first this many test images get the extra seeds
    bootstrap_resamples: int = 2000
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"  # the UNet's autocast while sampling (DiffusionPipeline): "auto", "no", "bf16", "fp16"

    def params(self, pipeline: type[DiffusionPipeline]) -> dict:
        """The budget for the run's params, with the precision this machine samples ``pipeline`` in."""
        return {**asdict(self), "sampling_precision": pipeline.resolved_precision(self.precision, self.device)}


@dataclass(frozen=True)
class PromotionPolicy:
    """A promotion rule with ``{scale}``-style placeholders, filled per evaluated model."""

    metric: str
    guards: tuple[str, ...] = ()
    tolerance: float = 0.0
    detail_guards: tuple[str, ...] = ()  # fine detail: not below the champion's beyond the interval

    def rule(self, must_beat: tuple[tuple[str, str], ...], **names) -> PromotionRule:
        return PromotionRule(self.metric.format(**names), tuple(g.format(**names) for g in self.guards),
                             tolerance=self.tolerance, must_beat=must_beat,
                             interval_guards=tuple(g.format(**names) for g in self.detail_guards))


@dataclass
class EvaluationOutcome:
    """What one evaluation produced: the figures, the models they belong to, the promotion
    decisions, and the report that shows them."""

    name: str
    report: Report
    metrics: dict[str, float]
    evaluated: list[tuple[ModelRecord, dict[str, float]]]  # (model record, that model's figures)
    promotions: list[Promotion]  # decided here, written to the registry when the outcome is published
    must_beat: tuple[tuple[str, str], ...]  # (model figure, baseline figure) pairs
    summary: str  # Markdown tables for the asset page
    params: dict = field(default_factory=dict)
    scores: Optional[pd.DataFrame] = None  # per image, per method
    draws: list[Draw] = field(default_factory=list)  # which images of each split were scored

    def note_draws(self, draws: Sequence[Draw]) -> None:
        """Say in the report and the run's params how many images of each split were scored and
        how they were drawn (``caps.py``)."""
        if not draws:
            return
        self.draws = [*self.draws, *draws]
        self.report.summary += " Images scored: " + "; ".join(d.describe() for d in draws) + "."
        for draw in draws:
            self.params.update(draw.params())

    def headline(self) -> dict[str, float]:
        return {k: float(round(v, 5)) for k, v in self.metrics.items() if is_headline(k) and np.isfinite(v)}

    def promotion_summary(self) -> str:
        return "\n\n".join(f"**{p.record.registered_model} v{p.decision.version}**: "
                           f"{'promoted to champion' if p.decision.promoted else 'not promoted'} "
                           f"({p.decision.reason})\n\n" + markdown_table(p.decision.table()) for p in self.promotions)

    def baseline_verdicts(self) -> list[promotion.BaselineVerdict]:
        return promotion.against_baselines(self.must_beat, self.metrics)


def is_headline(name: str) -> bool:
    return not name.endswith(("_std", "_ci_low", "_ci_high"))


# --- Inputs ---------------------------------------------------------------------------------------------


def split_rows(metadata: pd.DataFrame, split: str, limit: Optional[int] = None, labelled: bool = False) -> pd.DataFrame:
    rows = metadata[metadata["split"] == split]
    if labelled:
        rows = rows[rows["class_id"].notna()]
    rows = rows.reset_index(drop=True)
    return rows.iloc[:limit] if limit else rows


def stored_images(store: ImageStore, rows: pd.DataFrame) -> torch.Tensor:
    return StoreImages(store, rows).stack()


def degraded_images(pair_dir: Path, rows: pd.DataFrame) -> torch.Tensor:
    """The degraded versions of ``rows``' images from a pair store, in the same order."""
    index = pd.read_parquet(pair_dir / "index.parquet").set_index("image_id").loc[rows["image_id"]].reset_index()
    return stored_images(ImageStore(pair_dir), index)


def training_curve(record: ModelRecord, title: str) -> Figure:
    steps, losses = tracking.metric_history(record.mlflow_run_id, "train_loss")
    image = line_plot({"train loss": (steps, losses)}, f"{title}: training loss", "loss", log_y=True)
    return Figure(f"{title}: training loss", image, f"{record.label}, MLflow run {record.mlflow_run_id}")


def split_description(rows: pd.DataFrame, evaluated: list[tuple[ModelRecord, dict]]) -> str:
    models = ", ".join(p.label for p, _ in evaluated)
    return (f"{models}, evaluated on the test split: {len(rows)} images of {rows['patient_key'].nunique()} patients "
            f"(patient-level split, no patient shared with train or val). All intensities in [0, 1]; PSNR in dB with "
            f"data range 1.")


# --- Champion / challenger ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Promotion:
    """A champion/challenger decision and the test split it was made on; publishing the outcome
    records it in the registry (tags, aliases)."""

    record: ModelRecord
    decision: Decision
    comparison_key: str

    def publish(self) -> None:
        promotion.record_and_promote(self.record.registered_model, self.decision, self.comparison_key)


def challenge_champion(record: ModelRecord, metrics: dict[str, float], rule: PromotionRule, comparison_key: str,
                       evaluate: Callable[[str], dict[str, float]], registry_cache: Path,
                       log: Log = print) -> tuple[Promotion, Section]:
    """Challenger against champion on the same test split (``comparison_key``): the champion's
    recorded figures when its evaluation used the same split, else it is evaluated again now
    (``evaluate`` takes a model folder). Decides only: nothing is written to the registry here."""
    name, version = record.registered_model, str(record.version)
    champion_version, champion_tags = promotion.current_champion(name) or (None, {})
    champion_metrics = None
    if champion_version is not None and champion_version != version:
        champion_metrics = promotion.recorded_metrics(champion_tags, comparison_key)
        if champion_metrics is None:
            log(f"{name} v{champion_version} (champion) was evaluated on another test split: evaluating it now")
            champion_metrics = evaluate(str(registry_folder(name, champion_version, registry_cache)))
    decision = promotion.decide(rule, version, metrics, champion_version, champion_metrics)
    verb = "promoted to champion" if decision.promoted else "not promoted"
    log(f"{name} v{version}: {verb} ({decision.reason})")
    text = (f"{name} v{version} is the challenger. Rule: {rule.metric} must improve; "
            f"{', '.join(rule.guards) or 'no guard'} must not get worse"
            + (f"; {', '.join(rule.interval_guards)} must not fall below the champion's beyond its 95% interval"
               if rule.interval_guards else "") + f". Decision: {verb}: {decision.reason}.")
    return (Promotion(record, decision, comparison_key),
            Section(f"Promotion: {name}", text, [Table("Challenger against champion", decision.table())]))


@dataclass
class Scored:
    """One model through a suite: its results, flat figures, (figure, baseline) pairs it must beat,
    and the promotion decided on the same test split, with the promotion's report section."""

    results: Any
    metrics: dict[str, float]
    must_beat: tuple[tuple[str, str], ...]
    promotion: Promotion
    promotion_section: Section


def score_and_challenge(record: ModelRecord, score: Callable[[str], Any],
                        figures: Callable[[Any], tuple[dict[str, float], tuple[tuple[str, str], ...]]],
                        policy: PromotionPolicy, comparison_key: str, registry_cache: Path, log: Log = print,
                        rescore: Optional[Callable[[str], Any]] = None, **names) -> Scored:
    """The skeleton every suite shares: score the model's folder (``score``), flatten the results
    (``figures``: metrics and must-beat pairs), then challenge the champion on the same split,
    scoring the champion (``rescore``, else ``score``) when its recorded figures are not comparable."""
    results = score(record.model_dir)
    metrics, must_beat = figures(results)
    decided, section = challenge_champion(record, metrics, policy.rule(must_beat, **names), comparison_key,
                                          lambda folder: figures((rescore or score)(folder))[0], registry_cache, log)
    return Scored(results, metrics, must_beat, decided, section)


# --- The suites -----------------------------------------------------------------------------------------


def super_resolution_suite(models: Sequence[tuple[int, ModelRecord]], rows: pd.DataFrame, image_store: Path, pairs_root: Path,
                           budget: SamplingBudget, policy: PromotionPolicy, registry_cache: Path, *,
                           full_chain: bool = False, lr_start_strength: Optional[float] = 0.3,
                           log: Log = print) -> EvaluationOutcome:
    """Each latent SR model ((scale, record) pairs) on ``rows`` against bicubic, bicubic through
    the VAE and the VAE ceiling, then promotion per scale."""
    if not models:
        raise FileNotFoundError("no trained latent SR model: materialize latent_sr first")
    high_resolution = stored_images(ImageStore(image_store), rows)
    outcome = EvaluationOutcome("sr_evaluation", Report("Super-resolution evaluation", "", []), {}, [], [], (), "",
                                params={**budget.params(LatentSuperResolution), "full_chain": full_chain,
                                        "lr_start_strength": lr_start_strength})
    tables, scores = [], []
    for scale, record in models:
        low_resolution = degraded_images(sr_pair_dir(pairs_root, scale), rows)

        def evaluate(model_dir: str):
            return evaluate_super_resolution(
                LatentSuperResolution.from_pretrained(model_dir, budget.device, precision=budget.precision),
                high_resolution, low_resolution,
                rows["image_id"], rows["patient_key"], ddim_steps=budget.ddim_steps, full_chain=full_chain,
                lr_start_strength=lr_start_strength, spread_seeds=budget.spread_seeds,
                spread_images=budget.spread_images, seed=budget.seed, resamples=budget.bootstrap_resamples)

        log(f"evaluating {record.label} on {len(rows)} test images")
        scored = score_and_challenge(record, evaluate, lambda r: (r.metrics(), r.must_beat()), policy,
                                     promotion.split_key(rows["image_id"]), registry_cache, log, scale=scale)
        result = scored.results
        section = result.section()
        section.figures.append(training_curve(record, f"Latent SR x{scale}"))
        outcome.report.sections += [section, scored.promotion_section]
        outcome.metrics.update(scored.metrics)
        outcome.evaluated.append((record, scored.metrics))
        outcome.promotions.append(scored.promotion)
        outcome.must_beat += scored.must_beat
        tables.append(f"**x{scale}**\n\n" + markdown_table(result.table()))
        scores.append(result.scores.assign(task=result.task))
    outcome.report.summary = split_description(rows, outcome.evaluated)
    outcome.summary = "\n\n".join(tables)
    outcome.scores = pd.concat(scores, ignore_index=True)
    return outcome


def arbitrary_scale_inputs(high_resolution: torch.Tensor, image_ids: Sequence[str], scales: Sequence[float],
                           mix: DegradationMix | None, seed: int) -> dict[float, tuple[torch.Tensor, torch.Tensor]]:
    """Per scale: the HR images centre-cropped so the scale is exact, and their LR versions made
    the way ``sr_pairs`` makes its pairs (at integer scales, the same images)."""
    inputs = {}
    for scale in scales:
        high = centre_crop(high_resolution, exact_side(high_resolution.shape[-1], scale))
        low = torch.from_numpy(low_resolution_at(high[:, 0].numpy(), list(image_ids), scale, mix, seed)).unsqueeze(1)
        inputs[float(scale)] = (high, low)
    return inputs


def arbitrary_super_resolution_suite(record: ModelRecord, fixed_models: Sequence[tuple[int, ModelRecord]], rows: pd.DataFrame,
                                     image_store: Path, scales: Sequence[float], budget: SamplingBudget,
                                     policy: PromotionPolicy, registry_cache: Path, *, degradation_mix: bool = True,
                                     pair_seed: int = 0, log: Log = print) -> EvaluationOutcome:
    """The arbitrary-scale model at each scale on ``rows`` against bicubic at that scale, its own
    latent path without diffusion and, at the scales a fixed-scale model was trained for, that
    model on the same inputs; a plot of the gain over bicubic by scale; then promotion."""
    ids, groups = rows["image_id"].astype(str), rows["patient_key"]
    inputs = arbitrary_scale_inputs(stored_images(ImageStore(image_store), rows), ids, scales,
                                    DegradationMix() if degradation_mix else None, pair_seed)
    fixed = {float(scale): p for scale, p in fixed_models}

    def evaluate(model_dir: str, compare: bool = False):
        model = ArbitraryScaleSuperResolution.from_pretrained(model_dir, budget.device, precision=budget.precision)
        results = []
        for scale, (high, low) in inputs.items():
            reference = (LatentSuperResolution.from_pretrained(fixed[scale].model_dir, budget.device,
                                                             precision=budget.precision)
                         if compare and scale in fixed else None)
            log(f"x{scale:g}: {len(high)} test images, LR {tuple(low.shape[-2:])} -> HR {tuple(high.shape[-2:])}"
                + (f", beside {fixed[scale].label}" if reference else ""))
            results.append((scale, evaluate_arbitrary_scale(
                model, high, low, ids, groups, scale, fixed=reference, ddim_steps=budget.ddim_steps,
                spread_seeds=budget.spread_seeds, spread_images=budget.spread_images, seed=budget.seed,
                resamples=budget.bootstrap_resamples)))
        return results

    def merged_metrics(results) -> dict[str, float]:
        metrics = {k: v for _, result in results for k, v in result.metrics().items()}
        metrics["psnr_gain_sr_mean_arbitrary"] = float(np.mean([r.gains["arbitrary"].mean for _, r in results]))
        return metrics

    # every scale must beat bicubic; the champion is rescored without the fixed-scale comparison
    scored = score_and_challenge(
        record, lambda folder: evaluate(folder, compare=True),
        lambda results: (merged_metrics(results), tuple(pair for _, result in results for pair in result.must_beat())),
        policy, promotion.split_key(rows["image_id"]), registry_cache, log, rescore=evaluate)
    results, metrics, must_beat, promotion_section = scored.results, scored.metrics, scored.must_beat, scored.promotion_section
    low, high = describe(record.model_dir)["scale_range"]
    def gains_of(method: str) -> tuple[list, list, list, list]:
        points = [(scale, r.gains[method]) for scale, r in results if method in r.gains]
        return ([s for s, _ in points], [g.mean for _, g in points], [g.ci_low for _, g in points],
                [g.ci_high for _, g in points])

    series = {"arbitrary-scale model": gains_of("arbitrary")}
    if any("fixed" in r.gains for _, r in results):
        series["fixed-scale model"] = gains_of("fixed")
    plot = Figure("PSNR gain over bicubic by scale",
                  interval_plot(series, "PSNR gain over bicubic (paired, 95% patient-bootstrap interval)", "scale",
                                "dB", shade=(low, high)),
                  f"Shaded: the training range [{low:g}, {high:g}]; outside it the model extrapolates.")
    rows_ = []
    for scale, result in results:
        gain, versus = result.gains["arbitrary"], result.versus
        rows_.append({"scale": f"x{scale:g}", "bicubic PSNR": round(result.summaries["bicubic"]["psnr"].mean, 2),
                      "arbitrary PSNR": round(result.summaries["arbitrary"]["psnr"].mean, 2),
                      "gain over bicubic": gain.text(2),
                      "arbitrary − fixed-scale": versus["fixed"].text(2) if "fixed" in versus else "—",
                      "LR-consistency": round(result.summaries["arbitrary"]["lr_consistency_psnr"].mean, 2)})
    table = pd.DataFrame(rows_)
    sections = [Section("Gain by scale", "", [Table("Arbitrary-scale SR by scale", table)], [plot])]
    sections += [result.section() for _, result in results]
    sections += [Section("Training", figures=[training_curve(record, "Arbitrary-scale SR")]), promotion_section]
    evaluated = [(record, metrics)]
    return EvaluationOutcome(
        "arbitrary_sr_evaluation", Report("Arbitrary-scale super-resolution evaluation",
                                          split_description(rows, evaluated), sections),
        metrics, evaluated, [scored.promotion], must_beat, markdown_table(table),
        params={**budget.params(ArbitraryScaleSuperResolution), "scales": list(scales),
                "degradation_mix": degradation_mix, "pair_seed": pair_seed,
                "fixed_scale_models": ", ".join(p.label for _, p in fixed_models)},
        scores=pd.concat([r.scores.assign(task=r.task) for _, r in results], ignore_index=True))


def denoising_suite(record: ModelRecord, rows: pd.DataFrame, val_rows: pd.DataFrame, image_store: Path, pairs_root: Path,
                    doses: Sequence[float], budget: SamplingBudget, policy: PromotionPolicy, registry_cache: Path, *,
                    nlm_factors: Sequence[float], strengths: Sequence[float], log: Log = print) -> EvaluationOutcome:
    """The low-dose denoiser per dose level on ``rows``, against the noisy input and non-local
    means, both tuned on ``val_rows`` (NLM's h, the denoiser's starting strength), then promotion."""
    if not doses:
        raise FileNotFoundError("no low-dose pairs: materialize low_dose_pairs first")
    store = ImageStore(image_store)
    clean, val_clean = stored_images(store, rows), stored_images(store, val_rows)
    noisy = {dose: (degraded_images(low_dose_pair_dir(pairs_root, dose), val_rows),
                    degraded_images(low_dose_pair_dir(pairs_root, dose), rows)) for dose in doses}

    def evaluate(model_dir: str):
        results, model = [], LowDoseDenoiser.from_pretrained(model_dir, budget.device, precision=budget.precision)
        for dose, (val_noisy, test_noisy) in noisy.items():
            factor, nlm_search = tune_nlm(val_clean, val_noisy, nlm_factors)
            strength, strength_search = tune_denoiser_strength(model, val_clean, val_noisy, dose, strengths,
                                                               budget.ddim_steps, budget.seed)
            log(f"I0 {dose:g}: on val, NLM h = {factor:g} sigma, denoiser strength {strength:g}")
            tuning = [Table(f"NLM h search on val, I0 = {dose:g}", nlm_search.round(3)),
                      Table(f"Denoiser strength search on val, I0 = {dose:g}", strength_search.round(3))]
            results.append(evaluate_denoising(model, clean, test_noisy, rows["image_id"], rows["patient_key"], dose,
                                              factor, strength, tuning, ddim_steps=budget.ddim_steps,
                                              spread_seeds=budget.spread_seeds, spread_images=budget.spread_images,
                                              seed=budget.seed, resamples=budget.bootstrap_resamples))
        return results

    def merged_metrics(results) -> dict[str, float]:
        return {k: v for result in results for k, v in result.metrics().items()}

    scored = score_and_challenge(  # every dose level must beat NLM
        record, evaluate,
        lambda results: (merged_metrics(results), tuple(pair for result in results for pair in result.must_beat())),
        policy, promotion.split_key(rows["image_id"]), registry_cache, log)
    results, metrics, must_beat, promotion_section = scored.results, scored.metrics, scored.must_beat, scored.promotion_section
    sections = [result.section() for result in results]
    sections += [Section("Training", figures=[training_curve(record, "Low-dose denoiser")]), promotion_section]
    tables = [f"**I0 = {r.task.removeprefix('denoise_i0_')}**\n\n" + markdown_table(r.table()) for r in results]
    return EvaluationOutcome(
        "denoising_evaluation", Report("Low-dose denoising evaluation", split_description(rows, [(record, metrics)]),
                                       sections),
        metrics, [(record, metrics)], [scored.promotion], must_beat, "\n\n".join(tables),
        params={**budget.params(LowDoseDenoiser), "nlm_factors": list(nlm_factors), "strengths": list(strengths),
                "val_images": len(val_rows)},
        scores=pd.concat([r.scores.assign(task=r.task) for r in results], ignore_index=True))


def generation_suite(record: ModelRecord, classifier: ModelRecord, rows: pd.DataFrame, val_rows: pd.DataFrame, image_store: Path,
                     budget: SamplingBudget, policy: PromotionPolicy, registry_cache: Path, *,
                     samples_per_class: int = 10, fd_samples: Optional[int] = None,
                     guidance_scale: Optional[float] = None, inception_weights: Optional[str] = None,
                     inception_sha256: Optional[str] = None, log: Log = print) -> EvaluationOutcome:
    """The class-conditional model against the labelled real test images: fd_cxr and KID on the
    CXR feature network, conditional accuracy, MS-SSIM diversity, Inception FID when its weights
    are local; then promotion (compared only under the same feature network)."""
    store = ImageStore(image_store)
    real_test, real_val = stored_images(store, rows), stored_images(store, val_rows)

    def evaluate(model_dir: str):
        model = ClassConditionalGenerator.from_pretrained(model_dir, budget.device, precision=budget.precision)
        return evaluate_generation(model, classifier.model_dir, real_test, rows["class_id"].astype(int).to_numpy(),
                                   real_val, samples_per_class=samples_per_class, fd_samples=fd_samples,
                                   ddim_steps=budget.ddim_steps, guidance=guidance_scale, seed=budget.seed,
                                   inception_weights=inception_weights, inception_sha256=inception_sha256,
                                   device=budget.device)

    # fd_cxr and KID depend on the feature network: a comparison needs the same classifier too.
    comparison_key = f"{promotion.split_key(rows['image_id'])}-classifier-v{classifier.version}"
    scored = score_and_challenge(record, evaluate, lambda r: (r.metrics(), r.must_beat()), policy, comparison_key,
                                 registry_cache, log)
    result, metrics, promotion_section = scored.results, scored.metrics, scored.promotion_section
    log(f"fid_inception: {result.fid.reason}")
    section = result.section()
    section.figures.append(training_curve(record, "Class-conditional DDPM"))
    report = Report("Class-conditional generation evaluation",
                    f"{record.label} scored with {classifier.registered_model} "
                    f"v{classifier.version} against the {len(rows)} single-label test images.",
                    [section, promotion_section])
    return EvaluationOutcome(
        "generation_evaluation", report, metrics, [(record, metrics)], [scored.promotion], scored.must_beat,
        markdown_table(result.headline()) + "\n\n" + markdown_table(result.per_class()),
        params={**budget.params(ClassConditionalGenerator), "samples_per_class": samples_per_class,
                "fd_samples": fd_samples,
                "guidance_scale": guidance_scale, "fid_inception": result.fid.reason,
                "classifier": f"v{classifier.version}"})


def text_generation_suite(record: ModelRecord, classifier: ModelRecord, metadata: pd.DataFrame, image_store: Path,
                          budget: SamplingBudget, policy: PromotionPolicy, registry_cache: Path, *,
                          caps: EvaluationCaps, guidance_scales: Sequence[float] = GUIDANCE_SWEEP,
                          guidance_scale: Optional[float] = None, consistency_samples: int = 2, sweep_samples: int = 2,
                          log: Log = print) -> EvaluationOutcome:
    """The text-conditional model on the test split's reports: prompt consistency (against the
    unconditional floor and retrieval), negation, fd_cxr / KID / PRDC, memorization, diversity,
    with the guidance scale chosen on val; then promotion (under the same feature network).
    Each split's reports are drawn under ``caps``: test, val (the sweep) and the training
    reports memorization and retrieval compare against."""
    store = ImageStore(image_store)
    draws = [draw_patients(reported_rows(metadata, split), cap, split, budget.seed, unit="reports")
             for split, cap in (("test", caps.test_images), ("val", caps.val_images), ("train", caps.train_reference))]
    test, val, train = (prompts_of(draw.rows, store) for draw in draws)
    if not len(test) or not len(val):
        raise ValueError("the text model's evaluation needs reports in the val and test splits")

    def evaluate(model_dir: str):
        model = TextConditionalGenerator.from_pretrained(model_dir, budget.device, precision=budget.precision)
        return evaluate_text_generation(model, classifier.model_dir, test, val, train,
                                        guidance_scales=guidance_scales,
                                        guidance=guidance_scale, consistency_samples=consistency_samples,
                                        sweep_samples=sweep_samples, ddim_steps=budget.ddim_steps, seed=budget.seed,
                                        device=budget.device)

    # compared only on the same test reports and images, under the same feature network
    comparison_key = f"{promotion.split_key(test.image_ids)}-classifier-v{classifier.version}"
    scored = score_and_challenge(record, evaluate, lambda r: (r.metrics(), r.must_beat()), policy, comparison_key,
                                 registry_cache, log)
    result, metrics, promotion_section = scored.results, scored.metrics, scored.promotion_section
    log(f"guidance {result.guidance:g} (chosen on val), prompt consistency {result.consistency:.3f}")
    section = result.section()
    section.figures.append(training_curve(record, "Text-conditional LDM"))
    report = Report("Text-conditional generation evaluation",
                    f"{record.label} sampled from the {len(test)} test reports of "
                    f"{len(set(test.patients))} patients, scored with {classifier.registered_model} "
                    f"v{classifier.version}; guidance chosen on {len(val)} val reports.",
                    [section, promotion_section])
    outcome = EvaluationOutcome(
        "text_generation_evaluation", report, metrics, [(record, metrics)], [scored.promotion], scored.must_beat,
        markdown_table(result.headline()) + "\n\n" + markdown_table(result.per_class()),
        params={**budget.params(TextConditionalGenerator), "guidance_scales": list(guidance_scales),
                "guidance_scale": guidance_scale,
                "guidance_chosen": result.guidance, "consistency_samples": consistency_samples,
                "sweep_samples": sweep_samples,
                "classifier": f"v{classifier.version}", "test_reports": len(test), "val_reports": len(val)})
    outcome.note_draws(draws)
    return outcome


def synthetic_utility_suite(class_record: ModelRecord, text_record: ModelRecord, metadata: pd.DataFrame, image_store: Path,
                            runs_root: Path, arms: Sequence[str], *, profile: UtilityProfile, caps: EvaluationCaps,
                            ratio: float = 1.0,
                            ddim_steps: int = 10, class_guidance: Optional[float] = None,
                            text_guidance: Optional[float] = None, bootstrap_resamples: int = 2000, seed: int = 0,
                            device: str = "auto", precision: str = "auto", log: Log = print) -> EvaluationOutcome:
    """The augmentation experiment: generate the pool once from training labels and reports,
    train the classifier recipe on every arm and seed, score all of them on the real test split
    with paired patient-and-seed intervals, and report. The real images are drawn under ``caps``
    (training images per arm, which also size the generated pool; val; test)."""
    data_hash = content_hash(metadata)
    chosen = arms_named(arms)
    used = {g for arm in chosen for g in arm.generators}
    records = {CLASS_GENERATOR: class_record, TEXT_GENERATOR: text_record}
    for generator in sorted(used):
        record = records[generator]
        if record.data_hash != data_hash:
            raise ValueError(f"{record.label} was trained on other data "
                             f"({record.data_hash}, now {data_hash}): its training split may hold today's "
                             f"val or test images. Re-materialize it before this experiment.")
    class_names = list(describe(Path(class_record.model_dir))["class_names"])
    store = ImageStore(image_store)
    draws = [draw_patients(labelled_rows(metadata, split), cap, split, seed)
             for split, cap in (("train", caps.utility_train_images), ("val", caps.val_images),
                                ("test", caps.test_images))]
    train_rows, val_rows, test_rows = (draw.rows for draw in draws)
    if train_rows.empty or val_rows.empty or test_rows.empty:
        raise ValueError("the experiment needs single-label images in train, val and test")
    real_counts = np.bincount(train_rows["class_id"].astype(int), minlength=len(class_names))
    plan = pool_plan(chosen, real_counts, ratio)
    sampling = {"ddim_steps": ddim_steps, "class_guidance": class_guidance, "text_guidance": text_guidance,
                "seed": seed, "class_precision": ClassConditionalGenerator.resolved_precision(precision, device),
                "text_precision": TextConditionalGenerator.resolved_precision(precision, device)}
    pool_key = run_key("synthetic_pool", {g: records[g].model_dir for g in plan}, {g: c.tolist() for g, c in plan.items()},
                       sampling, data_hash)
    pool_dir = Path(runs_root) / "pools" / pool_key

    def class_sampler(ids: list[int], at: int) -> torch.Tensor:
        model = ClassConditionalGenerator.from_pretrained(class_record.model_dir, device, precision=precision)
        return model(ids, guidance=class_guidance, steps=ddim_steps, seed=at).cpu()

    def text_sampler(reports: list[str], at: int) -> torch.Tensor:
        model = TextConditionalGenerator.from_pretrained(text_record.model_dir, device, precision=precision)
        return model(reports, guidance=text_guidance, steps=ddim_steps, seed=at).cpu()

    pool = generate_pool(plan, class_names, training_reports(train_rows), {CLASS_GENERATOR: class_sampler,
                                                                            TEXT_GENERATOR: text_sampler},
                         pool_dir, seed=seed, log=log)
    pool_store = ImageStore(pool_dir)
    train_ids = set(train_rows["image_id"].astype(str))
    val_images, test_images = stored_images(store, val_rows), stored_images(store, test_rows)
    val_labels, test_labels = val_rows["class_id"].astype(int).to_numpy(), test_rows["class_id"].astype(int).to_numpy()
    probabilities: dict[str, list[np.ndarray]] = {}
    val_scores, arm_counts, examples = [], {}, {}
    for arm in chosen:
        data = arm_training_set(arm, train_rows, store, pool, pool_store, ratio, len(class_names))
        check_provenance(data, train_ids, class_names)
        arm_counts[arm.name] = data.counts(len(class_names))
        example = example_grid(data.images, data.labels, data.sources, class_names, REAL)
        if example is not None:
            examples[arm.name] = example
        probabilities[arm.name] = []
        for offset in range(profile.seeds):
            train_config = TrainConfig(steps=profile.steps, batch_size=profile.batch_size,
                                       learning_rate=profile.learning_rate, warmup_steps=min(30, profile.steps),
                                       checkpoint_every=max(1, profile.steps // 2), eval_every=profile.steps,
                                       log_every=profile.steps, seed=seed + offset, device=device)
            run_dir = Path(runs_root) / "classifiers" / run_key(
                "utility_classifier", arm.name, pool_key if arm.generators else None, ratio if arm.generators else None,
                profile.classifier.as_dict(), class_names, train_config.identity(), data_hash,
                *([] if draws[0].whole else [content_hash(train_rows)]))
            test_probabilities, val = train_arm(data, val_images, val_labels, test_images, class_names,
                                                profile.classifier, train_config, run_dir)
            probabilities[arm.name].append(test_probabilities)
            val_scores.append({"arm": arm.name, "seed": seed + offset, **val})
            log(f"{arm.name} seed {seed + offset}: {len(data.labels)} training images, "
                f"val macro AUROC {val.get('val_auroc_macro', float('nan')):.3f}")
    scores = utility_scores(probabilities, test_labels, test_rows["patient_key"].astype(str).to_numpy(), class_names,
                            resamples=bootstrap_resamples, seed=seed)
    result = SyntheticUtilityResult(chosen, class_names, real_counts, arm_counts, scores, pd.DataFrame(val_scores),
                                    examples, test_images=len(test_rows),
                                    test_patients=int(test_rows["patient_key"].nunique()))
    metrics = result.metrics()
    evaluated = [(records[g], metrics) for g in GENERATORS if g in used]
    names = ", ".join(records[g].label for g in GENERATORS if g in used)
    report = Report("Synthetic data utility",
                    f"Does training on images from {names} help a classifier of real radiographs? "
                    f"{len(chosen)} arms x {profile.seeds} seeds, scored on {len(test_rows)} real test images.",
                    [utility_section(result)])
    outcome = EvaluationOutcome(
        "synthetic_utility", report, metrics, evaluated, [], (),
        markdown_table(goals_table(result)) + "\n\n" + markdown_table(arms_table(result)),
        params={"arms": [a.name for a in chosen], "seeds": profile.seeds, "ratio": ratio, "ddim_steps": ddim_steps,
                "class_guidance": class_guidance, "text_guidance": text_guidance, "classifier_steps": profile.steps,
                "classifier_batch_size": profile.batch_size, "classifier_widths": list(profile.classifier.widths),
                "class_precision": sampling["class_precision"], "text_precision": sampling["text_precision"],
                "bootstrap_resamples": bootstrap_resamples, "seed": seed, "pool": pool_key,
                "generated_images": len(pool), "rarest_class": result.rarest_class})
    outcome.note_draws(draws)
    return outcome
