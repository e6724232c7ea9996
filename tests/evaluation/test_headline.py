"""An evaluation's headline figures regrouped under plain names, one row per method and setting,
read from the outcome itself (its per-image scores, its models' figures, its must-beat pairs)."""

import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from cxr_pipeline.evaluation.headline import method_figures, model_metrics
from cxr_pipeline.evaluation.outcome import EvaluationOutcome
from cxr_pipeline.model_record import ModelRecord
from cxr_pipeline.reports.document import Report
from tests.helpers.browser import CHROMIUM_ARGS, chromium_or_skip, free_port, keep_screenshots


def outcome(metrics, evaluated, must_beat, scores=None) -> EvaluationOutcome:
    return EvaluationOutcome("e", Report("t", "", []), metrics, evaluated, [], must_beat, "", scores=scores)


def test_restoration_rows_are_the_scored_methods_per_setting_with_the_model_marked():
    record = ModelRecord(Path("m"), "run-1", "cxr-arbitrary-sr", "3")
    metrics = {
        **{f"{k}_sr_x4_arbitrary": v for k, v in {"psnr": 30.0, "ssim": 0.9, "mae": 0.02, "detail": 0.95}.items()},
        **{f"{k}_sr_x4_bicubic": v for k, v in {"psnr": 28.0, "ssim": 0.85, "mae": 0.03, "detail": 0.6}.items()},
        "psnr_sr_x2p5_arbitrary": 33.0,
        "psnr_sr_x2p5_bicubic": 32.0,
        "psnr_sr_x4_arbitrary_std": 1.0,  # not a headline figure
        "psnr_sr_x4_bicubic_ci_low": float("nan"),
    }
    scores = pd.DataFrame(
        {"task": ["sr_x4", "sr_x4", "sr_x2p5", "sr_x2p5"], "method": ["arbitrary", "bicubic"] * 2, "psnr": [0.0] * 4}
    )
    figures = {"psnr_sr_x4_arbitrary": 30.0, "psnr_sr_x2p5_arbitrary": 33.0}
    must_beat = (("psnr_sr_x4_arbitrary", "psnr_sr_x4_bicubic"), ("psnr_sr_x2p5_arbitrary", "psnr_sr_x2p5_bicubic"))
    rows = method_figures(outcome(metrics, [(record, figures)], must_beat, scores))
    assert [(r.role, r.name) for r in rows] == [
        ("model", "arbitrary · sr_x2p5"),
        ("model", "arbitrary · sr_x4"),
        ("baseline", "bicubic · sr_x2p5"),
        ("baseline", "bicubic · sr_x4"),
    ]
    assert rows[1].figures == {"psnr": 30.0, "ssim": 0.9, "mae": 0.02, "detail": 0.95} and rows[1].record == record
    assert rows[3].figures == {"psnr": 28.0, "ssim": 0.85, "mae": 0.03, "detail": 0.6} and rows[3].record is None
    # the registered version's own figures: plain names for the setting its promotion is decided
    # on (the first must-beat pair, x4), every setting with its suffix
    assert model_metrics(rows, record) == {
        "psnr": 30.0,
        "ssim": 0.9,
        "mae": 0.02,
        "detail": 0.95,
        "psnr_sr_x4": 30.0,
        "ssim_sr_x4": 0.9,
        "mae_sr_x4": 0.02,
        "detail_sr_x4": 0.95,
        "psnr_sr_x2p5": 33.0,
    }


def test_generation_rows_are_the_model_and_its_references_with_fd_under_its_plain_name():
    record = ModelRecord(Path("m"), "run-2", "cxr-class-ddpm", "1")
    metrics = {
        "fd_cxr_class_ddpm": 12.0,
        "fd_cxr_class_ddpm_real_reference": 8.0,
        "fd_cxr_class_ddpm_at_reference_count": 11.0,
        "kid_class_ddpm": 0.01,
        "cond_acc_class_ddpm": 0.8,
        "cond_acc_class_ddpm_chance": 1 / 6,
        "cond_acc_class_ddpm_real_reference": 0.9,
    }
    figures = {k: v for k, v in metrics.items() if not k.endswith(("_reference", "_chance"))}
    rows = method_figures(
        outcome(metrics, [(record, figures)], (("cond_acc_class_ddpm", "cond_acc_class_ddpm_chance"),))
    )
    by_name = {row.name: row for row in rows}
    assert rows[0].name == "class_ddpm" and rows[0].role == "model" and rows[0].record == record
    assert by_name["class_ddpm"].figures == {"fd": 12.0, "kid": 0.01, "cond_acc": 0.8}
    assert by_name["real_reference"].figures == {"fd": 8.0, "cond_acc": 0.9}
    assert by_name["chance"].figures == {"cond_acc": 1 / 6} and by_name["chance"].role == "reference"
    assert model_metrics(rows, record) == {"fd": 12.0, "kid": 0.01, "cond_acc": 0.8}


