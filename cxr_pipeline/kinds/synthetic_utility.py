"""The synthetic-data experiment: no model kind of its own, it reads two kinds' generators (the
class and the text model), so its ``Evaluation`` is bound here, beside the kinds it reads."""

from __future__ import annotations

from ..evaluation.outcome import Evaluation, EvaluationOutcome, PromotionPolicy, SamplingBudget, SuiteInputs
from ..evaluation.suites import SyntheticUtilityOptions, synthetic_utility_suite
from ..model_record import current_model
from .class_ddpm import CLASS_DDPM
from .text_ldm import TEXT_LDM


def evaluate(
    inputs: SuiteInputs, budget: SamplingBudget, policy: PromotionPolicy, options: SyntheticUtilityOptions
) -> EvaluationOutcome:
    paths = inputs.paths
    profile = options.profile(inputs.profile)
    outcome = synthetic_utility_suite(
        current_model(paths, CLASS_DDPM.key),
        current_model(paths, TEXT_LDM.key),
        inputs.metadata,
        paths.image_store,
        paths.models / "synthetic_utility",
        budget,
        options,
        profile=profile,
        caps=inputs.caps,
        log=inputs.log,
    )
    outcome.asset_metadata.update(generated_images=outcome.params["generated_images"], seeds=profile.seeds)
    return outcome


SYNTHETIC_UTILITY = Evaluation(
    "synthetic_utility",
    "Does the synthetic data help? One classifier recipe trained on real, real + generated, "
    "generated only and real + generated-to-balance images (several seeds each), scored on the real test split: "
    "accuracy, macro and per-class AUROC with paired patient-bootstrap intervals of the difference to real only. "
    "Generated from training labels and reports only.",
    evaluate,
    SyntheticUtilityOptions,
    # 10 DDIM steps: on val the arms score what 20 give (real + synthetic -0.006 against -0.008 macro AUROC,
    # docs/recipes.md) in 0.58x the generation time
    budget=SamplingBudget(ddim_steps=10),
    budget_fields=("ddim_steps", "bootstrap_resamples", "seed", "device", "precision"),
    caps=("utility_train_images", "val_images", "test_images"),
)
