"""The report encoder the text model reads reports with: a configured local BERT-family
checkpoint, or a WordPiece tokenizer and small BERT pretrained here on the training split's
reports (masked-language modelling), then aligned to the paired images (ConVIRT).
``cxr-report-encoder``."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
from transformers import AutoTokenizer

from ..data.labels.metadata import content_hash
from ..data.labels.report_text import report_prompts
from ..models.diffusion_training import as_part
from ..models.latents import LatentRows, scaled_latents
from ..models.report_encoder import (
    ReportEncoder,
    ReportEncoderConfig,
    align_report_encoder,
    pretrain_report_encoder,
    token_counts,
)
from ..models.training import TrainingOutcome, pick_device
from ..settings import WorkPaths
from .base import VECTORS, ModelKind, ServingSpec, TrainingPlan, TrainingRecipe, report_example, request_reports


@dataclass(frozen=True)
class Recipe(TrainingRecipe):
    # A local BERT-family checkpoint (BioBERT, CXR-BERT, PubMedBERT, ...; a folder with config.json
    # and the tokenizer files), never downloaded. None: pretrain the project's own small encoder on
    # the training split's reports by masked-language modelling.
    checkpoint: str | None = None
    # Masked-language modelling, 1500 x 32 at 2e-3, fp32 (docs/recipes.md#report-encoder-report_encoder).
    steps: int = 1500
    batch_size: int = 32
    learning_rate: float = 2e-3
    warmup_steps: int = 40
    ema_decay: float = 0.99
    checkpoint_every: int = 500
    eval_every: int = 500
    vocab_size: int = 2000
    hidden_size: int = 128
    layers: int = 2
    heads: int = 4
    max_length: int = 128
    # Then contrastive report-image alignment (ConVIRT) on the training pairs; 0 skips it
    # (docs/recipes.md#report-encoder-report_encoder).
    align_steps: int = 200
    align_batch_size: int = 64
    align_learning_rate: float = 5e-4

    def encoder(self) -> ReportEncoderConfig:
        return ReportEncoderConfig(
            vocab_size=self.vocab_size,
            hidden_size=self.hidden_size,
            layers=self.layers,
            heads=self.heads,
            intermediate_size=2 * self.hidden_size,
            max_length=self.max_length,
        )


def split_prompts(metadata: pd.DataFrame, split: str) -> list[str]:
    """The non-empty report prompts of one split."""
    return [p for p in report_prompts(metadata[metadata["split"] == split]).tolist() if p]


def report_latents(metadata: pd.DataFrame, latents_dir: Path, split: str) -> tuple[list[str], LatentRows]:
    """The reports of one split and the VAE latents of their images, paired."""
    index = pd.read_parquet(latents_dir / f"index_{split}.parquet")
    prompts = report_prompts(metadata.set_index("image_id").loc[index["image_id"]].reset_index()).to_numpy()
    keep = np.flatnonzero([bool(p) for p in prompts])
    return list(prompts[keep]), scaled_latents(latents_dir, "hr", split).subset(keep)


def no_reports(paths: WorkPaths) -> str | None:
    """Why the text family cannot train here: no report in the training split."""
    if split_prompts(pd.read_parquet(paths.metadata), "train"):
        return None
    return (
        "no reports in the training split (findings_text / impression_text): the text family needs a "
        "report source, e.g. OpenI ecgen-radiology XML, the Indiana CSV pair or MIMIC-CXR reports"
    )


def plan(recipe: Recipe, paths: WorkPaths, profile: str) -> list[TrainingPlan]:
    metadata = pd.read_parquet(paths.metadata)
    train, val = split_prompts(metadata, "train"), split_prompts(metadata, "val")
    if not train:
        raise ValueError(
            "no training image has a report (findings_text / impression_text): the text model needs "
            "a report source, e.g. OpenI ecgen-radiology XML or the Indiana CSV pair"
        )
    data_hash = content_hash(metadata)
    train_config = recipe.train_config()
    runs_root = paths.models / REPORT_ENCODER.folder

    def run(progress) -> tuple[TrainingOutcome, dict]:
        if recipe.checkpoint:
            folder = Path(recipe.checkpoint).expanduser().resolve()
            ReportEncoder.from_pretrained(folder)  # fails here, clearly, on a folder that is not a checkpoint
            outcome, source = TrainingOutcome("report_encoder", folder, folder, 0, None), "configured checkpoint"
        else:
            outcome = pretrain_report_encoder(
                train, val, recipe.encoder(), train_config, runs_root, data_hash, progress=progress
            )
            source = "pretrained here (masked-language modelling)"
        if not recipe.align_steps:
            return outcome, {"source": source}
        (train_texts, train_latents), (val_texts, val_latents) = (
            report_latents(metadata, paths.latents, split) for split in ("train", "val")
        )
        length = int(
            token_counts(
                AutoTokenizer.from_pretrained(str(outcome.model_dir), local_files_only=True), train_texts
            ).max()
        )  # the tokenizer alone: no weights loaded twice
        aligned = align_report_encoder(
            outcome.model_dir,
            train_texts,
            train_latents,
            val_texts,
            val_latents,
            replace(
                train_config,
                steps=recipe.align_steps,
                batch_size=recipe.align_batch_size,
                learning_rate=recipe.align_learning_rate,
                eval_every=recipe.align_steps,
            ),
            runs_root / "aligned",
            data_hash,
            max_length=length,
            progress=as_part(progress, "align"),
        )
        aligned.metrics.update({f"mlm_{k}": v for k, v in outcome.metrics.items()})
        return aligned, {"source": f"{source}, aligned to the images (ConVIRT)"}

    own = not recipe.checkpoint
    params = {
        "checkpoint": recipe.checkpoint or "none (pretrained here)",
        "train_reports": len(train),
        **({f"encoder.{k}": v for k, v in vars(recipe.encoder()).items()} if own else {}),
        **({f"train.{k}": v for k, v in train_config.identity().items()} if own else {}),
        "align.steps": recipe.align_steps,
        "align.batch_size": recipe.align_batch_size,
        "align.learning_rate": recipe.align_learning_rate,
    }
    return [TrainingPlan(REPORT_ENCODER, data_hash, params, run=run)]


def summary(model_dir: Path, train_reports: list[str]) -> dict:
    """What the trained encoder makes of the training reports: vocabulary, width, lengths."""
    encoder = ReportEncoder.from_pretrained(model_dir)
    tokens = encoder.token_counts(train_reports)
    return {
        "vocabulary": len(encoder.tokenizer),
        "hidden_size": encoder.hidden_size,
        "train_reports": len(train_reports),
        "tokens_per_report_median": int(np.median(tokens)),
        "reports_truncated": int((tokens > encoder.max_length).sum()),
    }


SERVING = ServingSpec(
    lambda folder, device: ReportEncoder.from_pretrained(folder, pick_device(device)),
    lambda encoder, x, p: encoder.encode(request_reports(x)).pooled().cpu().numpy().astype(np.float32),
    report_example,
    "string",
    (-1,),
    VECTORS,
)

REPORT_ENCODER = ModelKind(
    key="report_encoder",
    asset="report_encoder",
    registered_name="cxr-report-encoder",
    folder="report_encoder",
    title="Report encoder",
    description="Radiology report encoder (tokenizer + BERT)",
    recipe=Recipe,
    plan=plan,
    serving=SERVING,
    acceptance=(("mlm_val_mlm_accuracy", 0.5, "predicts most masked val report tokens"),),
    unavailable=no_reports,
)
