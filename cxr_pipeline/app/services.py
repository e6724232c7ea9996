"""What the interactive app does, without Streamlit: find and load the champion models through
MLflow, generate, restore uploads beside their classical baselines, browse the work folder and
the registry. ``main.py`` only lays these out, so each part is testable on its own.

Every figure shown beside an image says which image it describes: model output (raw) or the
enhanced display copy (``cxr_pipeline.reports.enhancement``); restoration metrics (PSNR/SSIM
against the original) are always computed on raw outputs.
"""

from __future__ import annotations

import io
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import torch
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from PIL import Image
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from .. import kinds, provenance, tracking
from ..data.degrade import bicubic_to, resize, simulate_low_dose
from ..data.image_store import ImageStore, from_stored
from ..data.ingest import IngestOptions, ingest_file, read_rejected
from ..evaluation.restoration import nlm_denoise
from ..kinds.base import native_size
from ..metrics.appearance import appearance
from ..metrics.restoration import per_image_scores, sample_spread
from ..model_source import registry_folder
from ..models.diffusion import describe, sampling_progress
from ..models.input_distribution import InputDistribution, Novelty, ReportDistribution, ReportNovelty, novelty
from ..models.pipelines import ArbitraryScaleSuperResolution, DiffusionPipeline, LowDoseDenoiser
from ..models.vae import encode_mean, load_vae
from ..settings import (
    DEFAULT_DAGSTER_URL,
    Profile,
    WorkPaths,
    dagster_ui_url,
    mlflow_ui_url,
    profile_from_environment,
    tracking_uri_for,
    work_home,
)

Progress = Callable[[int, int], None]  # (steps done, steps in all)


# --- Where things are -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AppContext:
    """The work folder the pipeline writes, its MLflow store, and where its UIs are."""

    home: Path
    tracking_uri: str
    profile: Profile
    dagster_url: str = DEFAULT_DAGSTER_URL
    mlflow_url: str | None = None  # the MLflow UI, when one is configured (./run.sh mlflow / a tracking server)

    @classmethod
    def from_environment(cls) -> AppContext:
        """From ``CXR_HOME``, ``MLFLOW_TRACKING_URI``, ``CXR_PROFILE``, ``CXR_DAGSTER_URL`` and
        ``CXR_MLFLOW_UI_URL``. Every MLflow call names this store; nothing process-wide is set."""
        home = work_home()
        uri = tracking_uri_for(home)
        return cls(home, uri, profile_from_environment(), dagster_ui_url(), mlflow_ui_url(uri))

    @property
    def paths(self) -> WorkPaths:
        return WorkPaths(self.home)

    def client(self) -> MlflowClient:
        return MlflowClient(tracking_uri=self.tracking_uri)

    def asset_url(self, asset: str) -> str:
        return f"{self.dagster_url.rstrip('/')}/assets/{asset}"

    def run_url(self, run_id: str) -> str | None:
        if not self.mlflow_url:
            return None
        try:
            experiment = self.client().get_run(run_id).info.experiment_id
        except MlflowException:
            return None
        return tracking.run_url(self.mlflow_url, experiment, run_id)


# The models the app serves, by the key its pages use: each kind knows its registry name, the
# asset that trains it, the evaluation that promotes it and its pipeline.
APP_MODELS: dict[str, kinds.ModelKind] = {"text": kinds.TEXT_LDM, "class": kinds.CLASS_DDPM,
                                          "arbitrary_sr": kinds.ARBITRARY_SR, "denoiser": kinds.DENOISER}


class ModelUnavailable(Exception):
    """A model the app cannot load, with what to do about it."""


@dataclass(frozen=True)
class LocatedModel:
    folder: Path
    name: str
    version: str
    alias: str
    run_id: str


