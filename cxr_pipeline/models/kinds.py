"""The model kinds, in one table every layer reads: which asset trains each, the name it is
registered under in MLflow, and its key (the pointer ``models/current/<key>.json`` and the
training runs' folder ``models/<folder>/``). Latent super-resolution has one kind per scale."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelKind:
    key: str  # models/current/<key>.json: the model the asset's latest materialization produced
    asset: str  # the Dagster asset that trains it
    registered_name: str  # MLflow Model Registry name
    folder: str  # training runs under models/<folder>/<run key>/


VAE = ModelKind("vae", "vae", "cxr-vae", "vae")
CLASSIFIER = ModelKind("classifier", "cxr_classifier", "cxr-feature-classifier", "classifier")
CLASS_DDPM = ModelKind("class_ddpm", "class_ddpm", "cxr-class-ddpm", "class_ddpm")
DENOISER = ModelKind("denoiser", "low_dose_denoiser", "cxr-lowdose-denoiser", "denoiser")
ARBITRARY_SR = ModelKind("arbitrary_sr", "arbitrary_sr", "cxr-arbitrary-sr", "arbitrary_sr")
REPORT_ENCODER = ModelKind("report_encoder", "report_encoder", "cxr-report-encoder", "report_encoder")
TEXT_LDM = ModelKind("text_ldm", "text_ldm", "cxr-text-ldm", "text_ldm")


def latent_sr(scale: int) -> ModelKind:
    return ModelKind(f"latent_sr_x{scale}", "latent_sr", f"cxr-latent-sr-x{scale}", "latent_sr")


MODEL_KINDS = (VAE, CLASSIFIER, CLASS_DDPM, DENOISER, ARBITRARY_SR, REPORT_ENCODER, TEXT_LDM, latent_sr(4))  # latent_sr: one per scale built
