"""Text-conditional latent diffusion from radiology reports."""

from __future__ import annotations

from pathlib import Path
from typing import cast

import numpy as np
import pandas as pd
import torch

from ...data.labels.report_text import report_prompts
from ..batches import EpochSampler, WeightedStepSampler
from ..diffusion import (
    Conditioning,
    ScheduleConfig,
    TextCondition,
    UNetConfig,
    sample,
)
from ..latents import latent_scaling_factor, scaled_latents
from ..model_settings import (
    TextLDMSettings,
)
from ..pipelines import to_images
from ..report_encoder import ReportEncoder
from ..training import TrainConfig, TrainingOutcome, TrainProgress, step_generator
from ..vae import load_vae
from .common import train_model


class TextLayersAndUNet(torch.nn.Module):
    """The report encoder's last layers and the UNet, trained as one model: called like the UNet
    with the frozen layers' hidden states, it runs the trainable layers over them, then the UNet
    on the result (and its pooled mean, recomputed here)."""

    def __init__(self, text_layers: torch.nn.ModuleList, unet: torch.nn.Module, text_learning_rate_scale: float = 0.05):
        super().__init__()
        self.text_layers, self.unet = text_layers, unet
        self.text_learning_rate_scale = text_learning_rate_scale

    def parameter_groups(self, learning_rate: float) -> list[dict]:
        """Pretrained layers fine-tune at a small share of the UNet's rate (at the UNet's 2e-3 they
        are overwritten, not adapted)."""
        return [
            {"params": list(self.unet.parameters())},
            {"params": list(self.text_layers.parameters()), "lr": learning_rate * self.text_learning_rate_scale},
        ]

    def forward(self, sample, timestep, encoder_hidden_states, encoder_attention_mask, class_labels=None):
        hidden = ReportEncoder.run_layers(self.text_layers, encoder_hidden_states, encoder_attention_mask)
        return self.unet(
            sample,
            timestep,
            encoder_hidden_states=hidden,
            encoder_attention_mask=encoder_attention_mask,
            class_labels=TextCondition(hidden, encoder_attention_mask).pooled(),
        )


def report_groups(rows: pd.DataFrame) -> np.ndarray:
    """What balanced sampling evens out: the single-label class where a report has one, else one
    group for every other report (several findings, or findings outside the classes)."""
    names = rows["class_name"].astype(object).where(rows["class_name"].notna(), "other")
    return pd.factorize(names.to_numpy())[0]


def train_text_ldm(
    metadata: pd.DataFrame,
    latents_dir: Path,
    vae_dir: Path,
    encoder_dir: Path,
    unet_config: UNetConfig,
    schedule: ScheduleConfig,
    train_config: TrainConfig,
    runs_root: Path,
    data_hash: str,
    *,
    text_dropout: float = 0.1,
    guidance_scale: float = 3.0,
    balance: bool = True,
    trainable_encoder_layers: int = 0,
    warm_start_from: Path | None = None,
    progress: TrainProgress | None = None,
    stop_after: int | None = None,
) -> TrainingOutcome:
    """Latent diffusion conditioned on radiology reports: the frozen report encoder's token
    embeddings (computed once for the training split's reports, all padded to one length) feed
    the UNet's cross-attention and, pooled, its timestep embedding; ``text_dropout`` of the
    reports are swapped for the empty one (classifier-free guidance). ``balance``: batches even
    over the single-label classes (and one group for the rest), as real findings are skewed.
    ``trainable_encoder_layers``: the encoder's last layers train with the UNet (the rest stays frozen and
    is run once); 0 keeps it frozen. ``warm_start_from``: a model of the same latent space (the
    class model) whose matching UNet weights the training starts from. Images without a report are
    left out. The model folder carries the encoder (``text_encoder/``), with its trained layers."""
    encoder = ReportEncoder.from_pretrained(encoder_dir)
    index = pd.read_parquet(Path(latents_dir) / "index_train.parquet")
    rows = metadata.set_index("image_id").loc[index["image_id"]].reset_index()
    prompts = report_prompts(rows).to_numpy()
    reported = np.flatnonzero([bool(p) for p in prompts])
    if not len(reported):
        raise ValueError(
            "no training image has a report: the text model needs report text (findings_text / "
            "impression_text in the metadata)"
        )
    targets = scaled_latents(latents_dir, "hr", "train").subset(reported)
    rows, prompts = rows.iloc[reported].reset_index(drop=True), prompts[reported]
    length = min(encoder.max_length, int(encoder.token_counts(list(prompts)).max()))
    trainable_layers = trainable_encoder_layers
    frozen = encoder.layer_count - trainable_layers  # the layers whose output is computed once
    text = encoder.encode(list(prompts), pad_to=length, layers=frozen)
    null = encoder.encode([""], pad_to=length, layers=frozen)
    factor, vae = latent_scaling_factor(latents_dir), load_vae(vae_dir)
    sampler = (
        WeightedStepSampler(report_groups(rows), train_config.batch_size, train_config.seed)
        if balance
        else EpochSampler(len(targets), train_config.batch_size, train_config.seed)
    )
    conditioning = Conditioning(text=True, text_dropout=text_dropout)

    def batches(step: int) -> dict:
        picked = torch.from_numpy(sampler.indices(step))
        return {
            "target": targets[picked],
            "text": text.hidden[picked],
            "text_mask": text.mask[picked],
            "null_text": null.hidden,
            "null_mask": null.mask,
        }

    val = metadata[metadata["split"] == "val"]
    val_prompts = [p for p in report_prompts(val).tolist() if p][:8]
    preview_text = encoder.encode(val_prompts, pad_to=length, layers=frozen)

    def preview(model: torch.nn.Module, step: int) -> np.ndarray:
        shape = (len(val_prompts), unet_config.out_channels, unet_config.sample_size, unet_config.sample_size)
        out = sample(
            model,
            schedule,
            shape,
            text=preview_text,
            null_text=null,
            guidance=guidance_scale,
            steps=train_config.preview_steps,
            generator=step_generator(train_config.seed, 10**6),
        )
        return torch.cat(list(to_images(out, vae, factor)[:, 0]), dim=1).numpy()

    settings = TextLDMSettings(
        guidance_scale=guidance_scale,
        text_dropout=text_dropout,
        balance=balance,
        trainable_encoder_layers=trainable_encoder_layers,
        vae_source=str(vae_dir),
        encoder_source=str(encoder_dir),
        text_length=length,
        train_reports=len(prompts),
        preview_prompts=val_prompts,
        scaling_factor=factor,
    )
    if not trainable_layers:
        return train_model(
            "text_ldm",
            unet_config,
            schedule,
            conditioning,
            batches,
            train_config,
            runs_root,
            data_hash,
            preview,
            settings,
            progress,
            stop_after,
            vae=vae,
            parts={"text_encoder": encoder},
            warm_start_from=warm_start_from,
        )
    return train_model(
        "text_ldm",
        unet_config,
        schedule,
        conditioning,
        batches,
        train_config,
        runs_root,
        data_hash,
        preview,
        settings,
        progress,
        stop_after,
        vae=vae,
        wrap=lambda unet: TextLayersAndUNet(encoder.top_layers(trainable_layers), unet),
        unwrap=lambda model: (
            model.unet,
            {"text_encoder": encoder.with_top_layers(cast(TextLayersAndUNet, model).text_layers)},
        ),
        warm_start_from=warm_start_from,
    )
