"""Does the synthetic data help? One classifier recipe on real, real + generated, generated only and
real + generated-to-balance images, scored on the real test split."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ...data.image_store import ImageStore
from ...data.labels.metadata import content_hash
from ...model_record import ModelRecord
from ...models.classifier import labelled_rows
from ...models.model_folder import describe
from ...models.model_settings import ClassDDPMSettings
from ...models.pipelines import (
    ClassConditionalGenerator,
    TextConditionalGenerator,
)
from ...models.training import TrainConfig, run_key
from ...reports.document import Report, markdown_table
from ...reports.synthetic_utility import arms_table, example_grid, goals_table, utility_section
from ..caps import EvaluationCaps, draw_patients
from ..inputs import stored_images
from ..outcome import EvaluationOutcome, Log, SamplingBudget
from ..synthetic_utility import (
    CLASS_GENERATOR,
    GENERATORS,
    REAL,
    TEXT_GENERATOR,
    UTILITY_PROFILES,
    SyntheticUtilityResult,
    UtilityProfile,
    arm_training_set,
    arms_named,
    check_provenance,
    generate_pool,
    pool_plan,
    train_arm,
    training_reports,
    utility_scores,
)


@dataclass(frozen=True)
class SyntheticUtilityOptions:
    """Unset fields take the profile's value (``UTILITY_PROFILES``: the demo trims the classifier
    and the seeds; ``full`` runs all six arms, the feature classifier's network, five seeds)."""

    arms: list[str] | None = None  # of: real, real_synthetic, real_class, real_text, synthetic, real_balanced
    seeds: int | None = None  # classifier trainings per arm
    classifier_steps: int | None = None
    classifier_widths: list[int] | None = None
    synthetic_ratio: float = 1.0  # generated images per real image of each class, in the matched arms
    class_guidance: float | None = None  # None: the model's saved guidance_scale
    text_guidance: float | None = None

    def profile(self, name: str) -> UtilityProfile:
        base = UTILITY_PROFILES[name]
        classifier = (
            dataclasses.replace(base.classifier, widths=tuple(self.classifier_widths))
            if self.classifier_widths
            else base.classifier
        )
        return dataclasses.replace(
            base,
            arms=tuple(self.arms or base.arms),
            seeds=self.seeds or base.seeds,
            steps=self.classifier_steps or base.steps,
            classifier=classifier,
        )


