"""The demo's goals next to what the last main-job run measured, and its time per stage.

Reads the work folder after ``./run.sh demo``: the latest evaluation runs in MLflow (every figure
on the **test** split, with its patient-bootstrap interval; each goal judged on that interval
against a declared margin, ``cxr_pipeline/metrics/verdicts.py``: met, missed or cannot be
judged, and tied to the MLflow run it reads) and the latest ``all_assets`` run in the
Dagster instance (the wall time of each step). Prints one table of goals and one of stage times.

    CXR_HOME=work DAGSTER_HOME=work/dagster_home python scripts/demo_goals.py
"""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg
import mlflow
import pandas as pd

from cxr_pipeline.metrics.verdicts import (
    NOT_WORSE_AUROC_MARGIN,
    Judged,
    at_least,
    at_most,
    improves,
    no_interval,
    not_worse,
    within,
)
from cxr_pipeline.settings import tracking_uri_for, work_home

ROOT = Path(__file__).resolve().parents[1]


DOSES = ("1000", "3000", "10000")
# Declared margins (each goal's bar, fixed before looking at a result; verdicts.py has the AUROC one):
SR_MARGIN_DB = 1.0  # the latent SR model's gain over the latent path without diffusion
ARBITRARY_VS_FIXED_DB = 0.3  # how much PSNR the arbitrary-scale model may give up to a fixed-scale one
MS_SSIM_MARGIN = 0.05  # within-class diversity: |generated - real| MS-SSIM, per class, resampled over classes

Row = tuple[str, str, Judged, str]  # goal, measured, verdict, the evaluation run it reads


def latest_run(name: str):
    runs = mlflow.search_runs(
        search_all_experiments=True,
        filter_string=f"attributes.run_name = 'evaluate-{name}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
        output_format="list",
    )
    if not runs:
        raise SystemExit(f"no evaluate-{name} run in {mlflow.get_tracking_uri()}: run ./run.sh demo first")
    return runs[0]


def interval(m: dict[str, float], name: str, digits: int = 3) -> str:
    return f"{m[name]:.{digits}f} [{m[name + '_ci_low']:.{digits}f}, {m[name + '_ci_high']:.{digits}f}]"


def ends(m: dict[str, float], name: str) -> tuple[float, float]:
    return m[name + "_ci_low"], m[name + "_ci_high"]


def goal_rows() -> list[dict]:
    runs = {
        name: latest_run(name)
        for name in (
            "generation_evaluation",
            "sr_evaluation",
            "denoising_evaluation",
            "arbitrary_sr_evaluation",
            "text_generation_evaluation",
            "synthetic_utility",
        )
    }
    rows: list[Row] = []
    for name, build in (
        ("generation_evaluation", generation_rows),
        ("sr_evaluation", sr_rows),
        ("denoising_evaluation", denoising_rows),
        ("arbitrary_sr_evaluation", arbitrary_rows),
        ("text_generation_evaluation", text_rows),
        ("synthetic_utility", utility_rows),
    ):
        run = runs[name]
        rows += [(goal, measured, judged, f"{name} {run.info.run_id[:8]}") for goal, measured, judged in build(run)]
    return [
        {"goal": goal, "measured": measured, "verdict": judged.verdict.value, "why": judged.reason, "run": run}
        for goal, measured, judged, run in rows
    ]


def generation_rows(run) -> list[tuple[str, str, Judged]]:
    gen = run.data.metrics
    rows = [
        (
            "cond_acc >= 0.80 (samples resampled)",
            interval(gen, "cond_acc_class_ddpm"),
            at_least(*ends(gen, "cond_acc_class_ddpm"), 0.8),
        ),
        (
            "every class >= 0.5 (the weakest class's interval)",
            interval(gen, "cond_acc_weakest_class_ddpm"),
            at_least(*ends(gen, "cond_acc_weakest_class_ddpm"), 0.5),
        ),
        (
            "fd_cxr <= 3x real-vs-real, at equal counts (bootstrap of the ratio)",
            f"{interval(gen, 'fd_ratio_class_ddpm', 2)}x ({gen['fd_cxr_class_ddpm_at_reference_count']:.2f} vs "
            f"{gen['fd_cxr_class_ddpm_real_reference']:.2f} at {gen['fd_reference_count_class_ddpm']:.0f} images)",
            at_most(*ends(gen, "fd_ratio_class_ddpm"), 3.0),
        ),
    ]
    if "ms_ssim_diff_class_ddpm" in gen:
        rows.append(
            (
                f"within-class MS-SSIM within ±{MS_SSIM_MARGIN:g} of real (classes resampled)",
                f"{interval(gen, 'ms_ssim_diff_class_ddpm')} ({gen['ms_ssim_class_ddpm']:.3f} vs "
                f"{gen['ms_ssim_class_ddpm_real_reference']:.3f})",
                within(*ends(gen, "ms_ssim_diff_class_ddpm"), MS_SSIM_MARGIN),
            )
        )
    return rows


