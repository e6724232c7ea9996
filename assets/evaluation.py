"""Evaluation stage: each model evaluated on the test split, every asset built by one factory.

Each evaluation (``cxr_pipeline.kinds.EVALUATIONS``: a kind's suite bound to the models it reads)
becomes one asset whose run config is generated from the evaluation's budget, caps, promotion
rule and options, as the training configs are from the recipes. The asset runs the evaluation
and publishes what it returns as one MLflow run tagged with the Dagster lineage and the model
versions it evaluated: every figure as a metric (``<metric>_<task>_<method>``, see the README), a
self-contained HTML report and its Markdown twin (also artifacts), a link to it from each
evaluated model's training run, the registered version tagged with the evaluation run, and a WARN
check that says whether the model beats its classical baseline.
"""

import dataclasses
import time
import typing
from collections.abc import Callable
from typing import Any

import dagster as dg
import pydantic

from cxr_pipeline import compute, kinds, tracking
from cxr_pipeline.evaluation.caps import caps_for
from cxr_pipeline.evaluation.outcome import Evaluation, EvaluationOutcome, PromotionPolicy, SamplingBudget, SuiteInputs
from cxr_pipeline.evaluation.publish import evaluation_tags, publish_outcome, write_outcome
from cxr_pipeline.metrics.verdicts import NOT_WORSE_AUROC_MARGIN, not_worse
from resources import CxrSettings, MlflowTracking

from .diffusion import arbitrary_sr, class_ddpm, latent_sr, low_dose_denoiser
from .labels import image_metadata
from .models import cxr_classifier
from .pairs import low_dose_pairs, sr_pairs
from .text import text_ldm
from .training import HEAVY_STEP, TRAINING_STEP, ahead, dataclass_fields

# --- The run config, generated from the evaluation ------------------------------------------------------

# An evaluation's caps as its run config names them; None takes the profile's (cxr_pipeline/evaluation/caps.py)
CAP_FIELDS = {
    "test_images": "max_test_images",
    "val_images": "max_val_images",
    "train_reference": "max_train_reference",
    "utility_train_images": "max_train_images",
}
POLICY_FIELDS = {
    "metric": "promotion_metric",
    "guards": "promotion_guards",
    "tolerance": "promotion_tolerance",
    "detail_guards": "promotion_detail_guards",
}


