"""The main job, end to end, on a small generated dataset at the ``smoke`` job's tiny budget."""

from __future__ import annotations

from pathlib import Path

import dagster as dg

from definitions import defs
from jobs.budgets import tiny_run_config
from resources import CxrSettings, MlflowTracking


def run_main_job_tiny(settings: CxrSettings) -> dg.ExecuteInProcessResult:
    """``all_assets`` with the smoke budget and splits of a few patients each (half train, a
    quarter val and test). The smoke job is the main job with this run config baked in; the main
    job takes it here because a job with a default config ignores resource instances passed in
    process."""
    run_config = tiny_run_config()
    for labels in ("label_table", "image_metadata"):
        run_config["ops"][labels] = {"config": {"split_fractions": [0.5, 0.25, 0.25]}}
    return defs.resolve_job_def("all_assets").execute_in_process(
        run_config=run_config, resources={"settings": settings, "mlflow_tracking": MlflowTracking(settings=settings)}
    )


def settings_for(tmp_path: Path, data: Path, **fields) -> CxrSettings:
    return CxrSettings(home=str(tmp_path / "home"), data_dir=str(data), **fields)