def tradeoff_rows(
    m: dict[str, float], task: str, model: str, reference: str, label: str
) -> list[tuple[str, str, Judged]]:
    """Where the diffusion model sits against a learned regression baseline: PSNR and fine detail."""
    gain, detail = f"psnr_gain_{task}_{model}_vs_{reference}", f"detail_advantage_{task}_{model}_vs_{reference}"
    if gain not in m:
        return []
    return [
        (
            f"{label}: wins on PSNR against the regression CNN",
            f"{interval(m, gain, 2)} dB",
            at_least(*ends(m, gain), 0.0),
        ),
        (
            f"{label}: wins on fine detail against the regression CNN",
            f"{interval(m, detail)} in |log detail ratio| ({m[f'detail_{task}_{model}']:.2f} vs "
            f"{m[f'detail_{task}_{reference}']:.2f})",
            at_least(*ends(m, detail), 0.0),
        ),
    ]


def sr_rows(run) -> list[tuple[str, str, Judged]]:
    sr = run.data.metrics
    gain = "psnr_gain_sr_x4_ddim_vs_bicubic_vae"
    return [
        (
            f"SR default path >= bicubic->VAE + {SR_MARGIN_DB:g} dB (paired interval)",
            f"{interval(sr, gain, 2)} dB",
            at_least(*ends(sr, gain), SR_MARGIN_DB),
        ),
        (
            "SR LR-consistency >= 35 dB",
            interval(sr, "lr_consistency_psnr_sr_x4_ddim", 2),
            at_least(*ends(sr, "lr_consistency_psnr_sr_x4_ddim"), 35.0),
        ),
        (
            "VAE ceiling >= 31 dB",
            interval(sr, "psnr_sr_x4_vae_ceiling", 2),
            at_least(*ends(sr, "psnr_sr_x4_vae_ceiling"), 31.0),
        ),
        (
            "SR from noise not worse than bicubic (paired interval above 0)",
            f"{interval(sr, 'psnr_gain_sr_x4_ddim', 2)} dB",
            at_least(*ends(sr, "psnr_gain_sr_x4_ddim"), 0.0),
        ),
        *tradeoff_rows(sr, "sr_x4", "ddim", "regression", "SR x4"),
    ]


def denoising_rows(run) -> list[tuple[str, str, Judged]]:
    dn, rows = run.data.metrics, []
    for dose in DOSES:
        task = f"denoise_i0_{dose}"
        classical = [ref for ref in ("vst_bm3d", "vst_nlm", "nlm") if f"psnr_gain_{task}_diffusion_vs_{ref}" in dn]
        lows = [dn[f"psnr_gain_{task}_diffusion_vs_{ref}_ci_low"] for ref in classical]
        highs = [dn[f"psnr_gain_{task}_diffusion_vs_{ref}_ci_high"] for ref in classical]
        rows.append(
            (
                f"denoiser beats every classical baseline at I0 {dose} ({', '.join(classical)}), paired interval above 0",
                "; ".join(
                    f"vs {ref} {interval(dn, f'psnr_gain_{task}_diffusion_vs_{ref}', 2)} dB" for ref in classical
                ),
                at_least(min(lows), min(highs), 0.0) if classical else no_interval("no classical baseline logged"),
            )
        )
        rows += tradeoff_rows(dn, task, "diffusion", "regression", f"denoiser at I0 {dose}")
    return rows


