"""The image autoencoder: diffusers' ``AutoencoderKL`` for one-channel radiographs.

Images are [0, 1] in the stores and [-1, 1] inside the model. The loss is MSE plus a small KL
weight (1e-4), as in latent diffusion's first stage without the adversarial term. Evaluation uses
the posterior mean, so validation numbers are deterministic.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import pandas as pd
import torch
from diffusers import AutoencoderKL
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

from ..data import atomic, locks
from ..data.degrade import upsample_bicubic
from ..data.image_store import ImageStore
from ..data.splits import patient_subset
from ..metrics.detail import paired_detail_ratios
from .batches import EpochSampler, RunningMoments, StoreImages, aligned_crops
from .input_distribution import FILE as INPUT_DISTRIBUTION_FILE
from .input_distribution import InputDistribution, latent_features
from .training import TrainConfig, Trainer, TrainingOutcome, pick_device, run_key


@dataclass(frozen=True)
class VaeConfig:
    block_out_channels: tuple[int, ...] = (16, 32, 64)  # one downsampling per block after the first
    latent_channels: int = 4
    layers_per_block: int = 1
    norm_num_groups: int = 8
    kl_weight: float = 1e-4
    # Self-attention in the middle of encoder and decoder, at the latent grid: its cost grows with the
    # square of the grid's positions, which a fine grid makes large.
    mid_attention: bool = True

    @property
    def downsampling_factor(self) -> int:
        return 2 ** (len(self.block_out_channels) - 1)

    def build(self) -> AutoencoderKL:
        blocks = len(self.block_out_channels)
        return AutoencoderKL(
            in_channels=1,
            out_channels=1,
            down_block_types=("DownEncoderBlock2D",) * blocks,
            up_block_types=("UpDecoderBlock2D",) * blocks,
            block_out_channels=tuple(self.block_out_channels),
            latent_channels=self.latent_channels,
            layers_per_block=self.layers_per_block,
            norm_num_groups=self.norm_num_groups,
            mid_block_add_attention=self.mid_attention,
        )

    def as_dict(self) -> dict:
        return {**asdict(self), "block_out_channels": list(self.block_out_channels)}


def to_model(images: torch.Tensor) -> torch.Tensor:
    return images * 2.0 - 1.0


def from_model(images: torch.Tensor) -> torch.Tensor:
    return ((images + 1.0) / 2.0).clamp(0.0, 1.0)


def vae_step(kl_weight: float):
    """The training step for :class:`~cxr_pipeline.models.training.Trainer`."""

    def step(model: AutoencoderKL, images: torch.Tensor, generator: torch.Generator):
        x = to_model(images)
        posterior = model.encode(x).latent_dist
        latents = posterior.sample(generator=generator)
        reconstruction = model.decode(latents).sample
        mse = torch.nn.functional.mse_loss(reconstruction.float(), x.float())
        kl = posterior.kl().mean() / x[0].numel()  # per pixel, so the weight does not depend on size
        return mse + kl_weight * kl, {"mse": float(mse.detach()), "kl": float(kl.detach())}

    return step


@torch.no_grad()
def reconstruct(model: AutoencoderKL, images: torch.Tensor) -> torch.Tensor:
    device = next(model.parameters()).device
    latents = model.encode(to_model(images.to(device))).latent_dist.mode()
    return from_model(model.decode(latents).sample).float().cpu()


@torch.no_grad()
def evaluate_reconstruction(model: AutoencoderKL, images: StoreImages, batch_size: int = 64) -> dict[str, float]:
    """Mean MSE, PSNR (data range 1) and SSIM over a split, per image then averaged, and the fine
    detail the reconstructions keep (the mean detail ratio against their inputs, metrics/detail.py)."""
    mse: list[torch.Tensor] = []
    psnr: list[torch.Tensor] = []
    ssim: list[torch.Tensor] = []
    detail: list[np.ndarray] = []
    for batch in images.all(batch_size):
        output = reconstruct(model, batch)
        mse.append(((output - batch) ** 2).mean(dim=(1, 2, 3)))
        psnr.append(peak_signal_noise_ratio(output, batch, data_range=1.0, reduction="none", dim=(1, 2, 3)))
        ssim.append(
            cast(torch.Tensor, structural_similarity_index_measure(output, batch, data_range=1.0, reduction="none"))
        )
        detail.append(paired_detail_ratios(output, batch))
    return {
        "val_mse": float(torch.cat(mse).mean()),
        "val_psnr": float(torch.cat(psnr).mean()),
        "val_ssim": float(torch.cat(ssim).mean()),
        "val_detail": float(np.concatenate(detail).mean()),
    }


def reconstruction_grid(model: AutoencoderKL, images: torch.Tensor) -> np.ndarray:
    """Rows of input | reconstruction | 4x absolute error, for people to look at."""
    output = reconstruct(model, images)
    error = ((output - images).abs() * 4).clamp(0, 1)
    rows = [torch.cat([a[0], b[0], c[0]], dim=1) for a, b, c in zip(images, output, error)]
    return torch.cat(rows, dim=0).numpy()


def load_vae(folder: Path, device: torch.device | str = "cpu") -> AutoencoderKL:
    return AutoencoderKL.from_pretrained(str(folder), low_cpu_mem_usage=False).to(device).eval()


@torch.no_grad()
def encode_mean(model: AutoencoderKL, images: torch.Tensor) -> torch.Tensor:
    device = next(model.parameters()).device
    return model.encode(to_model(images.to(device))).latent_dist.mode().float().cpu()


# --- Training and encoding, as whole steps (what the Dagster assets call) ----------------------


def train_vae(
    metadata: pd.DataFrame,
    store: ImageStore,
    runs_root: Path,
    vae_config: VaeConfig,
    train_config: TrainConfig,
    data_hash: str,
    progress=None,
    stop_after: int | None = None,
    crop: int | None = None,
    val_images: int | None = None,
) -> TrainingOutcome:
    """``crop``: train on random windows of this size (the autoencoder is convolutional; validation
    and every later use see whole images); None trains on whole images. ``val_images``: validate
    on at most this many val images, whole patients (``patient_subset``)."""
    train = StoreImages(store, metadata[metadata["split"] == "train"])
    val = StoreImages(store, patient_subset(metadata[metadata["split"] == "val"], val_images))
    sampler = EpochSampler(len(train), train_config.batch_size, train_config.seed)
    identity = (train_config.identity(), {"crop": crop}) if crop else (train_config.identity(),)
    run_dir = Path(runs_root) / run_key("vae", vae_config.as_dict(), *identity, data_hash)
    torch.manual_seed(train_config.seed)

    def batches(step: int) -> torch.Tensor:
        return aligned_crops([train.batch(sampler.indices(step))], crop, train_config.seed, step)[0]

    trainer = Trainer(
        vae_config.build(),
        vae_step(vae_config.kl_weight),
        batches,
        train_config,
        run_dir,
        evaluate=lambda model, step: evaluate_reconstruction(model, val),
        progress=progress,
    )
    model_dir = run_dir / "model"

    def save(result, folder: Path) -> None:
        result.ema_model.save_pretrained(str(folder))
        (folder / "training.json").write_text(
            json.dumps(
                {
                    "step": result.final_step,
                    "data_hash": data_hash,
                    "metrics": result.last_eval,
                    "vae": vae_config.as_dict(),
                    "train": train_config.identity(),
                    "crop": crop,
                },
                indent=2,
            )
        )

    result = trainer.fit_and_save(model_dir, save, stop_after)
    grid = reconstruction_grid(result.ema_model, val.batch(list(range(min(8, len(val))))))
    # the preview: rows of val input | reconstruction | 4x error
    return TrainingOutcome(
        "vae", run_dir, model_dir, result.final_step, result.resumed_from, result.last_eval, {result.final_step: grid}
    )


def encode_latents(
    metadata: pd.DataFrame,
    store: ImageStore,
    vae_dir: Path,
    lr_stores: dict[int, tuple[ImageStore, pd.DataFrame]],
    out_dir: Path,
    device: str = "auto",
    batch_size: int = 128,
    vae_record: dict | None = None,
) -> dict:
    """HR latents and, per scale, latents of the LR image upsampled (bicubic) to HR size, for every
    split; plus the scaling factor (1 / std of train HR latents) diffusion training multiplies by,
    and the input distribution new inputs are scored against (naming ``vae_record``, the
    autoencoder's registry record). Rewritten whole on every run, under the folder's writer lock,
    so a damaged folder heals."""
    with locks.exclusive(out_dir, "latents"):
        return _encode_locked(metadata, store, vae_dir, lr_stores, Path(out_dir), device, batch_size, vae_record)


def _encode_split(
    model: AutoencoderKL,
    images: StoreImages,
    dest: Path,
    batch_size: int,
    prepare=None,
    moments: RunningMoments | None = None,
) -> list[np.ndarray]:
    """Encode ``images`` batch by batch into ``dest`` through a memory map (``prepare`` turns a
    batch into the encoder's input); returns each batch's input-distribution features."""
    features = []
    with atomic.npy_rows(dest, len(images)) as out:
        for batch in images.all(batch_size):
            latent = encode_mean(model, prepare(batch) if prepare else batch)
            out.append(latent.numpy())
            features.append(latent_features(latent))
            if moments is not None:
                moments.add(latent)
    return features


def _encode_locked(
    metadata: pd.DataFrame,
    store: ImageStore,
    vae_dir: Path,
    lr_stores: dict[int, tuple[ImageStore, pd.DataFrame]],
    out_dir: Path,
    device: str,
    batch_size: int,
    vae_record: dict | None,
) -> dict:
    model = load_vae(vae_dir, pick_device(device))
    summary: dict[str, Any] = {"vae_dir": str(vae_dir), "splits": {}}
    features: dict[str, np.ndarray | None] = {}
    for split in ("train", "val", "test"):
        rows = metadata[metadata["split"] == split].reset_index(drop=True)
        moments = RunningMoments() if split == "train" else None
        encoded = _encode_split(
            model, StoreImages(store, rows), out_dir / f"hr_{split}.npy", batch_size, moments=moments
        )
        features[split] = np.concatenate(encoded) if encoded else None
        for scale, (lr_store, lr_index) in lr_stores.items():
            positions = lr_index.set_index("image_id").loc[rows["image_id"]]

            def upsampled(batch: torch.Tensor, scale: int = scale) -> torch.Tensor:
                return torch.from_numpy(
                    np.stack([upsample_bicubic(image[0].numpy(), scale) for image in batch])
                ).unsqueeze(1)

            _encode_split(
                model,
                StoreImages(lr_store, positions.reset_index()),
                out_dir / f"lr_x{scale}_{split}.npy",
                batch_size,
                prepare=upsampled,
            )
        atomic.write_parquet(out_dir / f"index_{split}.parquet", rows[["image_id", "split", "class_id"]])
        summary["splits"][split] = len(rows)
        if moments is not None:
            summary["scaling_factor"] = float(1.0 / torch.tensor(moments.std())) if len(rows) else 1.0
    summary["latent_shape"] = list(np.load(out_dir / "hr_train.npy", mmap_mode="r").shape[1:])
    summary["scales"] = sorted(lr_stores)
    (out_dir / INPUT_DISTRIBUTION_FILE).unlink(missing_ok=True)  # never a reference of other latents
    if features["train"] is not None and features["val"] is not None:
        reference = InputDistribution.fit(features["train"], features["val"], features["test"], vae=vae_record)
        reference.save(out_dir)
        summary["input_distribution"] = {
            "threshold": reference.threshold,
            "val_median": reference.val_median,
            "test_flagged_share": reference.test_flagged_share,
        }
    atomic.write_text(out_dir / "latents.json", json.dumps(summary, indent=2))
    return summary
