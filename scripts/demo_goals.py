"""The demo's goals next to what the last main-job run measured, and its time per stage.

Reads the work folder after ``./run.sh demo``: the latest evaluation runs in MLflow (every figure
on the **test** split, with its patient-bootstrap interval) and the latest ``all_assets`` run in the
Dagster instance (the wall time of each step). Prints one table of goals and one of stage times.

    CXR_HOME=work DAGSTER_HOME=work/dagster_home python scripts/demo_goals.py
"""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg
import mlflow
import pandas as pd

from cxr_pipeline.settings import tracking_uri_for, work_home

ROOT = Path(__file__).resolve().parents[1]


DOSES = ("1000", "3000", "10000")


def latest_metrics(name: str) -> dict[str, float]:
    return latest_run(name).data.metrics


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


def goal_rows() -> list[dict]:
    gen, sr, dn = (
        latest_metrics("generation_evaluation"),
        latest_metrics("sr_evaluation"),
        latest_metrics("denoising_evaluation"),
    )
    classes = {
        k.removeprefix("cond_acc_class_ddpm_"): v
        for k, v in gen.items()
        if k.startswith("cond_acc_class_ddpm_") and not k.endswith(("_chance", "_real_reference"))
    }
    fd_ratio = gen["fd_cxr_class_ddpm"] / gen["fd_cxr_class_ddpm_real_reference"]
    rows = [
        ("1 cond_acc_class_ddpm >= 0.80", f"{gen['cond_acc_class_ddpm']:.3f}", gen["cond_acc_class_ddpm"] >= 0.8),
        ("1 every class >= 0.5", ", ".join(f"{k} {v:.2f}" for k, v in classes.items()), min(classes.values()) >= 0.5),
        (
            "1 fd_cxr <= 3x real-vs-real",
            f"{gen['fd_cxr_class_ddpm']:.2f} vs {gen['fd_cxr_class_ddpm_real_reference']:.2f} ({fd_ratio:.2f}x)",
            fd_ratio <= 3.0,
        ),
        (
            "1 within-class MS-SSIM within 0.15 of real",
            f"{gen['ms_ssim_class_ddpm']:.3f} vs {gen['ms_ssim_class_ddpm_real_reference']:.3f}",
            abs(gen["ms_ssim_class_ddpm"] - gen["ms_ssim_class_ddpm_real_reference"]) <= 0.15,
        ),
    ]
    gain = sr["psnr_sr_x4_ddim"] - sr["psnr_sr_x4_bicubic_vae"]
    rows += [
        (
            "2 SR default path >= bicubic->VAE + 1 dB",
            f"{sr['psnr_sr_x4_ddim']:.2f} vs {sr['psnr_sr_x4_bicubic_vae']:.2f} (+{gain:.2f} dB)",
            gain >= 1.0,
        ),
        (
            "2 paired gain over bicubic->VAE: interval above 0",
            f"[{sr['psnr_gain_sr_x4_ddim_vs_bicubic_vae_ci_low']:.2f}, "
            f"{sr['psnr_gain_sr_x4_ddim_vs_bicubic_vae_ci_high']:.2f}] dB",
            sr["psnr_gain_sr_x4_ddim_vs_bicubic_vae_ci_low"] > 0,
        ),
        (
            "2 LR-consistency >= 35 dB",
            f"{sr['lr_consistency_psnr_sr_x4_ddim']:.2f}",
            sr["lr_consistency_psnr_sr_x4_ddim"] >= 35,
        ),
        ("2 VAE ceiling >= 31 dB", f"{sr['psnr_sr_x4_vae_ceiling']:.2f}", sr["psnr_sr_x4_vae_ceiling"] >= 31),
        (
            "2 from noise not worse than bicubic",
            f"{sr['psnr_sr_x4_ddim']:.2f} vs {sr['psnr_sr_x4_bicubic']:.2f}",
            sr["psnr_sr_x4_ddim"] >= sr["psnr_sr_x4_bicubic"],
        ),
    ]
    for dose in DOSES:
        model, nlm = dn[f"psnr_denoise_i0_{dose}_diffusion"], dn[f"psnr_denoise_i0_{dose}_nlm"]
        name = f"psnr_gain_denoise_i0_{dose}_diffusion_vs_nlm"
        rows.append(
            (
                f"3 denoiser beats NLM at I0 {dose}, paired interval above 0",
                f"{model:.2f} vs {nlm:.2f}: +{dn[name]:.2f} [{dn[name + '_ci_low']:.2f}, {dn[name + '_ci_high']:.2f}] dB; "
                f"SSIM {dn[f'ssim_denoise_i0_{dose}_diffusion']:.3f} vs {dn[f'ssim_denoise_i0_{dose}_nlm']:.3f}",
                dn[name + "_ci_low"] > 0,
            )
        )
    rows += arbitrary_rows(latest_metrics("arbitrary_sr_evaluation"))
    rows += text_rows(latest_metrics("text_generation_evaluation"))
    rows += utility_rows(latest_run("synthetic_utility"))
    return [{"goal": g, "measured": m, "met": "yes" if ok else "NO"} for g, m, ok in rows]