def arbitrary_rows(run) -> list[tuple[str, str, Judged]]:
    """Arbitrary-scale SR: every evaluated scale against bicubic, the fixed-scale model where one
    was trained, LR-consistency inside the training range [1, 4]."""
    ar = run.data.metrics
    scales = sorted(
        {
            k.removeprefix("psnr_sr_").removesuffix("_arbitrary")
            for k in ar
            if k.startswith("psnr_sr_x") and k.endswith("_arbitrary")
        },
        key=lambda n: float(n[1:].replace("p", ".")),
    )
    rows = []
    for name in scales:
        gain = f"psnr_gain_sr_{name}_arbitrary"
        rows.append(
            (
                f"arbitrary SR beats bicubic at {name}, paired interval above 0",
                f"{interval(ar, gain, 2)} dB",
                at_least(*ends(ar, gain), 0.0),
            )
        )
        versus = f"psnr_gain_sr_{name}_arbitrary_vs_fixed"
        if versus in ar:
            rows.append(
                (
                    f"arbitrary SR {name}: not worse than the fixed-scale model by {ARBITRARY_VS_FIXED_DB:g} dB",
                    f"{interval(ar, versus, 2)} dB",
                    at_least(*ends(ar, versus), -ARBITRARY_VS_FIXED_DB),
                )
            )
        if float(name[1:].replace("p", ".")) <= 4:
            consistency = f"lr_consistency_psnr_sr_{name}_arbitrary"
            rows.append(
                (
                    f"arbitrary SR {name}: LR-consistency >= 35 dB",
                    interval(ar, consistency, 2),
                    at_least(*ends(ar, consistency), 35.0),
                )
            )
    return rows


def text_rows(run) -> list[tuple[str, str, Judged]]:
    """Text-conditional generation: consistency overall and per finding, negation, FD, memorization."""
    tx, key = run.data.metrics, "prompt_consistency_text_ldm"
    rows = [
        (
            "text prompt consistency >= 0.80 (patients resampled)",
            f"{interval(tx, key)} (without the prompt {tx[key + '_unconditional']:.3f}, retrieval "
            f"{tx[key + '_retrieval']:.3f}, real images {tx[key + '_real_reference']:.3f}; w = {tx['guidance_text_ldm']:g})",
            at_least(*ends(tx, key), 0.8),
        ),
        (
            "text every finding >= 0.5 (the weakest finding's interval)",
            interval(tx, "prompt_consistency_weakest_text_ldm"),
            at_least(*ends(tx, "prompt_consistency_weakest_text_ldm"), 0.5),
        ),
        (
            "text negation rate not above normal reports'",
            f"{tx['negation_rate_text_ldm']:.3f} vs {tx['negation_rate_text_ldm_normal_reference']:.3f} (real images "
            f"of the denying reports {tx.get('negation_rate_text_ldm_real_reference', float('nan')):.3f})",
            no_interval("a rate over a handful of denying reports per finding"),
        ),
        (
            "text fd_cxr <= 3x real-vs-real, at equal counts (bootstrap of the ratio)",
            f"{interval(tx, 'fd_ratio_text_ldm', 2)}x",
            at_most(*ends(tx, "fd_ratio_text_ldm"), 3.0),
        ),
    ]
    for space in ("feature", "pixel"):
        name = f"memorized_share_text_ldm_{space}"
        rows.append(
            (
                f"text memorization ({space}s): flagged share at most real val images' rate + 0.05",
                f"{interval(tx, name)} (real val {tx[name + '_val_reference']:.3f})",
                at_most(*ends(tx, name), tx[name + "_allowed"]),
            )
        )
    return rows


