"""Look at the UIs as a person would: start ``dagster dev`` and the MLflow UI on the work folder,
open them in headless Chromium (Playwright driving Debian's chromium) and save screenshots:
the asset lineage with every stage, the runs, the MLflow experiment and an evaluation run's
metrics (psnr, ssim, fd_cxr, ...).

    .venv/bin/pip install -e '.[ui]' && apt-get install chromium
    .venv/bin/python scripts/ui_screenshots.py [--out work/screenshots]

Needs a work folder where the main job ran (``./run.sh demo``). Chromium starts with
``--headless --no-sandbox --disable-gpu`` and no background networking (the network is closed).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[1]
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-sync",
                  "--disable-background-networking", "--disable-component-update"]

# Keys pressed on a page before its screenshot: Alt+E expands every group of the lineage graph,
# so each asset of each stage shows.
KEYS = {"dagster_lineage.png": "Alt+e"}


def wait_for(url: str, seconds: int) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=5):
                return
        except OSError:
            time.sleep(1)
    raise TimeoutError(f"no answer from {url} after {seconds} s")


def _latest_run_id(dagster_home: str) -> str | None:
    import dagster as dg

    os.environ.setdefault("DAGSTER_HOME", dagster_home)
    with dg.DagsterInstance.get() as instance:
        runs = instance.get_runs(limit=1)
    return runs[0].run_id if runs else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    home = Path(os.environ.get("CXR_HOME", REPOSITORY / "work")).resolve()
    parser.add_argument("--out", type=Path, default=home / "screenshots")
    parser.add_argument("--dagster-port", type=int, default=3300)
    parser.add_argument("--mlflow-port", type=int, default=5055)
    args = parser.parse_args()
    chromium = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium:
        print("chromium not found: apt-get install chromium", file=sys.stderr)
        return 2
    from mlflow import MlflowClient
    from playwright.sync_api import sync_playwright

    args.out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "CXR_HOME": str(home), "DAGSTER_HOME": os.environ.get("DAGSTER_HOME", str(home / "dagster_home"))}
    store = f"sqlite:///{home / 'mlflow' / 'mlflow.db'}"
    bin_dir = Path(sys.executable).parent
    servers = [
        subprocess.Popen([str(bin_dir / "dagster"), "dev", "-w", "workspace.yaml", "-p", str(args.dagster_port)],
                         cwd=REPOSITORY, env=env, stdout=open(args.out / "dagster-dev.log", "w"), stderr=subprocess.STDOUT),
        subprocess.Popen([str(bin_dir / "mlflow"), "ui", "--backend-store-uri", store, "--port", str(args.mlflow_port)],
                         cwd=REPOSITORY, env=env, stdout=open(args.out / "mlflow-ui.log", "w"), stderr=subprocess.STDOUT),
    ]
    try:
        dagster = f"http://127.0.0.1:{args.dagster_port}"
        mlflow_ui = f"http://127.0.0.1:{args.mlflow_port}"
        wait_for(f"{dagster}/server_info", 180)
        wait_for(f"{mlflow_ui}/health", 120)
        client = MlflowClient(store)
        experiment = client.get_experiment_by_name("cxr-pipeline")
        evaluation = client.search_runs([experiment.experiment_id], "tags.mlflow.runName = 'evaluate-sr_evaluation'",
                                        max_results=1) if experiment else []
        pages = [("dagster_lineage.png", f"{dagster}/asset-groups"), ("dagster_catalog.png", f"{dagster}/assets"),
                 ("dagster_runs.png", f"{dagster}/runs")]
        latest = _latest_run_id(env["DAGSTER_HOME"])
        if latest:  # its step logs, including what a Pipes-launched training streamed back
            pages.append(("dagster_latest_run.png", f"{dagster}/runs/{latest}?logs=step%3Alatent_sr"))
        if experiment:
            pages.append(("mlflow_runs.png", f"{mlflow_ui}/#/experiments/{experiment.experiment_id}"))
        if evaluation:
            run = evaluation[0].info
            pages.append(("mlflow_sr_evaluation_metrics.png",
                          f"{mlflow_ui}/#/experiments/{run.experiment_id}/runs/{run.run_id}"))
        pages.append(("mlflow_models.png", f"{mlflow_ui}/#/models"))
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS)
            page = browser.new_page(viewport={"width": 1920, "height": 1200})
            for name, url in pages:
                page.goto(url)
                page.wait_for_load_state("load")
                page.wait_for_timeout(5000)  # the UIs poll, so "network idle" never comes
                page.keyboard.press("Escape")  # first-visit dialogs and announcements
                for label in ("Skip", "Dismiss", "Got it", "Close"):
                    button = page.get_by_role("button", name=label, exact=True)
                    if button.count() and button.first.is_visible():
                        button.first.click()
                if name in KEYS:
                    page.locator("body").click(position={"x": 5, "y": 5})
                    page.keyboard.press(KEYS[name])
                page.wait_for_timeout(3000)
                page.screenshot(path=str(args.out / name))
                print(args.out / name)
            browser.close()
    finally:
        for server in servers:
            server.terminate()
        for server in servers:
            server.wait(timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
