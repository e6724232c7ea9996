"""What a ``full``-profile run costs, measured on this machine, and what it would cost on NIH
ChestX-ray14 (112,120 images) and MIMIC-CXR-JPG (377,110 images).

The main job runs at the tiny budget (``jobs/budgets.py``: every training 2 steps, every evaluation
2 DDIM steps on at most 4 test images) under ``CXR_PROFILE=full`` (256 px, the profile's own VAE,
UNets and encoder) on generated data in the real layouts (NIH PNGs, DICOM, OpenI reports) at two
sizes, ``--patients`` and ``--factor`` times as many, each in this process with a thread sampling
its anonymous resident memory (RssAnon: what the process holds, not the memory-mapped stores it
reads). Per stage it reports wall time and peak memory at both sizes and their growth, and fits
``cost = fixed + per image x images`` through the two points to project each stage at NIH and
MIMIC size:

- data stages (ingestion, labels, pairs, latents): the fit, with the pairs and latents scaled from
  the tiny budget's one scale and one dose to the defaults' two scales and three doses;
- training stages: the fit (what grows with the data: the arbitrary-scale model's conditions,
  scaled from 1 draw per image to the recipe's 6) plus the recipe's own steps x batch at the
  throughput each training logged to MLflow (``images_per_s``, median over its steps);
- evaluation stages: their cost is capped (``cxr_pipeline/evaluation/caps.py``), so it must not
  grow with the data (flagged when it grows more than 1.2x); projected from the tiny budget's 4
  images and 2 DDIM steps to the profile's cap and the suite's default DDIM steps (linear in both:
  a rough upper bound, since fixed costs are scaled too).

Flags: time growing faster than the data (more than 1.1x the data's growth), an evaluation growing
at all (over 1.2x), memory growing with the data, and a projected peak over 16 GiB.

    python scripts/full_run_plan.py [--patients 16] [--factor 4] [--workers 2] [--json plan.json]

On a machine with CUDA the same script measures the GPU (device ``auto``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

NIH_IMAGES, MIMIC_IMAGES = 112_120, 377_110
MEMORY_LIMIT_GB = 16.0
DATA_STAGES = ("ingested_images", "label_table", "image_metadata", "sr_pairs", "low_dose_pairs", "latents")
# the tiny budget builds one SR scale and one dose; the defaults build two and three
DEFAULT_WORK_PER_TINY = {"sr_pairs": 2.0, "low_dose_pairs": 3.0, "latents": 3 / 2}


class MemorySampler(threading.Thread):
    """This process's anonymous resident memory (GiB) every ``interval`` seconds, with times."""

    def __init__(self, interval: float = 0.2):
        super().__init__(daemon=True)
        self.interval, self.samples, self.running = interval, [], True

    @staticmethod
    def rss_anon_gb() -> float:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) / 2**20
        return float("nan")

    def run(self) -> None:
        while self.running:
            self.samples.append((time.time(), self.rss_anon_gb()))
            time.sleep(self.interval)

    def peak(self, start: float, end: float) -> float:
        """What a step added at its peak: the highest sample during it over the last one before
        it (the process keeps what earlier steps allocated, so absolute figures would mix them)."""
        before = [gb for t, gb in self.samples if t <= start]
        inside = [gb for t, gb in self.samples if start <= t <= end]
        if not inside:
            return 0.0
        return max(0.0, max(inside) - (before[-1] if before else inside[0]))