def utility_rows(run) -> list[tuple[str, str, Judged]]:
    """The augmentation experiment: real + synthetic not worse than real only (declared margin);
    balancing improves the rarest class (interval above 0, unless it is at the ceiling)."""
    m, rarest = run.data.metrics, run.data.params["rarest_class"]
    diff, rare = "auroc_utility_diff_real_synthetic", f"auroc_utility_diff_real_balanced_{rarest}"
    rows = [
        (
            f"real + synthetic not worse than real only (macro AUROC difference above -{NOT_WORSE_AUROC_MARGIN:g})",
            f"{interval(m, diff)} (real only {m['auroc_utility_real']:.3f})",
            not_worse(*ends(m, diff)),
        )
    ]
    if rare in m:
        real = m[f"auroc_utility_real_{rarest}"]
        rows.append(
            (
                f"balancing improves the rarest class's AUROC ({rarest})",
                f"{interval(m, rare)} (real only {real:.3f})",
                improves(*ends(m, rare), real),
            )
        )
    return rows


def stage_rows() -> tuple[list[dict], float, dict]:
    """Each step's seconds and when it started and ended (minutes into the run), the run's wall
    time, and how the time was spent: heavy steps at once on average, and the longest chain of
    dependent steps at the measured durations (the floor no number of cores lowers)."""
    # the instance run.sh uses (DAGSTER_HOME, else the work folder's), not one this shell may lack
    os.environ.setdefault("DAGSTER_HOME", str(work_home() / "dagster_home"))
    instance = dg.DagsterInstance.get()
    records = instance.get_run_records(
        dg.RunsFilter(job_name="all_assets", statuses=[dg.DagsterRunStatus.SUCCESS]), limit=1
    )
    if not records:
        raise SystemExit("no successful all_assets run in this Dagster instance")
    record = records[0]
    stats = [s for s in instance.get_run_step_stats(record.dagster_run.run_id) if s.end_time and s.start_time]
    begin, wall = record.start_time, record.end_time - record.start_time
    seconds = {s.step_key: s.end_time - s.start_time for s in stats}
    rows = sorted(
        (
            {
                "step": s.step_key,
                "seconds": round(seconds[s.step_key], 1),
                "start (min)": round((s.start_time - begin) / 60, 1),
                "end (min)": round((s.end_time - begin) / 60, 1),
            }
            for s in stats
        ),
        key=lambda r: -r["seconds"],
    )
    heavy = {key.to_user_string() for key in heavy_assets()}
    chain, chain_s = longest_chain(seconds)
    return (
        rows,
        wall,
        {
            "heavy_at_once": sum(v for k, v in seconds.items() if k in heavy) / wall,
            "steps_s": sum(seconds.values()),
            "chain": chain,
            "chain_s": chain_s,
        },
    )


def heavy_assets():
    """The assets whose steps count against the heavy-step limit (training and evaluation)."""
    from definitions import defs

    return [
        key
        for key in defs.resolve_asset_graph().get_all_asset_keys()
        if defs.resolve_assets_def(key).op.tags.get("cxr/compute") == "training"
    ]


def longest_chain(seconds: dict[str, float]) -> tuple[list[str], float]:
    """The asset graph's longest path, each asset weighted by its step's measured seconds."""
    from definitions import defs

    graph = defs.resolve_asset_graph()
    parents = {
        key.to_user_string(): [p.to_user_string() for p in graph.get(key).parent_keys]
        for key in graph.get_all_asset_keys()
    }
    best: dict[str, tuple[float, list[str]]] = {}

    def finish(name: str) -> tuple[float, list[str]]:
        if name not in best:
            before = max((finish(p) for p in parents.get(name, []) if p in seconds), default=(0.0, []))
            best[name] = (before[0] + seconds.get(name, 0.0), [*before[1], name])
        return best[name]

    total, chain = max(finish(name) for name in parents if name in seconds)
    return chain, total


def main() -> None:
    home = work_home()
    mlflow.set_tracking_uri(tracking_uri_for(home))
    print(pd.DataFrame(goal_rows()).to_markdown(index=False))
    stages, total, spent = stage_rows()
    print()
    print(pd.DataFrame(stages).to_markdown(index=False))
    print(
        f"\nall_assets run, start to success: {total / 60:.1f} min; the steps' time added up: "
        f"{spent['steps_s'] / 60:.1f} min; heavy steps at once on average: {spent['heavy_at_once']:.2f}"
    )
    print(f"longest chain at these durations: {spent['chain_s'] / 60:.1f} min ({' -> '.join(spent['chain'])})")


if __name__ == "__main__":
    main()