def _as_config_value(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def evaluation_config(evaluation: Evaluation) -> type[dg.Config]:
    """The asset's run config, field for field: the budget fields the evaluation uses (with its
    defaults), its caps (``max_<...>``, None: the profile's), its promotion rule
    (``promotion_<...>``, when it promotes) and its suite's options. No default is written twice."""
    fields: dict[str, Any] = {}
    budget_hints = typing.get_type_hints(SamplingBudget)
    for name in evaluation.budget_fields:
        fields[name] = (budget_hints[name], pydantic.Field(default=getattr(evaluation.budget, name)))
    for cap in evaluation.caps:
        fields[CAP_FIELDS[cap]] = (int | None, pydantic.Field(default=None))
    if evaluation.promotes:
        hints = {"metric": str, "guards": list[str], "tolerance": float, "detail_guards": list[str]}
        for name, field_name in POLICY_FIELDS.items():
            fields[field_name] = (
                hints[name],
                pydantic.Field(default=_as_config_value(getattr(evaluation.policy, name))),
            )
    fields.update(dataclass_fields(evaluation.options))
    name = "".join(part.title() for part in evaluation.name.split("_")) + "Config"
    config = pydantic.create_model(name, __base__=dg.Config, __module__=__name__, **fields)
    config.__doc__ = f"The run config of ``{evaluation.name}``, generated from its ``Evaluation``."
    return config


def _budget(evaluation: Evaluation, config: dg.Config) -> SamplingBudget:
    return dataclasses.replace(evaluation.budget, **{f: getattr(config, f) for f in evaluation.budget_fields})


def _policy(evaluation: Evaluation, config: dg.Config) -> PromotionPolicy:
    if not evaluation.promotes:
        return evaluation.policy
    values = {name: getattr(config, field_name) for name, field_name in POLICY_FIELDS.items()}
    return PromotionPolicy(
        values["metric"], tuple(values["guards"]), values["tolerance"], tuple(values["detail_guards"])
    )


def _options(evaluation: Evaluation, config: dg.Config) -> Any:
    return evaluation.options(
        **{spec.name: getattr(config, spec.name) for spec in dataclasses.fields(evaluation.options)}
    )


def _caps(evaluation: Evaluation, config: dg.Config, settings: CxrSettings):
    """The profile's caps with the ones the config sets."""
    overrides = {cap: getattr(config, CAP_FIELDS[cap]) for cap in evaluation.caps}
    return dataclasses.replace(
        caps_for(settings.profile_spec().name), **{k: v for k, v in overrides.items() if v is not None}
    )


# --- Publishing ---------------------------------------------------------------------------------------------

BEATS_BASELINE = "beats_classical_baseline"


def _baseline_check_spec(asset_name: str) -> dg.AssetCheckSpec:
    return dg.AssetCheckSpec(
        BEATS_BASELINE,
        asset=asset_name,
        description="Warns when the evaluated model does not beat its classical baseline on the "
        "test split (bicubic, non-local means, chance-level conditional accuracy)",
    )


def _publish(
    context: dg.AssetExecutionContext,
    settings: CxrSettings,
    mlflow_tracking: MlflowTracking,
    config: dg.Config,
    outcome: EvaluationOutcome,
    check: dg.AssetCheckResult | None = None,
) -> dg.MaterializeResult:
    """Report folder, MLflow run (tagged with the Dagster lineage), asset metadata, and the
    promotion gate shown in the UI as a check: each model figure beside its baseline figure
    (or the asset's own ``check``)."""
    for draw in outcome.draws:
        context.log.info(f"scored {draw.describe()}")
    folder = settings.paths().reports / outcome.name / f"{time.strftime('%Y%m%d-%H%M%S')}-{context.run.run_id[:8]}"
    html, markdown = write_outcome(outcome, folder)
    outcome.params = {**config.model_dump(), **outcome.params}
    with mlflow_tracking.run(
        context,
        run_name=f"evaluate-{outcome.name}",
        tags=evaluation_tags(outcome),
        experiment=mlflow_tracking.evaluation_experiment,
    ) as run:
        # the splits it read: the baselines fit on train and val, the figures are on test
        tracking.log_split_inputs(settings.paths(), settings.profile_spec().name, ("train", "val", "test"))
        run_id = publish_outcome(outcome, folder, html)
    context.log.info(f"report: {html}")
    verdicts = outcome.baseline_verdicts()
    check = check or dg.AssetCheckResult(
        check_name=BEATS_BASELINE,
        passed=all(v.beaten for v in verdicts),
        severity=dg.AssetCheckSeverity.WARN,
        metadata={
            **{v.metric: float(round(v.value, 5)) for v in verdicts},
            **{v.baseline: float(round(v.baseline_value, 5)) for v in verdicts},
            "verdict": dg.MetadataValue.md("\n".join(f"- {v.describe()}" for v in verdicts)),
        },
    )
    return dg.MaterializeResult(
        metadata={
            "summary": dg.MetadataValue.md(outcome.summary),
            **({"promotion": dg.MetadataValue.md(outcome.promotion_summary())} if outcome.promotions else {}),
            **outcome.asset_metadata,
            "images_scored": dg.MetadataValue.md("\n".join(f"- {d.describe()}" for d in outcome.draws)),
            "report": dg.MetadataValue.path(str(html)),
            "report_markdown": dg.MetadataValue.path(str(markdown)),
            "evaluation_mlflow_run_id": run_id,
            **mlflow_tracking.run_link(run, "evaluation_mlflow_run_url"),
            **outcome.headline(),
        },
        check_results=[check],
    )


# --- The factory --------------------------------------------------------------------------------------------


def evaluation_asset(
    evaluation: Evaluation,
    deps: list,
    *,
    step: dict | None = None,
    check_spec: dg.AssetCheckSpec | None = None,
    check: Callable[[EvaluationOutcome], dg.AssetCheckResult] | None = None,
) -> dg.AssetsDefinition:
    """The asset of one evaluation: read its inputs once, run it, publish. Its check is the
    baseline gate unless ``check_spec`` and ``check`` (outcome -> result) say otherwise."""
    config_class = evaluation_config(evaluation)

    def materialize(
        context: dg.AssetExecutionContext, config, settings: CxrSettings, mlflow_tracking: MlflowTracking
    ) -> dg.MaterializeResult:
        compute.count_as_heavy_step()  # its share of the cores beside the other heavy steps
        mlflow_tracking.activate()
        inputs = SuiteInputs.of(
            settings.paths(), _caps(evaluation, config, settings), settings.profile_spec().name, context.log.info
        )
        outcome = evaluation.run(
            inputs, _budget(evaluation, config), _policy(evaluation, config), _options(evaluation, config)
        )
        return _publish(context, settings, mlflow_tracking, config, outcome, check(outcome) if check else None)

    materialize.__annotations__["config"] = config_class
    return dg.asset(
        name=evaluation.name,
        description=evaluation.description,
        group_name="evaluation",
        deps=deps,
        kinds={"pytorch", "mlflow"},
        check_specs=[check_spec or _baseline_check_spec(evaluation.name)],
        **(step or HEAVY_STEP),
    )(materialize)


# --- The evaluations ------------------------------------------------------------------------------------------


def _of(kind: kinds.ModelKind) -> Evaluation:
    if kind.evaluation is None:
        raise ValueError(f"{kind.key} has no evaluation")
    return kind.evaluation


sr_evaluation = evaluation_asset(_of(kinds.LATENT_SR), [latent_sr, sr_pairs])
arbitrary_sr_evaluation = evaluation_asset(_of(kinds.ARBITRARY_SR), [arbitrary_sr, latent_sr, sr_pairs])
denoising_evaluation = evaluation_asset(_of(kinds.DENOISER), [low_dose_denoiser, low_dose_pairs])
generation_evaluation = evaluation_asset(_of(kinds.CLASS_DDPM), [class_ddpm, cxr_classifier])
text_generation_evaluation = evaluation_asset(
    _of(kinds.TEXT_LDM), [text_ldm, cxr_classifier], step=ahead(HEAVY_STEP, 1)
)

NOT_WORSE = "synthetic_not_worse_than_real"
DIFFERENCE = (
    "auroc_utility_diff_real_synthetic",
    "auroc_utility_diff_real_synthetic_ci_low",
    "auroc_utility_diff_real_synthetic_ci_high",
)


def _not_worse(outcome: EvaluationOutcome) -> dg.AssetCheckResult:
    """Real + synthetic against real only, judged on the paired interval with the declared margin
    (cxr_pipeline/metrics/verdicts.py): warns unless non-inferiority is shown."""
    metrics = outcome.metrics
    difference = {k: float(round(metrics[k], 5)) for k in DIFFERENCE if k in metrics}
    if len(difference) < len(DIFFERENCE):
        return dg.AssetCheckResult(
            check_name=NOT_WORSE,
            passed=True,
            severity=dg.AssetCheckSeverity.WARN,
            metadata={"verdict": "real_synthetic not run"},
        )
    judged = not_worse(metrics[DIFFERENCE[1]], metrics[DIFFERENCE[2]])
    return dg.AssetCheckResult(
        check_name=NOT_WORSE,
        passed=judged.met,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={
            **difference,
            "margin": NOT_WORSE_AUROC_MARGIN,
            "verdict": judged.verdict.value,
            "why": judged.reason,
        },
    )


synthetic_utility = evaluation_asset(
    kinds.SYNTHETIC_UTILITY,
    [class_ddpm, text_ldm, image_metadata],
    step=ahead(TRAINING_STEP, 1),
    check_spec=dg.AssetCheckSpec(
        NOT_WORSE,
        asset="synthetic_utility",
        description="Warns unless a classifier trained on real plus generated images is shown not worse "
        "on the real test split than one trained on real images only: the macro-AUROC difference's "
        "interval must lie above the declared margin (-0.02)",
    ),
    check=_not_worse,
)