def locate(model: kinds.ModelKind, context: AppContext, alias: str = "champion") -> LocatedModel:
    """The registered version holding ``alias``, downloaded once under the work folder."""
    client, name = context.client(), model.registered_name
    try:
        client.get_registered_model(name)
    except MlflowException:
        raise ModelUnavailable(
            f"{name} has not been trained yet in {context.home}: materialize the `{model.asset}` asset "
            f"(job `all_assets`, `training` or `retrain_and_evaluate`; `./run.sh demo` runs them all), then "
            f"`{model.evaluated_by}` to evaluate and promote it.") from None
    try:
        version = client.get_model_version_by_alias(name, alias)
    except MlflowException:
        versions = client.search_model_versions(f"name = '{name}'")
        decided = sorted((v for v in versions if v.tags.get("promotion_reason")), key=lambda v: int(v.version))
        champion = (client.get_registered_model(name).aliases or {}).get("champion")
        if alias == "challenger" and champion is not None:
            raise ModelUnavailable(f"{name} has no challenger: its latest evaluated version won its evaluation and is "
                                   f"the champion (v{champion}). A challenger appears when a newer version is "
                                   "evaluated and does not beat it.") from None
        why = (f"v{decided[-1].version} was not promoted because it {decided[-1].tags['promotion_reason']}"
               if decided else f"no version has been evaluated yet (materialize `{model.evaluated_by}`)")
        raise ModelUnavailable(f"{name} has no {alias}: {len(versions)} version(s) registered; {why}. "
                               "Choose the challenger to try the latest evaluated version anyway.") from None
    folder = registry_folder(name, str(version.version), context.paths.registry_cache,
                                      context.tracking_uri)
    return LocatedModel(folder, name, str(version.version), alias, version.run_id or "")


# --- Generation ---------------------------------------------------------------------------------------------


@torch.no_grad()
def generate(pipeline: DiffusionPipeline, conditions: Sequence, *, guidance: float, steps: int, seed: int,
             progress: Progress | None = None) -> np.ndarray:
    """(N, S, S) raw images in [0, 1]: one per condition (a report for the text model, a class id
    for the class model), the i-th from seed ``seed + i`` (so image i is reproducible alone)."""
    with sampling_progress(_over(progress, len(conditions))):
        return np.stack([pipeline([condition], guidance=guidance, steps=steps, seed=seed + i)[0, 0].float().cpu().numpy()
                         for i, condition in enumerate(conditions)])


@torch.no_grad()
def upscale(pipeline: ArbitraryScaleSuperResolution, images: np.ndarray, scale: float, *, steps: int = 20,
            seed: int = 0, progress: Progress | None = None) -> np.ndarray:
    """Generated images (N, S, S) brought to ``scale`` x S through the arbitrary-scale model: the
    generators' resolution is their training resolution; this is how the app offers more."""
    with sampling_progress(_over(progress, len(images))):
        return np.stack([pipeline(torch.from_numpy(np.ascontiguousarray(image)).float()[None, None], scale=scale,
                                  steps=steps, seed=seed + i)[0, 0].float().cpu().numpy()
                         for i, image in enumerate(images)])


def _over(progress: Progress | None, chains: int):
    """A per-step callback counting over ``chains`` reverse-diffusion chains run one after another."""
    if progress is None:
        return None
    state = {"chain": 0}

    def step(done: int, total: int) -> None:
        progress(min(state["chain"] * total + done, chains * total), chains * total)
        if done == total:
            state["chain"] += 1

    return step


def png_bytes(image: np.ndarray) -> bytes:
    """16-bit grayscale PNG of an image in [0, 1] (what the model produced, at full precision)."""
    buffer = io.BytesIO()
    Image.fromarray(np.round(np.clip(image, 0, 1) * 65535).astype(np.uint16)).save(buffer, format="PNG")
    return buffer.getvalue()