def arbitrary_rows(ar: dict[str, float]) -> list[tuple[str, str, bool]]:
    """Arbitrary-scale SR: every evaluated scale against bicubic, the fixed-scale model where one
    was trained, LR-consistency inside the training range [1, 4]."""
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
                f"{ar[f'psnr_sr_{name}_arbitrary']:.2f} vs {ar[f'psnr_sr_{name}_bicubic']:.2f}: {ar[gain]:+.2f} "
                f"[{ar[gain + '_ci_low']:.2f}, {ar[gain + '_ci_high']:.2f}] dB",
                ar[gain + "_ci_low"] > 0,
            )
        )
        versus = f"psnr_gain_sr_{name}_arbitrary_vs_fixed"
        if versus in ar:
            rows.append(
                (
                    f"arbitrary SR {name}: within 0.3 dB of the fixed-scale model or better",
                    f"{ar[versus]:+.2f} [{ar[versus + '_ci_low']:.2f}, {ar[versus + '_ci_high']:.2f}] dB",
                    ar[versus] >= -0.3,
                )
            )
        if float(name[1:].replace("p", ".")) <= 4:
            consistency = ar[f"lr_consistency_psnr_sr_{name}_arbitrary"]
            rows.append((f"arbitrary SR {name}: LR-consistency >= 35 dB", f"{consistency:.2f}", consistency >= 35))
    return rows


def text_rows(tx: dict[str, float]) -> list[tuple[str, str, bool]]:
    """Text-conditional generation: consistency overall and per finding, negation, FD."""
    key = "prompt_consistency_text_ldm"
    per = {
        k.removeprefix(key + "_"): v
        for k, v in tx.items()
        if k.startswith(key + "_")
        and not k.endswith(("_unconditional", "_retrieval", "_real_reference", "_ci_low", "_ci_high"))
    }
    fd_ratio = tx["fd_cxr_text_ldm"] / tx["fd_cxr_text_ldm_real_reference"]
    return [
        (
            "text prompt consistency >= 0.80",
            f"{tx[key]:.3f} [{tx.get(key + '_ci_low', float('nan')):.3f}, "
            f"{tx.get(key + '_ci_high', float('nan')):.3f}] "
            f"(without the prompt {tx[key + '_unconditional']:.3f}, "
            f"retrieval {tx[key + '_retrieval']:.3f}, real images "
            f"{tx[key + '_real_reference']:.3f}; w = {tx['guidance_text_ldm']:g})",
            tx[key] >= 0.8,
        ),
        ("text every finding >= 0.5", ", ".join(f"{k} {v:.2f}" for k, v in per.items()), min(per.values()) >= 0.5),
        (
            "text negation rate not above normal reports'",
            f"{tx['negation_rate_text_ldm']:.3f} vs "
            f"{tx['negation_rate_text_ldm_normal_reference']:.3f} (real "
            f"images of the denying reports "
            f"{tx.get('negation_rate_text_ldm_real_reference', float('nan')):.3f})",
            tx["negation_rate_text_ldm"] <= tx["negation_rate_text_ldm_normal_reference"],
        ),
        (
            "text fd_cxr <= 3x real-vs-real",
            f"{tx['fd_cxr_text_ldm']:.2f} vs {tx['fd_cxr_text_ldm_real_reference']:.2f} ({fd_ratio:.2f}x)",
            fd_ratio <= 3.0,
        ),
        (
            "text memorization: share closer to train than any real test image (features / pixels) = 0",
            f"{tx['memorized_share_text_ldm_feature']:.3f} / {tx['memorized_share_text_ldm_pixel']:.3f}",
            tx["memorized_share_text_ldm_feature"] == 0 and tx["memorized_share_text_ldm_pixel"] == 0,
        ),
    ]


def utility_rows(run) -> list[tuple[str, str, bool]]:
    """The augmentation experiment: real + synthetic not worse than real only; balancing helps
    the rarest class."""
    m, rarest = run.data.metrics, run.data.params["rarest_class"]

    def interval(name: str) -> str:
        return f"{m[name]:+.3f} [{m[name + '_ci_low']:+.3f}, {m[name + '_ci_high']:+.3f}]"

    diff, rare = "auroc_utility_diff_real_synthetic", f"auroc_utility_diff_real_balanced_{rarest}"
    return [
        (
            "real + synthetic not worse than real only (macro AUROC difference interval reaches 0)",
            f"{interval(diff)} (real only {m['auroc_utility_real']:.3f})",
            m[diff + "_ci_high"] >= 0,
        ),
        (
            f"balancing improves the rarest class's AUROC ({rarest})",
            f"{interval(rare)} (real only {m[f'auroc_utility_real_{rarest}']:.3f})",
            m[rare] > 0,
        ),
    ]


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
