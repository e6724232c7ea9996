"""The ``cxr-pipeline`` command: what ``run.sh`` does after its setup, for an installed package
(a wheel, the container image) where there is no checkout and no ``run.sh``.

    cxr-pipeline demo            materialize every asset (job all_assets) on the built-in demo dataset
    cxr-pipeline demo --job smoke   the same graph at a tiny budget (minutes)
    cxr-pipeline dev             the Dagster UI on the work folder
    cxr-pipeline app             the interactive app over the champion models
    cxr-pipeline mlflow          the MLflow UI over the work folder's store
    cxr-pipeline init            only prepare the work folder's Dagster instance

Every command works on ``CXR_HOME`` (default ``./work``) with ``DAGSTER_HOME`` inside it, as
``run.sh`` does, and runs the tools of this environment (``python -m dagster``, ...), so it
needs nothing on ``PATH``.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import filelock

# A fresh instance runs one step at a time in every pool but the heavy steps' (sized below), and
# routes the library's Python logging (logging.getLogger("cxr_pipeline...")) into each run's log.
INSTANCE_YAML = """concurrency:
  pools:
    default_limit: 1
python_logs:
  managed_python_loggers:
    - cxr_pipeline
  python_log_level: DEBUG
"""


def environment(home: str | None = None) -> dict[str, str]:
    """The process environment with the work folder, the Dagster instance inside it and the UI
    addresses every link is made from (the settings run.sh exports)."""
    env = dict(os.environ)
    work = Path(home or env.get("CXR_HOME") or "work").resolve()
    env["CXR_HOME"] = str(work)
    env.setdefault("DAGSTER_HOME", str(work / "dagster_home"))
    env.setdefault("CXR_DAGSTER_URL", "http://127.0.0.1:3000")
    env.setdefault("CXR_MLFLOW_UI_URL", "http://127.0.0.1:5000")
    return env


def prepare_instance(env: dict[str, str]) -> None:
    """The Dagster instance's folder, config and SQLite storage made once (two runs starting on a
    fresh folder would both migrate it), and the heavy steps' pool sized to this machine."""
    dagster_home = Path(env["DAGSTER_HOME"])
    dagster_home.mkdir(parents=True, exist_ok=True)
    config = dagster_home / "dagster.yaml"
    if not config.exists():
        config.write_text(INSTANCE_YAML)
    with filelock.FileLock(str(dagster_home / ".instance-init.lock")):
        if not (dagster_home / "history" / "runs.db").exists():
            _tool(["-m", "dagster", "instance", "migrate"], env, quiet=True)
    from cxr_pipeline.compute import core_share

    slots = str(core_share().heavy_steps)
    _tool(["-m", "dagster", "instance", "concurrency", "set", "cxr_training", slots], env, quiet=True)


def _tool(arguments: list[str], env: dict[str, str], quiet: bool = False) -> None:
    output = subprocess.DEVNULL if quiet else None
    subprocess.run([sys.executable, *arguments], env=env, check=True, stdout=output)


def _exec(arguments: list[str], env: dict[str, str]) -> int:
    """Run a long-lived tool in the foreground and return its exit status."""
    return subprocess.call([sys.executable, *arguments], env=env)


def app_script() -> str:
    spec = importlib.util.find_spec("cxr_pipeline.app.main")
    if spec is None or spec.origin is None:
        raise SystemExit("cxr_pipeline.app.main is not installed")
    return spec.origin


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cxr-pipeline", description=__doc__.split("\n\n")[0])
    parser.add_argument("--home", help="work folder (default: $CXR_HOME, else ./work)")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="materialize every asset on the demo dataset (or CXR_DATA_DIR)")
    demo.add_argument("--job", default="all_assets", help="all_assets (default), smoke, training, evaluation, ...")
    commands.add_parser("dev", help="the Dagster UI (dagster dev) on the work folder")
    commands.add_parser("app", help="the interactive app over the champion models")
    commands.add_parser("mlflow", help="the MLflow UI over the work folder's store")
    commands.add_parser("init", help="only prepare the work folder's Dagster instance (run.sh setup calls it)")
    args, extra = parser.parse_known_args(argv)
    env = environment(args.home)
    Path(env["CXR_HOME"]).mkdir(parents=True, exist_ok=True)
    if args.command == "init":
        prepare_instance(env)
        return 0
    if args.command == "demo":
        prepare_instance(env)
        return _exec(["-m", "dagster", "job", "execute", "-m", "definitions", "-j", args.job, *extra], env)
    if args.command == "dev":
        prepare_instance(env)
        return _exec(["-m", "dagster", "dev", "-m", "definitions", *extra], env)
    if args.command == "app":
        return _exec(
            ["-m", "streamlit", "run", app_script(), "--server.address", "127.0.0.1"]
            + ["--browser.gatherUsageStats", "false", *extra],
            env,
        )
    store = env.get("MLFLOW_TRACKING_URI") or f"sqlite:///{env['CXR_HOME']}/mlflow/mlflow.db"
    port = env["CXR_MLFLOW_UI_URL"].rstrip("/").rsplit(":", 1)[-1]
    return _exec(
        ["-m", "mlflow", "ui", "--backend-store-uri", store, "--host", "127.0.0.1", "--port", port, *extra], env
    )


if __name__ == "__main__":
    sys.exit(main())