def run_once(patients: int, workers: int, root: Path) -> dict:
    """The smoke job under the full profile on ``patients`` generated patients: per stage seconds
    and peak GiB, the images per split, and each training's measured throughput."""
    import dagster as dg
    from mlflow.tracking import MlflowClient

    import definitions
    from cxr_pipeline.data.demo.dataset import DemoSpec, generate_demo_dataset
    from cxr_pipeline.settings import default_tracking_uri
    from jobs.budgets import tiny_run_config
    from resources import CxrSettings, MlflowTracking

    os.environ.pop("MLFLOW_TRACKING_URI", None)  # MLflow exports the last store it was pointed at
    data, home = root / "data", root / "home"
    generate_demo_dataset(data, DemoSpec(patients=patients, source_size=512, dicom_share=0.1), workers=workers)
    settings = CxrSettings(home=str(home), data_dir=str(data), profile="full", workers=workers)
    sampler = MemorySampler()
    sampler.start()
    started = time.time()
    # the smoke job's run config on the main job (a job with a default config ignores resources
    # passed in process), with a quarter of the patients each in val and test so that small data
    # still has labelled images and reports in every split
    run_config = tiny_run_config()
    for labels in ("label_table", "image_metadata"):
        run_config["ops"][labels] = {"config": {"split_fractions": [0.5, 0.25, 0.25]}}
    # caps below the smaller dataset's splits, so that both sizes score the same number of images
    # (the tiny budget's own caps are above them for the text model and the utility experiment)
    text = run_config["ops"]["text_generation_evaluation"]["config"]
    text.update(max_test_images=8, max_val_images=8)
    run_config["ops"]["synthetic_utility"]["config"].update(
        arms=["real", "real_class"], max_train_images=16, max_val_images=8, max_test_images=4
    )
    instance = dg.DagsterInstance.ephemeral()
    result = definitions.defs.resolve_job_def("all_assets").execute_in_process(
        run_config=run_config,
        resources={"settings": settings, "mlflow_tracking": MlflowTracking(settings=settings)},
        instance=instance,
        raise_on_error=False,
    )
    total = time.time() - started
    sampler.running = False
    begun, stages = {}, {}
    for entry in instance.all_logs(result.run_id):
        event = entry.dagster_event
        if event is None:
            continue
        if event.event_type == dg.DagsterEventType.STEP_START:
            begun[event.step_key] = entry.timestamp
        elif event.event_type in (dg.DagsterEventType.STEP_SUCCESS, dg.DagsterEventType.STEP_FAILURE):
            start = begun[event.step_key]
            stages[event.step_key] = {
                "seconds": entry.timestamp - start,
                "peak_gb": sampler.peak(start, entry.timestamp),
                "ok": event.event_type == dg.DagsterEventType.STEP_SUCCESS,
            }
    import pandas as pd

    metadata = pd.read_parquet(home / "metadata.parquet")
    client = MlflowClient(default_tracking_uri(home))
    throughput = {}
    for model in client.search_registered_models():
        version = client.get_model_version(model.name, "1")
        history = client.get_metric_history(version.run_id, "images_per_s")
        if history:
            throughput[model.name] = float(pd.Series([m.value for m in history]).median())
    return {
        "patients": patients,
        "images": len(metadata),
        "splits": metadata["split"].value_counts().to_dict(),
        "success": result.success,
        "total_seconds": total,
        "stages": stages,
        "throughput": throughput,
    }


# The recipe behind each training asset's throughput, and the registered model whose runs log it
TRAINING = {
    "vae": ("vae", "cxr-vae"),
    "latent_sr": ("latent_sr", "cxr-latent-sr-x4"),
    "class_ddpm": ("class_ddpm", "cxr-class-ddpm"),
    "low_dose_denoiser": ("denoiser", "cxr-lowdose-denoiser"),
    "arbitrary_sr": ("arbitrary_sr", "cxr-arbitrary-sr"),
    "report_encoder": ("report_encoder", "cxr-report-encoder"),
    "text_ldm": ("text_ldm", "cxr-text-ldm"),
    "cxr_classifier": ("classifier", "cxr-feature-classifier"),
}


def recipe_work(asset: str) -> tuple[int, int]:
    """(steps, batch) of an asset's default recipe."""
    import importlib

    module = importlib.import_module(f"cxr_pipeline.kinds.{TRAINING[asset][0]}")
    recipe = module.Recipe()
    return recipe.steps, recipe.batch_size


def evaluation_scale(asset: str) -> float:
    """How much more a default evaluation samples than the tiny one: the profile's test cap over
    the 4 tiny images, times the default DDIM steps over the tiny 2."""
    from cxr_pipeline import kinds
    from cxr_pipeline.evaluation.caps import caps_for
    from jobs.budgets import TINY_EVALUATION

    evaluation = next(e for e in kinds.EVALUATIONS if e.name == asset)
    cap = caps_for("full").test_images
    return cap / TINY_EVALUATION["max_test_images"] * evaluation.budget.ddim_steps / TINY_EVALUATION["ddim_steps"]


