"""The class-conditional model against the labelled real test images."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ... import promotion
from ...data.image_store import ImageStore
from ...model_record import ModelRecord
from ...models.pipelines import (
    ClassConditionalGenerator,
)
from ...reports.document import Report, markdown_table
from ..challenge import score_and_challenge
from ..generation import evaluate_generation
from ..inputs import stored_images, training_curve
from ..outcome import EvaluationOutcome, Log, PromotionPolicy, SamplingBudget


@dataclass(frozen=True)
class GenerationOptions:
    samples_per_class: int = 10  # for conditional accuracy and diversity; raise for publication figures
    fd_samples: int | None = None  # generated images for fd_cxr/KID/FID; None: as many as real test images
    guidance_scale: float | None = None  # None: the model's saved guidance_scale
    fid_inception_weights: str | None = None  # path; None: $CXR_FID_INCEPTION_WEIGHTS, else not computed
    fid_inception_sha256: str | None = None  # pin the file's full digest


def generation_suite(
    record: ModelRecord,
    classifier: ModelRecord,
    rows: pd.DataFrame,
    val_rows: pd.DataFrame,
    image_store: Path,
    budget: SamplingBudget,
    policy: PromotionPolicy,
    registry_cache: Path,
    options: GenerationOptions,
    *,
    log: Log = print,
) -> EvaluationOutcome:
    """The class-conditional model against the labelled real test images: fd_cxr and KID on the
    CXR feature network, conditional accuracy, MS-SSIM diversity, Inception FID when its weights
    are local (the options' file, else ``$CXR_FID_INCEPTION_WEIGHTS``); then promotion (compared
    only under the same feature network)."""
    samples_per_class, fd_samples, guidance_scale = (
        options.samples_per_class,
        options.fd_samples,
        options.guidance_scale,
    )
    inception_weights = options.fid_inception_weights or os.environ.get("CXR_FID_INCEPTION_WEIGHTS")
    inception_sha256 = options.fid_inception_sha256
    store = ImageStore(image_store)
    real_test, real_val = stored_images(store, rows), stored_images(store, val_rows)

    def evaluate(model_dir: str):
        model = ClassConditionalGenerator.from_pretrained(model_dir, budget.device, precision=budget.precision)
        return evaluate_generation(
            model,
            classifier.model_dir,
            real_test,
            rows["class_id"].astype(int).to_numpy(),
            real_val,
            samples_per_class=samples_per_class,
            fd_samples=fd_samples,
            ddim_steps=budget.ddim_steps,
            guidance=guidance_scale,
            seed=budget.seed,
            inception_weights=inception_weights,
            inception_sha256=inception_sha256,
            device=budget.device,
        )

    # fd_cxr and KID depend on the feature network: a comparison needs the same classifier too.
    comparison_key = f"{promotion.split_key(rows['image_id'])}-classifier-v{classifier.version}"
    scored = score_and_challenge(
        record, evaluate, lambda r: (r.metrics(), r.must_beat()), policy, comparison_key, registry_cache, log
    )
    result, metrics, promotion_section = scored.results, scored.metrics, scored.promotion_section
    log(f"fid_inception: {result.fid.reason}")
    section = result.section()
    section.figures.append(training_curve(record, "Class-conditional DDPM"))
    report = Report(
        "Class-conditional generation evaluation",
        f"{record.label} scored with {classifier.registered_model} "
        f"v{classifier.version} against the {len(rows)} single-label test images.",
        [section, promotion_section],
    )
    return EvaluationOutcome(
        "generation_evaluation",
        report,
        metrics,
        [(record, metrics)],
        [scored.promotion],
        scored.must_beat,
        markdown_table(result.headline()) + "\n\n" + markdown_table(result.per_class()),
        params={
            **budget.params(ClassConditionalGenerator),
            "samples_per_class": samples_per_class,
            "fd_samples": fd_samples,
            "guidance_scale": guidance_scale,
            "fid_inception": result.fid.reason,
            "classifier": f"v{classifier.version}",
        },
    )
