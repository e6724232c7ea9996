"""The interactive app, driven by Streamlit's AppTest over models trained (a few steps) on the small
demo dataset through Dagster and registered in a real SQLite MLflow store; then one real browser
(headless Chromium) generating an image."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import mlflow
import numpy as np
import pandas as pd
import pydicom
import pytest
from mlflow import MlflowClient
from streamlit.testing.v1 import AppTest

from assets import diffusion, ingestion, labels, models, pairs, text
from cxr_pipeline.app import dicom_export
from cxr_pipeline.data.ingest import IngestOptions, ingest_file
from cxr_pipeline.settings import default_tracking_uri
from resources import CxrSettings, MlflowTracking
from tests.conftest import pydicom_file
from tests.helpers.browser import CHROMIUM_ARGS, chromium_or_skip, free_port, keep_screenshots

pytestmark = pytest.mark.slow  # the app over a work folder whose every served model was trained

APP = str(Path(__file__).resolve().parents[2] / "cxr_pipeline" / "app" / "main.py")
ASSETS = [
    ingestion.raw_images,
    ingestion.ingested_images,
    labels.label_table,
    labels.image_metadata,
    pairs.sr_pairs,
    pairs.low_dose_pairs,
    models.vae,
    models.latents,
    diffusion.class_ddpm,
    diffusion.arbitrary_sr,
    diffusion.low_dose_denoiser,
    text.report_encoder,
    text.text_ldm,
]
FEW = {"steps": 4, "checkpoint_every": 4, "log_every": 2, "warmup_steps": 1}
CONFIG = {
    "vae": {**FEW, "steps": 20, "checkpoint_every": 20, "eval_every": 20},
    "class_ddpm": {**FEW, "eval_every": 4},
    "low_dose_denoiser": {**FEW, "eval_every": 4},
    "arbitrary_sr": {**FEW, "eval_every": 4, "decoder_steps": 4, "draws_per_image": 1},
    "report_encoder": {**FEW, "eval_every": 4, "align_steps": 2},
    "text_ldm": {**FEW, "eval_every": 4},
}
CHAMPIONS = ("cxr-text-ldm", "cxr-class-ddpm", "cxr-arbitrary-sr", "cxr-lowdose-denoiser")
DAGSTER_URL, MLFLOW_UI_URL = "http://127.0.0.1:3033", "http://127.0.0.1:5055"  # never the default ports


@pytest.fixture(autouse=True)
def _keep_main_module():
    """AppTest leaves the app script as ``sys.modules["__main__"]``; processes spawned by later
    tests would run it as their main module. Put pytest's back."""
    main = sys.modules["__main__"]
    yield
    sys.modules["__main__"] = main


@pytest.fixture(scope="module")
def home(small_demo, tmp_path_factory):
    """A work folder where every model the app serves was trained and registered, each v1 named
    champion in the registry (the evaluations that would promote them are tested elsewhere)."""
    root = tmp_path_factory.mktemp("app") / "home"
    settings = CxrSettings(home=str(root), data_dir=str(small_demo), workers=1)
    ambient = os.environ.get("MLFLOW_TRACKING_URI")
    result = dg.materialize(
        ASSETS,
        resources={
            "settings": settings,
            "mlflow_tracking": MlflowTracking(settings=settings),
            "pipes_subprocess_client": dg.PipesSubprocessClient(),
        },
        run_config={"ops": {name: {"config": config} for name, config in CONFIG.items()}},
    )
    assert result.success
    client = MlflowClient(default_tracking_uri(root))
    for name in CHAMPIONS:
        client.set_registered_model_alias(name, "champion", "1")
    # MLflow's set_tracking_uri (the Dagster resource activates its store) also exports
    # MLFLOW_TRACKING_URI: later tests must not write into this store
    mlflow.set_tracking_uri(ambient)
    if ambient is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    return root


@pytest.fixture()
def app(home, monkeypatch, tmp_path):
    monkeypatch.setenv("CXR_HOME", str(home))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("CXR_PROFILE", raising=False)
    monkeypatch.setenv("CXR_DAGSTER_URL", DAGSTER_URL)
    monkeypatch.setenv("CXR_MLFLOW_UI_URL", MLFLOW_UI_URL)
    monkeypatch.chdir(tmp_path)
    at = AppTest.from_file(APP, default_timeout=300)
    at.run()
    assert not at.exception
    yield at
    assert not list(tmp_path.iterdir())  # nothing written outside the work folder (no stray ./mlflow.db)