def secondary_capture(image: np.ndarray, *, generator: str, condition: str, seed: int, guidance: float,
                      steps: int, enhancement: str = "none") -> bytes:
    """A generated image as a DICOM Secondary Capture that cannot pass for a patient's: no patient
    identity, ConversionType SYN (synthesized), the generator and its prompt in the header."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    now = datetime.now(timezone.utc)
    ds.SOPClassUID, ds.SOPInstanceUID = SecondaryCaptureImageStorage, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = now.strftime("%Y%m%d")
    ds.StudyTime = ds.ContentTime = now.strftime("%H%M%S")
    ds.Modality, ds.ConversionType = "OT", "SYN"
    ds.PatientName, ds.PatientID = "SYNTHETIC^IMAGE", "SYNTHETIC"
    ds.PatientIdentityRemoved = "YES"
    ds.BurnedInAnnotation = "NO"
    ds.ImageType = ["DERIVED", "SECONDARY", "SYNTHETIC"]
    ds.Manufacturer = "cxr-pipeline"
    ds.ManufacturerModelName = generator[:64]
    ds.SeriesDescription = "Synthetic chest radiograph (generated, not a patient)"
    ds.DerivationDescription = (f"Generated by {generator}, seed {seed}, guidance {guidance:g}, {steps} DDIM steps, "
                                f"enhancement {enhancement}")[:1024]
    ds.ImageComments = f"Condition: {condition}"[:10240]
    pixels = np.round(np.clip(image, 0, 1) * 65535).astype(np.uint16)
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = pixels.tobytes()
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


# --- What a model can be trusted with -------------------------------------------------------------------------


def training_data(folder: Path) -> str:
    """The one-line provenance of a model folder (``cxr_pipeline.provenance``)."""
    return provenance.summary(provenance.read(folder))


@lru_cache(maxsize=4)
def _autoencoder(folder: str):
    return load_vae(Path(folder), "cpu")


def input_novelty(pipeline: DiffusionPipeline, located: LocatedModel, image: np.ndarray,
                  context: AppContext) -> Novelty | None:
    """How far ``image`` (at the model's size) lies from the model's training images, in the latent
    space of the autoencoder the reference was fitted with (``models/input_distribution.py``);
    None when the model folder has no reference (trained before references existed)."""
    reference = InputDistribution.load(located.folder)
    if reference is None:
        return None
    vae = pipeline.model.vae
    if vae is None:  # a pixel-space model: the autoencoder its reference names
        recorded = reference.vae or {}
        folder = Path(recorded.get("model_dir", ""))
        if not (folder / "config.json").exists():
            folder = registry_folder(recorded["registered_model"], recorded["version"], context.paths.registry_cache,
                                     context.tracking_uri)
        vae = _autoencoder(str(folder))
    latents = encode_mean(vae, torch.from_numpy(np.ascontiguousarray(image)).float()[None, None])
    return novelty(reference, latents)[0]


ZOOMS = (1.0, 2.0, 3.0, 4.0)


def zoom_offered(context: AppContext, alias: str, side: int) -> tuple[list[float], str | None]:
    """The zooms of a ``side``-px generated image the app offers, and why the others are not: only
    output sizes the arbitrary-scale model was evaluated at (up to its training images' side).
    Above it, at x4 on the demo, it paints the texture of its native pixel grid at output-pixel
    period (a diagonal hatch at 2.7 px at x1, x2, x3 and x4 alike: docs/recipes.md#the-apps-zoom)
    instead of enlarging the anatomy."""
    try:
        located = locate(APP_MODELS["arbitrary_sr"], context, alias)
    except ModelUnavailable:
        return [1.0], "Zoom needs the arbitrary-scale model, which is not available."
    measured = native_size(located.folder)
    offered = [z for z in ZOOMS if side * z <= measured]
    if len(offered) == len(ZOOMS):
        return offered, None
    return offered, (f"Zoom beyond {measured} px is not offered: {located.name} v{located.version} was evaluated only "
                     f"up to its training images' {measured} px, and above that it draws a periodic texture instead "
                     "of enlarging the anatomy.")


def report_novelty(folder: Path, report: str) -> ReportNovelty | None:
    """The report's words against the text model's training reports; None when the model folder
    has no record of them (trained before records existed) or the report is empty."""
    vocabulary = ReportDistribution.load(folder)
    return vocabulary.check(report) if vocabulary is not None and report.strip() else None


def resize_note(fields: dict, size: int) -> str | None:
    """What the reader did to the upload's size, for people, when it changed it."""
    height, width = fields.get("original_height"), fields.get("original_width")
    if not height or not width or (height, width) == (size, size):
        return None
    factor = size / max(height, width)
    return (f"Resized: the upload is {width}x{height} px; the models work at {size}x{size} px (the profile's image size), "
            f"so it was scaled by {factor:.3g} ({1 / factor:.1f}x smaller){', padded to a square' if height != width else ''}. "
            "Every figure below is at the model's size; detail finer than that is not seen by the model.")


# --- Uploads and restoration --------------------------------------------------------------------------------


class UploadRejected(Exception):
    def __init__(self, reason: str, message: str):
        super().__init__(f"{reason}: {message}")
        self.reason, self.message = reason, message


def read_upload(data: bytes, name: str, image_size: int) -> tuple[np.ndarray, dict]:
    """An uploaded file through ingestion's own reader (the same sniffing, LUT/VOI and
    MONOCHROME1 decisions, resizing, and rejection reasons): the (S, S) image in [0, 1] and
    what the reader recorded about it."""
    suffix = Path(name).suffix if Path(name).suffix.lower() in (".dcm", ".png", ".jpg", ".jpeg") else ""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"upload{suffix}"
        path.write_bytes(data)
        outcome = ingest_file(path, IngestOptions(image_size=image_size, workers=1))
    if not outcome.accepted:
        raise UploadRejected(outcome.reason or "rejected", outcome.message or "the file was not accepted")
    assert outcome.stored is not None, "an accepted file was read"
    return from_stored(outcome.stored), {"file kind": outcome.file_kind, **outcome.fields}


@dataclass
class Restoration:
    """One restored image beside its baseline and input, with the spread over seeds."""

    task: str
    input: np.ndarray  # what the model received (the LR or noisy image)
    baseline: np.ndarray
    baseline_name: str
    output: np.ndarray  # the first seed's sample
    spread: np.ndarray | None  # per-pixel std over seeds
    reference: np.ndarray | None  # the original, when the degradation was simulated
    scores: pd.DataFrame = field(default_factory=pd.DataFrame)  # method -> PSNR/SSIM/MAE against the reference


def _scores(reference: np.ndarray | None, methods: dict[str, np.ndarray]) -> pd.DataFrame:
    if reference is None:
        return pd.DataFrame()
    target = torch.from_numpy(reference).float()[None, None]
    rows = []
    for name, image in methods.items():
        row = per_image_scores(torch.from_numpy(image).float()[None, None], target).iloc[0].to_dict()
        rows.append({"method": name, **{k: round(float(v), 4) for k, v in row.items()}})
    return pd.DataFrame(rows)


def _over_seeds(restore: Callable[[int], torch.Tensor], seeds: int,
                progress: Progress | None) -> tuple[np.ndarray, np.ndarray | None]:
    """The first seed's output (1, 1, H, W -> H, W) and the per-pixel spread over ``seeds`` seeds
    (``sample_spread``; None for one seed)."""
    with sampling_progress(_over(progress, seeds)):
        samples = torch.stack([restore(seed).float().cpu() for seed in range(seeds)])
    spread = sample_spread(samples)[1][0] if seeds > 1 else None
    return samples[0, 0, 0].numpy(), spread


@torch.no_grad()
def super_resolve_upload(pipeline: ArbitraryScaleSuperResolution, image: np.ndarray, scale: float, *,
                         simulate: bool, seeds: int = 3, steps: int = 20,
                         progress: Progress | None = None) -> Restoration:
    """``simulate``: shrink the image by ``scale`` (antialiased, as the pairs are made), restore it
    to its size and score both against the original; otherwise super-resolve it as it is."""
    if simulate:
        low = resize(image, (max(1, round(image.shape[0] / scale)), max(1, round(image.shape[1] / scale))))
        target, reference = image.shape, image
    else:
        low, reference = image, None
        target = (round(image.shape[0] * scale), round(image.shape[1] * scale))
    bicubic = bicubic_to(low, target)
    batch = torch.from_numpy(np.ascontiguousarray(low)).float()[None, None]
    output, spread = _over_seeds(lambda seed: pipeline(batch, size=target, steps=steps, seed=seed), seeds, progress)
    return Restoration("super-resolution", low, bicubic, "bicubic", output, spread, reference,
                       _scores(reference, {"bicubic": bicubic, "diffusion": output}))


@torch.no_grad()
def denoise_upload(pipeline: LowDoseDenoiser, image: np.ndarray, dose: float, *, simulate: bool, seeds: int = 3,
                   steps: int = 20, nlm_factor: float = 1.0, progress: Progress | None = None) -> Restoration:
    """``simulate``: a low-dose acquisition of the image at ``dose`` photons (the pairs' physics),
    restored and scored against the original; otherwise the image is taken as the low-dose one."""
    noisy = simulate_low_dose(image, dose, np.random.default_rng(0)) if simulate else image.astype(np.float32)
    batch = torch.from_numpy(np.ascontiguousarray(noisy)).float()[None, None]
    baseline = nlm_denoise(batch, nlm_factor)[0, 0].numpy()
    output, spread = _over_seeds(lambda seed: pipeline(batch, dose=dose, steps=steps, seed=seed), seeds, progress)
    reference = image if simulate else None
    return Restoration("denoising", noisy, baseline, "non-local means", output, spread, reference,
                       _scores(reference, {"low-dose input": noisy, "non-local means": baseline, "diffusion": output}))


# --- The work folder and the registry -----------------------------------------------------------------------


def metadata(context: AppContext) -> pd.DataFrame:
    path = context.paths.metadata
    if not path.exists():
        raise FileNotFoundError(f"no {path}: materialize `image_metadata` (job `ingestion`) first")
    return pd.read_parquet(path)


def rejected(context: AppContext) -> pd.DataFrame:
    path = context.paths.ingestion / "rejected.parquet"
    return read_rejected(path) if path.exists() else pd.DataFrame(columns=["source_path", "reason", "message"])


def filter_images(rows: pd.DataFrame, *, splits: Sequence[str] = (), classes: Sequence[str] = (),
                  finding: str | None = None, text: str = "") -> pd.DataFrame:
    """Rows in any of ``splits`` and ``classes`` (empty: all), positive for ``finding``, whose
    report contains ``text`` (case-insensitive)."""
    keep = pd.Series(True, index=rows.index)
    if splits:
        keep &= rows["split"].isin(list(splits))
    if classes:
        keep &= rows["class_name"].isin(list(classes))
    if finding:
        keep &= rows[finding] == 1.0
    if text:
        report = rows["findings_text"].fillna("") + " " + rows["impression_text"].fillna("")
        keep &= report.str.contains(text, case=False, regex=False)
    return rows[keep]


def stored_image(context: AppContext, row: pd.Series) -> np.ndarray:
    return ImageStore(context.paths.image_store).read_many([row["shard"]], [int(row["shard_index"])])[0]


def image_metrics(image: np.ndarray) -> dict[str, float]:
    return {k: round(v, 4) for k, v in appearance(image).items()}


def registry_overview(context: AppContext) -> pd.DataFrame:
    """Every registered model's versions with their aliases, headline figures and promotion."""
    client, rows = context.client(), []
    for registered in client.search_registered_models():
        aliases: dict[str, list[str]] = {}
        for alias, version in (registered.aliases or {}).items():
            aliases.setdefault(str(version), []).append(alias)
        for version in client.search_model_versions(f"name = '{registered.name}'"):
            tags = version.tags or {}
            rows.append({"model": registered.name, "version": int(version.version),
                         "aliases": ", ".join(sorted(aliases.get(str(version.version), []))),
                         "decision": tags.get("promotion_decision", "not evaluated"),
                         "reason": tags.get("promotion_reason", ""), "metrics": tags.get("evaluation_metrics", ""),
                         "run_id": version.run_id, "evaluation_run_id": tags.get("evaluation_run_id", ""),
                         "training_data": tags.get("data.summary", "")})
    return pd.DataFrame(rows).sort_values(["model", "version"], ascending=[True, False]) if rows else pd.DataFrame()


def architecture(folder: Path) -> dict:
    """What the model folder says it is: kind, UNet, schedule, conditioning, training."""
    saved = describe(folder)
    return {"kind": saved.kind, "unet": asdict(saved.unet), "schedule": asdict(saved.schedule),
            "conditioning": asdict(saved.conditioning), "settings": saved.settings.to_dict(),
            "training": saved.training.to_dict()}