def plan_rows(small: dict, large: dict) -> list[dict]:
    rows = []
    data_ratio = large["images"] / small["images"]
    for stage, a in small["stages"].items():
        b = large["stages"].get(stage)
        if b is None or stage.endswith(("_check", "accounted_for", "within_limit", "non_empty", "coverage", "splits")):
            continue
        per_image = (b["seconds"] - a["seconds"]) / (large["images"] - small["images"])
        fixed = max(0.0, a["seconds"] - per_image * small["images"])
        memory_per_image = (b["peak_gb"] - a["peak_gb"]) / (large["images"] - small["images"])
        row = {
            "stage": stage,
            "s_small": a["seconds"],
            "s_large": b["seconds"],
            "time_ratio": b["seconds"] / max(a["seconds"], 1e-6),
            "gb_small": a["peak_gb"],
            "gb_large": b["peak_gb"],
        }
        for dataset, images in (("nih", NIH_IMAGES), ("mimic", MIMIC_IMAGES)):
            grows = max(0.0, per_image) * images
            if stage in DATA_STAGES:
                seconds = fixed + grows * DEFAULT_WORK_PER_TINY.get(stage, 1.0)
            elif stage in TRAINING:
                steps, batch = recipe_work(stage)
                name = TRAINING[stage][1]
                rate = large["throughput"].get(name) or small["throughput"].get(name)
                draws = 6 if stage == "arbitrary_sr" else 1
                seconds = fixed + grows * draws + (steps * batch / rate if rate else float("nan"))
                row["hours_per_10k_steps"] = 1e4 * batch / rate / 3600 if rate else float("nan")
            elif stage == "raw_images":
                seconds = 0.0  # the data is there; generating the demo is not part of a real run
            else:
                seconds = a["seconds"] * evaluation_scale(stage)
            row[f"{dataset}_hours"] = seconds / 3600
            row[f"{dataset}_gb"] = b["peak_gb"] + max(0.0, memory_per_image) * (images - large["images"])
        flags = []
        if row["time_ratio"] > 1.1 * data_ratio:
            flags.append("time grows faster than the data")
        if stage not in DATA_STAGES and stage not in TRAINING and stage != "raw_images" and row["time_ratio"] > 1.2:
            flags.append("evaluation time grows (over 1.2x)")
        if memory_per_image * 1e5 > 1.0:  # more than 1 GB per 100,000 images
            flags.append("memory grows with the data")
        if row["nih_gb"] > MEMORY_LIMIT_GB:
            flags.append(f"NIH peak over {MEMORY_LIMIT_GB:g} GiB")
        row["flags"] = "; ".join(flags)
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--patients", type=int, default=16)
    parser.add_argument("--factor", type=int, default=4)
    parser.add_argument("--workers", type=int, default=0, help="processes for decoding (0: every core)")
    parser.add_argument("--json", type=Path, default=None, help="also write the measurements and the plan here")
    parser.add_argument("--single", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--replan", type=Path, default=None, help="print the plan again from a --json file's runs")
    args = parser.parse_args()
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    import torch

    from cxr_pipeline.parallel import default_workers

    workers = args.workers or default_workers()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.single:  # one size in this (fresh) process: what the parent runs for each size
        with tempfile.TemporaryDirectory(prefix="full-plan-") as tmp:
            args.json.write_text(json.dumps(run_once(args.single, workers, Path(tmp)), default=str))
        return
    runs = []
    if args.replan:
        saved = json.loads(args.replan.read_text())
        runs, device = saved["runs"], saved["device"]
    with tempfile.TemporaryDirectory(prefix="full-plan-runs-") as tmp:
        for patients in (args.patients, args.patients * args.factor) if not runs else ():
            print(f"full profile, tiny budget, {patients} patients at 512 px, in a fresh process ...", flush=True)
            out = Path(tmp) / f"{patients}.json"
            subprocess.run(
                [sys.executable, __file__, "--single", str(patients), "--workers", str(workers), "--json", str(out)],
                check=True,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            run = json.loads(out.read_text())
            print(
                f"  {run['images']} images {run['splits']}: {run['total_seconds'] / 60:.1f} min, "
                f"{'all steps passed' if run['success'] else 'FAILED'}",
                flush=True,
            )
            runs.append(run)
    small, large = runs
    rows = plan_rows(small, large)
    import pandas as pd

    table = pd.DataFrame(rows)
    print(
        f"\nDevice: {device}, {torch.get_num_threads()} threads, {workers} workers. "
        f"Data: {small['images']} and {large['images']} images ({large['images'] / small['images']:.2f}x)."
    )
    print(
        "Per stage: seconds and the anonymous memory (GiB) the step added at its peak, at both sizes; projected hours and GiB on this "
        "machine at NIH ChestX-ray14 (112,120 images) and MIMIC-CXR-JPG (377,110 images) with the default "
        "recipes and the full profile's evaluation caps.\n"
    )
    shown = table.assign(**{c: table[c].round(2) for c in table.columns if table[c].dtype.kind == "f"})
    print(shown.to_markdown(index=False))
    for dataset in ("nih", "mimic"):
        print(
            f"\n{dataset.upper()}: {table[f'{dataset}_hours'].sum():.1f} h in all, "
            f"largest peak {table[f'{dataset}_gb'].max():.1f} GiB ({table.loc[table[f'{dataset}_gb'].idxmax(), 'stage']})"
        )
    flagged = table[table["flags"] != ""]
    print("\nFlags:" if len(flagged) else "\nNo stage flagged.")
    for _, row in flagged.iterrows():
        print(f"- {row['stage']}: {row['flags']}")
    if args.json:
        args.json.write_text(json.dumps({"device": device, "runs": runs, "plan": rows}, indent=2, default=str))


if __name__ == "__main__":
    main()