def mode(at: AppTest, page: str) -> AppTest:
    at.sidebar.radio[0].set_value(page).run()
    assert not at.exception, at.exception
    return at


def captions(at: AppTest) -> list[str]:
    return [caption for image in at.image for caption in image.captions]


def test_generate_from_a_report_shows_raw_and_enhanced_images_with_downloads(app, home):
    at = mode(app, "Generate")
    val_reports = pd.read_parquet(home / "metadata.parquet").query("split == 'val'")["findings_text"].dropna()
    # a held-out report of the training data, typed with its section header
    at.text_area(key="prompt").input(f"FINDINGS: {val_reports.iloc[0]}").run()
    assert not at.session_state["report_novelty"].out_of_distribution and not at.error
    at.text_area(key="prompt").input(
        "FINDINGS: Biventricular pacemaker leads terminate appropriately. IMPRESSION: Unremarkable hardware."
    ).run()
    novelty = at.session_state["report_novelty"]
    assert novelty.out_of_distribution and "pacemaker" in novelty.unseen
    assert at.error[0].value.startswith("Out of distribution") and "pacemaker" in at.error[0].value
    at.text_area(key="prompt").input("FINDINGS: Small left pneumothorax. IMPRESSION: Left pneumothorax.")
    at.slider(key="steps").set_value(5)
    at.slider(key="count").set_value(3)
    at.button[0].click().run()
    assert not at.exception, at.exception
    images = at.session_state["generated"]["images"]
    assert images.shape == (3, 64, 64) and images.min() >= 0.0 and images.max() <= 1.0
    shown = captions(at)
    assert len(shown) == 6 and sum(c.startswith("raw, seed") for c in shown) == 3
    assert all("64x64 px" in c and "entropy" in c for c in shown)
    assert sum("enhanced (balanced)" in c for c in shown) == 3
    labels = [b.label for b in at.get("download_button")]
    assert labels.count("DICOM (raw)") == 3 and labels.count("PNG (raw, 16-bit)") == 3
    bars = at.get("progress")  # the progress bar reached the end, counting every step of every image
    assert [(p.value, p.text) for p in bars] == [(100, "Sampling: step 15 of 15")]


def test_generate_from_a_class_with_another_preset(app):
    at = mode(app, "Generate")
    at.radio(key="condition_on").set_value("a class (class model)").run()
    at.selectbox(key="class_name").set_value("Effusion")
    at.selectbox(key="generate_preset").set_value("radiographic_film")
    at.slider(key="steps").set_value(5)
    at.button[0].click().run()
    assert not at.exception, at.exception
    assert at.session_state["generated"]["images"].shape == (2, 64, 64)
    assert at.session_state["generated"]["condition"] == "Effusion"
    assert sum("enhanced (radiographic_film)" in c for c in captions(at)) == 2
    # no zoom beyond the size the arbitrary-scale model was evaluated at (its training images')
    assert not at.get("select_slider")
    assert any("Zoom beyond 64 px is not offered" in c.value for c in at.caption)


def test_the_dicom_download_is_a_synthetic_secondary_capture_that_ingestion_refuses(tmp_path):
    image = np.linspace(0, 1, 64 * 64).reshape(64, 64)
    data = dicom_export.secondary_capture(
        image, generator="cxr-text-ldm v1", condition="Right pleural effusion.", seed=3, guidance=4.0, steps=20
    )
    path = tmp_path / "generated.dcm"
    path.write_bytes(data)
    ds = pydicom.dcmread(path)
    assert ds.SOPClassUID == pydicom.uid.SecondaryCaptureImageStorage and ds.ConversionType == "SYN"
    assert ds.PatientName == "SYNTHETIC^IMAGE" and ds.PatientIdentityRemoved == "YES"
    assert "cxr-text-ldm v1" in ds.DerivationDescription and "Right pleural effusion." in ds.ImageComments
    np.testing.assert_allclose(ds.pixel_array / 65535.0, image, atol=1e-5)
    # the pipeline never takes its own output for a patient's radiograph
    outcome = ingest_file(path, IngestOptions(image_size=64, workers=1))
    assert not outcome.accepted and outcome.reason == "modality_not_allowed"