def synthetic_utility_suite(
    class_record: ModelRecord,
    text_record: ModelRecord,
    metadata: pd.DataFrame,
    image_store: Path,
    runs_root: Path,
    budget: SamplingBudget,
    options: SyntheticUtilityOptions,
    *,
    profile: UtilityProfile,
    caps: EvaluationCaps,
    log: Log = print,
) -> EvaluationOutcome:
    """The augmentation experiment: generate the pool once from training labels and reports,
    train the classifier recipe on every arm and seed, score all of them on the real test split
    with paired patient-and-seed intervals, and report. The real images are drawn under ``caps``
    (training images per arm, which also size the generated pool; val; test)."""
    arms, ratio = profile.arms, options.synthetic_ratio
    class_guidance, text_guidance = options.class_guidance, options.text_guidance
    ddim_steps, bootstrap_resamples, seed = budget.ddim_steps, budget.bootstrap_resamples, budget.seed
    device, precision = budget.device, budget.precision
    data_hash = content_hash(metadata)
    chosen = arms_named(arms)
    used = {g for arm in chosen for g in arm.generators}
    records = {CLASS_GENERATOR: class_record, TEXT_GENERATOR: text_record}
    for generator in sorted(used):
        record = records[generator]
        if record.data_hash != data_hash:
            raise ValueError(
                f"{record.label} was trained on other data "
                f"({record.data_hash}, now {data_hash}): its training split may hold today's "
                f"val or test images. Re-materialize it before this experiment."
            )
    class_names = list(describe(Path(class_record.model_dir)).settings_as(ClassDDPMSettings).classes)
    store = ImageStore(image_store)
    draws = [
        draw_patients(labelled_rows(metadata, split), cap, split, seed)
        for split, cap in (("train", caps.utility_train_images), ("val", caps.val_images), ("test", caps.test_images))
    ]
    train_rows, val_rows, test_rows = (draw.rows for draw in draws)
    if train_rows.empty or val_rows.empty or test_rows.empty:
        raise ValueError("the experiment needs single-label images in train, val and test")
    real_counts = np.bincount(train_rows["class_id"].astype(int), minlength=len(class_names))
    plan = pool_plan(chosen, real_counts, ratio)
    sampling = {
        "ddim_steps": ddim_steps,
        "class_guidance": class_guidance,
        "text_guidance": text_guidance,
        "seed": seed,
        "class_precision": ClassConditionalGenerator.resolved_precision(precision, device),
        "text_precision": TextConditionalGenerator.resolved_precision(precision, device),
    }
    pool_key = run_key(
        "synthetic_pool",
        {g: records[g].model_dir for g in plan},
        {g: c.tolist() for g, c in plan.items()},
        sampling,
        data_hash,
    )
    pool_dir = Path(runs_root) / "pools" / pool_key

    def class_sampler(ids: list[int], at: int) -> torch.Tensor:
        model = ClassConditionalGenerator.from_pretrained(class_record.model_dir, device, precision=precision)
        return model(ids, guidance_scale=class_guidance, num_inference_steps=ddim_steps, generator=at).cpu()

    def text_sampler(reports: list[str], at: int) -> torch.Tensor:
        model = TextConditionalGenerator.from_pretrained(text_record.model_dir, device, precision=precision)
        return model(reports, guidance_scale=text_guidance, num_inference_steps=ddim_steps, generator=at).cpu()

    pool = generate_pool(
        plan,
        class_names,
        training_reports(train_rows),
        {CLASS_GENERATOR: class_sampler, TEXT_GENERATOR: text_sampler},
        pool_dir,
        seed=seed,
        log=log,
    )
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
            train_config = TrainConfig(
                steps=profile.steps,
                batch_size=profile.batch_size,
                learning_rate=profile.learning_rate,
                warmup_steps=min(30, profile.steps),
                checkpoint_every=max(1, profile.steps // 2),
                eval_every=profile.steps,
                log_every=profile.steps,
                seed=seed + offset,
                device=device,
            )
            run_dir = (
                Path(runs_root)
                / "classifiers"
                / run_key(
                    "utility_classifier",
                    arm.name,
                    pool_key if arm.generators else None,
                    ratio if arm.generators else None,
                    profile.classifier.as_dict(),
                    class_names,
                    train_config.identity(),
                    data_hash,
                    *([] if draws[0].whole else [content_hash(train_rows)]),
                )
            )
            test_probabilities, val = train_arm(
                data, val_images, val_labels, test_images, class_names, profile.classifier, train_config, run_dir
            )
            probabilities[arm.name].append(test_probabilities)
            val_scores.append({"arm": arm.name, "seed": seed + offset, **val})
            log(
                f"{arm.name} seed {seed + offset}: {len(data.labels)} training images, "
                f"val macro AUROC {val.get('val_auroc_macro', float('nan')):.3f}"
            )
    scores = utility_scores(
        probabilities,
        test_labels,
        test_rows["patient_key"].astype(str).to_numpy(),
        class_names,
        resamples=bootstrap_resamples,
        seed=seed,
    )
    result = SyntheticUtilityResult(
        chosen,
        class_names,
        real_counts,
        arm_counts,
        scores,
        pd.DataFrame(val_scores),
        examples,
        test_images=len(test_rows),
        test_patients=int(test_rows["patient_key"].nunique()),
    )
    metrics = result.metrics()
    evaluated = [(records[g], metrics) for g in GENERATORS if g in used]
    names = ", ".join(records[g].label for g in GENERATORS if g in used)
    report = Report(
        "Synthetic data utility",
        f"Does training on images from {names} help a classifier of real radiographs? "
        f"{len(chosen)} arms x {profile.seeds} seeds, scored on {len(test_rows)} real test images.",
        [utility_section(result)],
    )
    outcome = EvaluationOutcome(
        "synthetic_utility",
        report,
        metrics,
        evaluated,
        [],
        (),
        markdown_table(goals_table(result)) + "\n\n" + markdown_table(arms_table(result)),
        params={
            "arms": [a.name for a in chosen],
            "seeds": profile.seeds,
            "ratio": ratio,
            "ddim_steps": ddim_steps,
            "class_guidance": class_guidance,
            "text_guidance": text_guidance,
            "classifier_steps": profile.steps,
            "classifier_batch_size": profile.batch_size,
            "classifier_widths": list(profile.classifier.widths),
            "class_precision": sampling["class_precision"],
            "text_precision": sampling["text_precision"],
            "bootstrap_resamples": bootstrap_resamples,
            "seed": seed,
            "pool": pool_key,
            "generated_images": len(pool),
            "rarest_class": result.rarest_class,
        },
    )
    outcome.note_draws(draws)
    return outcome
