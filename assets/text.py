"""Text-conditional generation: the report encoder, then the latent diffusion model that reads it.

Both are models-group assets logged and registered like every other model (one MLflow run each,
``cxr-report-encoder`` and ``cxr-text-ldm``).
"""

from dataclasses import replace
from pathlib import Path
from typing import Literal, Optional

import dagster as dg
import numpy as np
import pandas as pd
import torch
from transformers import AutoTokenizer

from cxr_pipeline.data.labels.metadata import content_hash
from cxr_pipeline.data.labels.report_text import report_prompts
from cxr_pipeline.models import kinds as model_kinds
from cxr_pipeline.models.diffusion_training import as_part, scaled_latents
from cxr_pipeline.models.report_encoder import (ReportEncoder, ReportEncoderConfig, align_report_encoder,
                                                pretrain_report_encoder, token_counts)
from cxr_pipeline.models.training import TrainingOutcome
from resources import CxrSettings, MlflowTracking

from .diffusion import DiffusionTrainingConfig, train_diffusion_and_register
from .labels import image_metadata
from .models import TRAINING_STEP, TrainingConfig, latents, progress_logger, read_current_model, train_and_register


class ReportEncoderTrainingConfig(TrainingConfig):
    # A local BERT-family checkpoint (BioBERT, CXR-BERT, PubMedBERT, ...; a folder with config.json
    # and the tokenizer files), never downloaded. None: pretrain the project's own small encoder on
    # the training split's reports by masked-language modelling.
    checkpoint: Optional[str] = None
    # Masked-language modelling, 1500 x 32 at 2e-3 (bench/text_recipe.py, val): masked-token
    # accuracy 0.87 against 0.39 after 400 steps at 1e-3, and the text model on it 0.69 against
    # 0.50 prompt consistency.
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
    # Then contrastive report-image alignment (ConVIRT) on the training pairs; 0 skips it. On val
    # (bench/text_recipe.py) the text model's fd_cxr at guidance 2 fell from 2.5x to 1.2x the real
    # reference at the same prompt consistency; 200 x 64 at 5e-4 (more overfits the 600 pairs).
    align_steps: int = 200
    align_batch_size: int = 64
    align_learning_rate: float = 5e-4

    def encoder(self) -> ReportEncoderConfig:
        return ReportEncoderConfig(vocab_size=self.vocab_size, hidden_size=self.hidden_size, layers=self.layers,
                                   heads=self.heads, intermediate_size=2 * self.hidden_size, max_length=self.max_length)


def split_prompts(metadata: pd.DataFrame, split: str) -> list[str]:
    """The non-empty report prompts of one split."""
    return [p for p in report_prompts(metadata[metadata["split"] == split]).tolist() if p]


def report_latents(metadata: pd.DataFrame, latents_dir: Path, split: str) -> tuple[list[str], torch.Tensor]:
    """The reports of one split and the VAE latents of their images, paired."""
    index = pd.read_parquet(latents_dir / f"index_{split}.parquet")
    prompts = report_prompts(metadata.set_index("image_id").loc[index["image_id"]].reset_index()).to_numpy()
    keep = np.flatnonzero([bool(p) for p in prompts])
    return list(prompts[keep]), scaled_latents(latents_dir, "hr", split)[torch.from_numpy(keep)]


@dg.asset(group_name="models", deps=[image_metadata, latents], kinds={"pytorch", "mlflow"}, **TRAINING_STEP)
def report_encoder(context: dg.AssetExecutionContext, config: ReportEncoderTrainingConfig, settings: CxrSettings,
                   mlflow_tracking: MlflowTracking) -> dg.MaterializeResult:
    """The encoder the text model reads reports with: a configured local checkpoint, or (the
    default, and offline) a WordPiece tokenizer and small BERT pretrained here on the training
    split's reports (FINDINGS + IMPRESSION) by masked-language modelling. Either way one folder
    loaded by ``AutoTokenizer`` / ``AutoModel``, registered as ``cxr-report-encoder``. Then, unless
    ``align_steps`` is 0, aligned to the paired images by a contrastive loss (ConVIRT)."""
    paths = settings.paths()
    metadata = pd.read_parquet(paths.metadata)
    train, val = split_prompts(metadata, "train"), split_prompts(metadata, "val")
    if not train:
        raise dg.Failure("no training image has a report (findings_text / impression_text): the text model needs "
                         "a report source, e.g. OpenI ecgen-radiology XML or the Indiana CSV pair", allow_retries=False)
    data_hash = content_hash(metadata)
    train_config = config.train_config(eval_every=config.eval_every)

    def train_encoder(run_id: str) -> tuple[TrainingOutcome, dict]:
        if config.checkpoint:
            folder = Path(config.checkpoint).expanduser().resolve()
            ReportEncoder.from_pretrained(folder)  # fails here, clearly, on a folder that is not a checkpoint
            outcome, source = TrainingOutcome("report_encoder", folder, folder, 0, None), "configured checkpoint"
        else:
            outcome = pretrain_report_encoder(train, val, config.encoder(), train_config,
                                              paths.models / model_kinds.REPORT_ENCODER.folder, data_hash,
                                              progress=progress_logger(context))
            source = "pretrained here (masked-language modelling)"
        if not config.align_steps:
            return outcome, {"source": source}
        (train_texts, train_latents), (val_texts, val_latents) = (report_latents(metadata, paths.latents, split)
                                                                  for split in ("train", "val"))
        length = int(token_counts(AutoTokenizer.from_pretrained(str(outcome.model_dir), local_files_only=True),
                                  train_texts).max())  # the tokenizer alone: no weights loaded twice
        aligned = align_report_encoder(
            outcome.model_dir, train_texts, train_latents, val_texts, val_latents,
            replace(train_config, steps=config.align_steps, batch_size=config.align_batch_size,
                    learning_rate=config.align_learning_rate, eval_every=config.align_steps),
            paths.models / model_kinds.REPORT_ENCODER.folder / "aligned", data_hash, max_length=length,
            progress=as_part(progress_logger(context), "align"))
        aligned.metrics.update({f"mlm_{k}": v for k, v in outcome.metrics.items()})
        return aligned, {"source": f"{source}, aligned to the images (ConVIRT)"}

    params = {"checkpoint": config.checkpoint or "none (pretrained here)", "train_reports": len(train),
              **({} if config.checkpoint else {f"encoder.{k}": v for k, v in vars(config.encoder()).items()}),
              **({} if config.checkpoint else {f"train.{k}": v for k, v in train_config.identity().items()}),
              "align.steps": config.align_steps, "align.batch_size": config.align_batch_size,
              "align.learning_rate": config.align_learning_rate}
    outcome, produced = train_and_register(context, settings, mlflow_tracking, model_kinds.REPORT_ENCODER, data_hash,
                                           params, train_encoder, "Radiology report encoder (tokenizer + BERT)")
    encoder = ReportEncoder.from_pretrained(outcome.model_dir)
    tokens = encoder.token_counts(train)
    return dg.MaterializeResult(metadata={
        **{k: round(v, 4) for k, v in outcome.metrics.items()},
        **produced,
        "vocabulary": len(encoder.tokenizer),
        "hidden_size": encoder.hidden_size,
        "train_reports": len(train),
        "tokens_per_report_median": int(np.median(tokens)),
        "reports_truncated": int((tokens > encoder.max_length).sum()),
    })