def test_restore_super_resolves_and_denoises_an_upload_beside_its_baselines(app, small_demo):
    at = mode(app, "Restore")
    png = next(small_demo.rglob("*.png"))
    at.file_uploader[0].set_value((png.name, png.read_bytes(), "image/png")).run()
    assert not at.exception and not at.error
    at.slider(key="restore_seeds").set_value(2)
    at.slider(key="restore_steps").set_value(5)
    at.slider(key="scale").set_value(2.0)
    assert not at.checkbox  # super-resolution always scores a simulated degradation (its measured range)
    at.button[0].click().run()
    assert not at.exception, at.exception
    result = at.session_state["restored"]
    assert result.input.shape == (32, 32) and result.output.shape == result.baseline.shape == (64, 64)
    assert result.spread.shape == (64, 64)
    assert list(result.scores["method"]) == ["bicubic", "diffusion"]
    for method, image in (("bicubic", result.baseline), ("diffusion", result.output)):  # scored against the original
        mse = float(np.mean((image.astype(np.float64) - result.reference.astype(np.float64)) ** 2))
        psnr = result.scores.set_index("method").loc[method, "psnr"]
        assert psnr == pytest.approx(10 * np.log10(1 / mse), abs=1e-3)
    assert any(c.startswith("spread over seeds") for c in captions(at))
    assert captions(at)[0].startswith("original (reference, raw)")  # the image the scores are against
    # a demo image, like the training images: the provenance line and no out-of-distribution warning
    assert not at.session_state["novelty"].out_of_distribution
    assert any("synthetic demo data" in i.value for i in at.info) and not at.error
    assert any("Within the training distribution" in c.value for c in at.caption)

    at.radio(key="task").set_value("denoising").run()
    at.button[0].click().run()
    assert not at.exception, at.exception
    result = at.session_state["restored"]
    assert result.task == "denoising" and result.output.shape == (64, 64)
    # the detector's noise was simulated, so the classical baseline works on its stabilised counts
    assert list(result.scores["method"]) == ["low-dose input", "VST + non-local means", "diffusion"]
    psnr = result.scores.set_index("method")["psnr"]
    assert psnr["VST + non-local means"] > psnr["low-dose input"] + 2.0


def test_a_real_radiograph_is_flagged_out_of_distribution_and_its_resizing_said(app):
    """A real chest CR (pydicom-data) against models trained on the demo phantom."""
    at = mode(app, "Restore")
    data = pydicom_file("RG1_UNCR.dcm").read_bytes()
    at.file_uploader[0].set_value(("chest.dcm", data, "application/dicom")).run()
    assert not at.exception, at.exception
    assert any("1841x1955 px" in w.value and "64x64 px" in w.value for w in at.warning)
    for task in ("super-resolution", "denoising"):  # the pixel-space denoiser scores it with its reference's VAE
        at.radio(key="task").set_value(task).run()
        assert not at.exception, at.exception
        novelty = at.session_state["novelty"]
        assert novelty.out_of_distribution and novelty.distance > novelty.threshold
        assert len(at.error) == 1 and at.error[0].value.startswith("Out of distribution")
        assert any("synthetic demo data" in i.value for i in at.info)


