"""Training the five diffusion models on the pipeline's data.

Each ``train_*`` function assembles deterministic batches (by step) for one model, runs the shared
:class:`~cxr_pipeline.models.training.Trainer`, saves the EMA weights as a model folder, and
returns sample grids made during training. Sampling a saved model goes through its pipeline
object (:mod:`cxr_pipeline.models.pipelines`).

One module per model (``latent_sr``, ``class_ddpm``, ``denoiser``, ``arbitrary_sr``, ``text_ldm``) on
the shared ``common.train_model``; the latents they read are :mod:`cxr_pipeline.models.latents`.
"""

from ..latents import LatentRows, latent_scaling_factor, scaled_latents
from .arbitrary_sr import (
    choose_renderings,
    draw_window,
    record_renderings,
    scale_draws,
    scale_pair_latents,
    train_arbitrary_sr,
)
from .class_ddpm import train_class_ddpm
from .common import as_part, residual_scale, train_model
from .denoiser import low_dose_batch, train_denoiser
from .latent_sr import train_latent_sr
from .text_ldm import TextLayersAndUNet, report_groups, train_text_ldm

__all__ = [
    "LatentRows",
    "TextLayersAndUNet",
    "as_part",
    "choose_renderings",
    "draw_window",
    "latent_scaling_factor",
    "low_dose_batch",
    "record_renderings",
    "report_groups",
    "residual_scale",
    "scale_draws",
    "scale_pair_latents",
    "scaled_latents",
    "train_arbitrary_sr",
    "train_class_ddpm",
    "train_denoiser",
    "train_latent_sr",
    "train_model",
    "train_text_ldm",
]