def test_the_synthetic_data_experiment_gives_one_row_per_arm():
    metrics = {
        "auroc_utility_real": 0.8,
        "accuracy_utility_real": 0.7,
        "auroc_utility_real_balanced": 0.82,
        "auroc_utility_diff_real_balanced": 0.02,  # a difference, not an arm
        "auroc_utility_real_Effusion": 0.9,  # per class
        "auroc_utility_real_ci_low": 0.75,  # an interval's end
        "accuracy_utility_real_seed_std": 0.01,
    }
    rows = method_figures(outcome(metrics, [], ()))
    assert {row.name: row.figures for row in rows} == {
        "real": {"auroc": 0.8, "accuracy": 0.7},
        "real_balanced": {"auroc": 0.82},
    }


@pytest.mark.browser
def test_a_new_mlflow_user_finds_psnr_against_bicubic_and_fd_against_real_in_three_clicks(tmp_path):
    """MLflow's own UI (``mlflow ui``) over a store the publishing code wrote, in headless Chromium
    with a fresh profile: from the home page, the experiment (1), MLflow's first-visit tip (2), the
    description's headline link (3) show the SR model's PSNR and SSIM beside bicubic's and the
    class model's FD beside the real reference's, as columns."""
    chromium = chromium_or_skip()
    import mlflow
    from playwright.sync_api import sync_playwright

    from cxr_pipeline import tracking
    from cxr_pipeline.evaluation.headline import MethodFigures
    from cxr_pipeline.evaluation.publish import publish_method_runs
    from cxr_pipeline.settings import default_tracking_uri

    uri = default_tracking_uri(tmp_path)
    experiment = tracking.ensure_experiment(uri, "cxr-pipeline-evaluation", tmp_path / "mlflow" / "artifacts")
    published = {
        "sr_evaluation": [
            MethodFigures("ddim", "sr_x4", "model", {"psnr": 30.125, "ssim": 0.9125, "mae": 0.02, "detail": 0.97}),
            MethodFigures("bicubic", "sr_x4", "baseline", {"psnr": 28.375, "ssim": 0.8625, "mae": 0.03, "detail": 0.6}),
        ],
        "generation_evaluation": [
            MethodFigures("class_ddpm", "", "model", {"fd": 12.25, "kid": 0.01, "cond_acc": 0.8}),
            MethodFigures("real_reference", "", "reference", {"fd": 8.5, "kid": 0.005, "cond_acc": 0.9}),
        ],
    }
    for name, rows in published.items():
        with mlflow.start_run(experiment_id=experiment, run_name=f"evaluate-{name}") as run:
            mlflow.log_metrics({f"figure_{i}_{name}": float(i) for i in range(120)})  # the full names
        publish_method_runs(rows, experiment, name, run.info.run_id)
    tracking.describe_evaluation_experiment(experiment)
    mlflow.set_tracking_uri(None)

    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=str(chromium), args=CHROMIUM_ARGS)
            page = browser.new_context(viewport={"width": 1920, "height": 1080}).new_page()  # a fresh profile
            deadline = time.time() + 120
            while True:
                try:
                    page.goto(f"http://127.0.0.1:{port}/", wait_until="domcontentloaded")
                    page.get_by_role("link", name="cxr-pipeline-evaluation").wait_for(timeout=10_000)
                    break
                except Exception:
                    if time.time() > deadline:
                        raise
                    time.sleep(2)
            clicks = 0
            page.get_by_role("link", name="cxr-pipeline-evaluation").click()
            clicks += 1
            headline = page.get_by_text("Headline figures: every model beside its baselines").first
            headline.wait_for(timeout=30_000)
            tip = page.get_by_role("button", name="Got it")
            try:  # MLflow's first-visit tip covers the page until dismissed
                tip.wait_for(timeout=5_000)
                tip.click()
                clicks += 1
            except Exception:
                pass
            page.screenshot(path=str(tmp_path / "mlflow_experiment.png"))
            with page.context.expect_page() as opened:
                headline.click()
                clicks += 1
            view = opened.value
            view.get_by_role("columnheader", name="psnr").first.wait_for(timeout=60_000)
            view.wait_for_timeout(1500)
            view.screenshot(path=str(tmp_path / "mlflow_headline.png"))
            headers = view.get_by_role("columnheader").all_inner_texts()
            # ag-grid draws each row as its pinned part (the run name) and its scrolled part (the
            # figures): joined by row index
            rows = view.evaluate(
                """() => { const m = {}; document.querySelectorAll('[role=row][row-index]').forEach(r => {
                    const i = r.getAttribute('row-index'); m[i] = (m[i] || '') + ' | ' + r.innerText.replace(/\\n/g, ' ');
                }); return Object.values(m); }"""
            )
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=30)
    keep_screenshots(tmp_path)
    assert clicks <= 3
    assert {"psnr", "ssim", "fd"} <= {h.strip() for h in headers}, headers

    def row(name: str) -> str:
        (found,) = [text for text in rows if name in text]
        return found

    assert "30.125" in row("sr_evaluation · ddim · sr_x4") and "0.9125" in row("sr_evaluation · ddim · sr_x4"), rows
    assert "28.375" in row("sr_evaluation · bicubic · sr_x4") and "0.8625" in row("sr_evaluation · bicubic · sr_x4")
    assert "12.25" in row("generation_evaluation · class_ddpm") and "8.5" in row("real_reference"), rows