def test_a_corrupt_upload_gets_ingestions_reason(app):
    at = mode(app, "Restore")
    at.file_uploader[0].set_value(("broken.png", b"\x89PNG\r\n\x1a\nnot really a png", "image/png")).run()
    assert not at.exception
    assert len(at.error) == 1 and "was not accepted (corrupt)" in at.error[0].value
    data = pydicom_file("RG1_UNCR.dcm").read_bytes()
    at.file_uploader[0].set_value(("truncated.dcm", data[: len(data) // 3], "application/dicom")).run()
    assert len(at.error) == 1 and "was not accepted" in at.error[0].value
    assert "restored" not in at.session_state


def test_dataset_page_filters_and_lists_the_rejected(app, home):
    at = mode(app, "Dataset")
    assert not at.exception
    everything = at.dataframe[0].value
    at.multiselect(key="splits").set_value(["test"]).run()
    test_rows = at.dataframe[0].value
    assert 0 < len(test_rows) < len(everything) and set(test_rows["split"]) == {"test"}
    assert len(at.image) == min(4, len(test_rows))  # random samples with their reports
    at.multiselect(key="splits").set_value([]).run()
    at.text_input(key="report_contains").input("lung").run()
    matching = at.dataframe[0].value
    assert 0 < len(matching) < len(everything)
    assert all("lung" in str(t).lower() for t in matching["findings_text"].fillna(""))
    rejected = at.dataframe[-1].value
    assert len(rejected) > 0 and {"source_path", "reason"} <= set(rejected.columns)  # the demo plants bad files


def test_enhance_page_shows_every_preset_with_the_change_in_metrics(app):
    at = mode(app, "Enhance")
    table = at.dataframe[0].value
    assert list(table["preset"]) == ["none", "balanced", "high_contrast", "sharp_detail", "radiographic_film"]
    assert (table.loc[table["preset"] == "none", "Δ sharpness"] == 0).all()
    assert (table.loc[table["preset"] != "none", "Δ sharpness"] > 0).all()  # every preset sharpens


def test_models_page_shows_champions_and_architecture(app, home):
    at = mode(app, "Models")
    assert not at.exception
    versions = at.dataframe[-1].value
    assert {"cxr-text-ldm", "cxr-class-ddpm", "cxr-vae"} <= set(versions["model"])
    assert "champion" in set(versions.loc[versions["model"] == "cxr-text-ldm", "aliases"])
    links = " ".join(m.value for m in at.markdown)
    assert f"{DAGSTER_URL}/assets/text_ldm" in links and "127.0.0.1:3000" not in links
    text_run = MlflowClient(default_tracking_uri(home)).get_model_version("cxr-text-ldm", "1").run_id
    assert f"/runs/{text_run}?workflowType=machine_learning)" in links and f"({MLFLOW_UI_URL}/#/experiments/" in links
    # what each model learnt from, from its registered version's tags
    assert sum("synthetic demo data" in c.value for c in at.caption) >= 4
    architectures = [json.loads(j.value) if isinstance(j.value, str) else j.value for j in at.json]
    assert {"text_ldm", "class_ddpm", "denoiser"} <= {a.get("kind") for a in architectures}
    assert any(a.get("unet", {}).get("cross_attention_dim") for a in architectures)


def test_an_untrained_work_folder_says_which_asset_trains_the_model(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CXR_HOME", str(tmp_path / "empty"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    at = AppTest.from_file(APP, default_timeout=120)
    at.run()
    assert not at.exception
    assert "has not been trained yet" in at.warning[0].value and "`text_ldm`" in at.warning[0].value
    mode(at, "Models")
    assert "No registered models" in at.warning[0].value


@pytest.mark.browser
def test_a_real_browser_generates_an_image(home, tmp_path):
    """Headless Chromium (Debian's package, driven by Playwright) opens the app served by
    ``streamlit run``, generates one image, uploads a real chest CR to Restore (the
    out-of-distribution warning and the provenance line show) and saves screenshots. Required where CI installs
    the browser (CXR_BROWSER_TESTS=1); elsewhere it runs when /usr/bin/chromium exists."""
    chromium = chromium_or_skip()
    from playwright.sync_api import sync_playwright

    port = free_port()
    env = {**os.environ, "CXR_HOME": str(home)}
    env.pop("MLFLOW_TRACKING_URI", None)
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "streamlit",
            "run",
            APP,
            "--server.headless",
            "true",
            "--server.port",
            str(port),
            "--server.address",
            "127.0.0.1",
            "--browser.gatherUsageStats",
            "false",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=str(chromium), args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            deadline = time.time() + 60
            while True:
                try:
                    page.goto(f"http://127.0.0.1:{port}", wait_until="domcontentloaded")
                    break
                except Exception:
                    if time.time() > deadline:
                        raise
                    time.sleep(1)
            page.get_by_role("button", name="Generate").click(timeout=120_000)
            try:
                page.get_by_text("enhanced (balanced)").first.wait_for(timeout=240_000)
            except Exception:  # say what the page showed instead
                page.screenshot(path=str(tmp_path / "failed.png"), full_page=True)
                raise AssertionError(f"no generated image; the page said: {page.inner_text('body')[:3000]}") from None
            # the raw and the enhanced image of both samples decoded in the page
            page.wait_for_function(
                "() => [...document.images].filter(i => i.complete && i.naturalWidth >= 64).length >= 4", timeout=60_000
            )
            screenshot = tmp_path / "app_generate.png"
            page.screenshot(path=str(screenshot), full_page=True)
            shown = page.locator("img").evaluate_all("images => images.map(i => i.naturalWidth)")
            # a real chest CR uploaded to Restore: the warning and the provenance line are on the page
            page.get_by_text("Restore", exact=True).first.click()
            page.locator("input[type=file]").set_input_files(str(pydicom_file("RG1_UNCR.dcm")))
            page.get_by_text("Out of distribution").first.wait_for(timeout=240_000)
            restore_text = page.inner_text("body")
            page.screenshot(path=str(tmp_path / "app_restore_real_radiograph.png"), full_page=True)
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=30)
    keep_screenshots(tmp_path)
    assert screenshot.stat().st_size > 10_000
    assert sum(1 for width in shown if width >= 64) >= 4
    assert "synthetic demo data" in restore_text and "1841x1955 px" in restore_text