class TextLdmConfig(DiffusionTrainingConfig):
    # The class model's latent recipe (v-prediction, min-SNR-5, balanced batches), with the report
    # as the condition: 10% empty reports for classifier-free guidance. fp32: bf16 autocast made
    # the cross-attention UNet's CPU step slower (0.88 s against 0.68 s per batch of 64).
    steps: int = 600
    batch_size: int = 64
    prediction_type: Literal["epsilon", "v_prediction", "sample"] = "v_prediction"
    snr_gamma: Optional[float] = 5.0
    text_dropout: float = 0.1
    # The saved default; text_generation_evaluation chooses its own on val. On val (bench/text_recipe.py):
    # prompt consistency 0.80 / 0.83 / 0.74 at w = 2 / 4 / 7.5, fd_cxr 1.3x / 1.5x / 1.9x the real reference.
    guidance_scale: float = 4.0
    balance: bool = True
    # The report encoder's last layers trained with the UNet (at 0.05x its learning rate); 0: frozen.
    # On val one trainable layer scored what the frozen encoder did (0.66 against 0.69 prompt
    # consistency, bench/text_recipe.py), so the default keeps it frozen.
    trainable_encoder_layers: int = 0


@dg.asset(group_name="models", deps=[report_encoder, latents], kinds={"pytorch", "mlflow"}, **TRAINING_STEP)
def text_ldm(context: dg.AssetExecutionContext, config: TextLdmConfig, settings: CxrSettings,
             mlflow_tracking: MlflowTracking, pipes_subprocess_client: dg.PipesSubprocessClient) -> dg.MaterializeResult:
    """Latent diffusion from radiology reports: a UNet2DConditionModel on the VAE latents whose
    cross-attention reads the report encoder's token embeddings (with the attention mask), trained
    with 10% empty reports for classifier-free guidance; the folder carries its tokenizer,
    encoder, UNet, scheduler and VAE. Registered as ``cxr-text-ldm``."""
    paths = settings.paths()
    metadata = pd.read_parquet(paths.metadata)
    vae = read_current_model(settings, model_kinds.VAE.key)
    encoder_pointer = read_current_model(settings, model_kinds.REPORT_ENCODER.key)
    encoder = ReportEncoder.from_pretrained(encoder_pointer["model_dir"])
    channels, size = pd.read_json(paths.latents / "latents.json", typ="series")["latent_shape"][:2]
    unet = config.unet("text_ldm", settings.profile_spec().name, size, channels, channels,
                       cross_attention_dim=encoder.hidden_size)
    job = config.job(settings, "text_ldm", unet, content_hash(metadata), vae_dir=vae["model_dir"],
                     encoder_dir=encoder_pointer["model_dir"], text_dropout=config.text_dropout,
                     guidance=config.guidance_scale, balance=config.balance,
                     trainable_layers=config.trainable_encoder_layers)
    produced = train_diffusion_and_register(
        context, settings, mlflow_tracking, pipes_subprocess_client, model_kinds.TEXT_LDM, config, job,
        {"report_encoder": f"{encoder_pointer['registered_model']} v{encoder_pointer['version']}",
         "text_dropout": config.text_dropout, "guidance_scale": config.guidance_scale, "balance": config.balance,
         "cross_attention_dim": encoder.hidden_size, "trainable_encoder_layers": config.trainable_encoder_layers})
    return dg.MaterializeResult(metadata={**produced, "train_reports": len(split_prompts(metadata, "train"))})
