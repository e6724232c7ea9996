"""An implicit neural decoder (LIIF, Chen et al. 2021) over the VAE: renders a latent at any
output size, including non-integer scales of its native grid.

The autoencoder's decoder trunk (everything before its last convolution) turns a latent into a
feature map at the native resolution. A query at a continuous output coordinate takes the
features of the nearest cell, unfolded over its 3x3 neighbourhood, its offset from that cell's
centre and the output cell's size (both in feature cells), and predicts the intensity; four
neighbouring cells' predictions are blended by the areas of the opposite sub-rectangles (local
ensemble), so the rendering is continuous across cell borders.

The prediction is the VAE's own last convolution applied to the unfolded features (a linear map,
initialized from ``conv_out``) plus an MLP correction whose last layer starts at zero: at the
native grid an untrained decoder is exactly the plain decode, and training on other sizes only
adds what the convolution cannot say about positions between pixel centres and about cell size.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import cast

import pandas as pd
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, ModelMixin
from diffusers.configuration_utils import ConfigMixin, register_to_config
from torch import nn

from ..data.image_store import ImageStore
from ..metrics.restoration import per_image_scores
from .batches import EpochSampler, StoreImages
from .training import TrainConfig, Trainer, TrainingOutcome, run_key
from .vae import from_model, load_vae, to_model


def cell_centres(height: int, width: int) -> torch.Tensor:
    """(height * width, 2) pixel centres as (y, x) in [-1, 1], row-major: pixel i of n sits at
    -1 + (2i + 1) / n, the convention of ``grid_sample(align_corners=False)``."""
    ys = -1 + (2 * torch.arange(height, dtype=torch.float32) + 1) / height
    xs = -1 + (2 * torch.arange(width, dtype=torch.float32) + 1) / width
    return torch.stack(torch.meshgrid(ys, xs, indexing="ij"), dim=-1).reshape(-1, 2)


def queries(height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The centres of an output of ``height`` x ``width`` pixels and their cell size (2/h, 2/w)."""
    centres = cell_centres(height, width)
    cells = torch.tensor([2.0 / height, 2.0 / width]).expand_as(centres)
    return centres, cells


class LiifHead(ModelMixin, ConfigMixin):
    """Features of a cell (unfolded 3x3), the query's offset and the output cell size -> values."""

    @register_to_config
    def __init__(self, feature_channels: int, out_channels: int = 1, hidden: Sequence[int] = (128, 128)):
        super().__init__()
        unfolded = feature_channels * 9
        self.linear = nn.Linear(unfolded, out_channels)
        layers, width = [], unfolded + 4
        for size in hidden:
            layers += [nn.Linear(width, size), nn.GELU()]
            width = size
        layers.append(nn.Linear(width, out_channels))
        self.mlp = nn.Sequential(*layers)
        nn.init.zeros_(cast(nn.Linear, self.mlp[-1]).weight)
        nn.init.zeros_(cast(nn.Linear, self.mlp[-1]).bias)

    def start_from(self, conv_out: nn.Conv2d) -> None:
        """The linear path becomes the VAE's last 3x3 convolution (unfold order: channel, then
        kernel row, then kernel column, which is the convolution weight's own order)."""
        with torch.no_grad():
            self.linear.weight.copy_(conv_out.weight.reshape(conv_out.out_channels, -1))
            if conv_out.bias is not None:
                self.linear.bias.copy_(conv_out.bias)

    def forward(self, features: torch.Tensor, offsets: torch.Tensor, cells: torch.Tensor) -> torch.Tensor:
        return self.linear(features) + self.mlp(torch.cat([features, offsets, cells], dim=-1))


class ImplicitDecoder(nn.Module):
    """The VAE's decoder trunk and a LIIF head: ``render(latents, (h, w))``."""

    def __init__(self, vae: AutoencoderKL, head: LiifHead):
        super().__init__()
        self.vae, self.head = vae, head

    @classmethod
    def from_vae(cls, vae: AutoencoderKL, hidden: Sequence[int] = (128, 128)) -> ImplicitDecoder:
        conv_out = vae.decoder.conv_out
        head = LiifHead(conv_out.in_channels, conv_out.out_channels, tuple(hidden))
        head.start_from(conv_out)
        return cls(vae, head)

    def features(self, latents: torch.Tensor) -> torch.Tensor:
        """The decoder's last feature map (before ``conv_out``), at the native resolution."""
        decoder = self.vae.decoder
        sample = self.vae.post_quant_conv(latents) if self.vae.post_quant_conv is not None else latents
        sample = decoder.conv_in(sample)
        sample = decoder.mid_block(sample, None)
        for block in decoder.up_blocks:
            sample = block(sample, None)
        return decoder.conv_act(decoder.conv_norm_out(sample))

    def query(self, features: torch.Tensor, coords: torch.Tensor, cells: torch.Tensor) -> torch.Tensor:
        """Values (B, Q, C) at ``coords`` (B, Q, 2) as (y, x) in [-1, 1], for output cells of size
        ``cells`` (B, Q, 2), with the four-cell local ensemble. A neighbour beyond the border lends
        the border cell's features but keeps its own position, so the blend weights stay those of
        the interior and the native grid reproduces its cells exactly up to the edges."""
        batch, channels, height, width = features.shape
        unfolded = F.unfold(features, 3, padding=1)  # (B, C * 9, H * W)
        size = torch.tensor([height, width], dtype=features.dtype, device=features.device)
        limit = torch.tensor([height - 1, width - 1], device=features.device)
        predictions, areas = [], []
        for dy in (-1, 1):
            for dx in (-1, 1):
                shift = torch.tensor([dy, dx], dtype=features.dtype, device=features.device) / size
                index = torch.floor((coords + shift + 1e-6 + 1) / 2 * size).long()  # the cell, unclamped
                centre = -1 + (2 * index.to(features.dtype) + 1) / size
                inside = torch.minimum(index.clamp_min(0), limit)
                flat = (inside[..., 0] * width + inside[..., 1]).unsqueeze(1).expand(-1, unfolded.shape[1], -1)
                feature = unfolded.gather(2, flat).transpose(1, 2)
                offset = (coords - centre) * size
                predictions.append(self.head(feature, offset, cells * size))
                areas.append((offset[..., 0] * offset[..., 1]).abs() + 1e-9)
        total = torch.stack(areas).sum(0)
        areas = [areas[3], areas[2], areas[1], areas[0]]  # each cell weighs by the opposite sub-rectangle
        return sum(p * (a / total).unsqueeze(-1) for p, a in zip(predictions, areas))

    def render(self, latents: torch.Tensor, size: tuple[int, int], chunk: int = 8192, images: int = 16) -> torch.Tensor:
        """Latents -> images (B, C, h, w) in the model's units ([-1, 1]) at any ``size``, ``images``
        latents and ``chunk`` output pixels at a time (1.5x faster on CPU than the whole batch)."""
        if len(latents) > images:
            return torch.cat(
                [self.render(latents[i : i + images], size, chunk, images) for i in range(0, len(latents), images)]
            )
        features = self.features(latents)
        coords, cells = queries(*size)
        coords, cells = coords.to(features), cells.to(features)
        out = [
            self.query(
                features,
                coords[i : i + chunk].expand(len(latents), -1, -1),
                cells[i : i + chunk].expand(len(latents), -1, -1),
            )
            for i in range(0, len(coords), chunk)
        ]
        return torch.cat(out, dim=1).transpose(1, 2).reshape(len(latents), -1, *size)

    @torch.no_grad()
    def images(self, latents: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Latents -> images in [0, 1] on the CPU."""
        return from_model(self.render(latents, size).float().cpu())

    def save_pretrained(self, folder: Path) -> None:
        folder = Path(folder)
        self.vae.save_pretrained(str(folder / "vae"))
        self.head.save_pretrained(str(folder / "head"))
        (folder / "implicit.json").write_text(json.dumps({"kind": "implicit_decoder"}, indent=2))

    @classmethod
    def from_pretrained(cls, folder: Path, device: torch.device | str = "cpu") -> ImplicitDecoder:
        folder = Path(folder)
        vae = AutoencoderKL.from_pretrained(str(folder / "vae"), low_cpu_mem_usage=False)
        head = LiifHead.from_pretrained(str(folder / "head"), low_cpu_mem_usage=False)
        return cls(vae, head).to(device).eval()


# --- Training: LIIF's recipe over the frozen autoencoder ------------------------------------------------


def downsampling_factor(vae: AutoencoderKL) -> int:
    return 2 ** (len(vae.config.block_out_channels) - 1)


def shrink(images: torch.Tensor, scale: float, factor: int) -> torch.Tensor:
    """Antialiased downsampling by ``scale`` to a size the encoder takes (a multiple of ``factor``)."""
    side = max(factor, int(round(images.shape[-1] / scale / factor)) * factor)
    return F.interpolate(images, size=(side, side), mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)


def antialiased(images: torch.Tensor, size: int) -> torch.Tensor:
    return F.interpolate(images, size=(size, size), mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)


def ratio_name(ratio: float) -> str:
    return f"x{ratio:g}".replace(".", "p")


def render_step(ratios: tuple[float, float], query_points: int):
    """One LIIF step at a random ratio r in ``ratios`` (output pixels per pixel of the latent's
    grid), L1 in the model's units at ``query_points`` random output pixels. r >= 1: the image
    shrunk by r is encoded and rendered at the image's size (upsampling a latent); r < 1: the
    image is encoded as it is and rendered at r times its size against its antialiased shrink
    (sizes between the encoder's grid steps). The autoencoder stays frozen, so the latent space
    the diffusion models use does not move."""

    def step(model: ImplicitDecoder, images: torch.Tensor, generator: torch.Generator):
        factor = downsampling_factor(model.vae)
        low, high = ratios
        ratio = float(low + (high - low) * torch.rand((), generator=generator, device=generator.device))
        with torch.no_grad():
            if ratio >= 1:
                source, target = shrink(images, ratio, factor), images
            else:
                source, target = images, antialiased(images, max(1, int(round(images.shape[-1] * ratio))))
            latents = model.vae.encode(to_model(source)).latent_dist.mode()
        size = target.shape[-1]
        coords, cells = queries(size, size)
        picked = torch.randperm(size * size, generator=generator, device=generator.device)[:query_points].cpu()
        coords, cells = coords[picked].to(images), cells[picked].to(images)
        batch = len(images)
        prediction = model.query(model.features(latents), coords.expand(batch, -1, -1), cells.expand(batch, -1, -1))
        values = to_model(target).flatten(2)[:, :, picked.to(images.device)].transpose(1, 2)
        return (prediction.float() - values).abs().mean(), {"ratio": ratio}

    return step


@torch.no_grad()
def evaluate_rendering(
    model: ImplicitDecoder, images: torch.Tensor, ratios: Sequence[float] = (1.0, 2.0, 4.0), batch_size: int = 64
) -> dict[str, float]:
    """Val PSNR of the rendering at each ratio next to what it must beat. r >= 1: shrink by r,
    encode, render at the original size, against bicubic from the same shrunk image. r < 1:
    encode, render at r times the size, against the plain decode resized (antialiased) to it;
    both against the original shrunk the same way."""
    device = next(model.parameters()).device
    factor, size = downsampling_factor(model.vae), images.shape[-1]
    out: dict[str, float] = {}
    for ratio in ratios:
        rendered, baseline, targets = [], [], []
        for start in range(0, len(images), batch_size):
            chunk = images[start : start + batch_size].to(device)
            if ratio >= 1:
                source, target = shrink(chunk, ratio, factor), chunk
                other = antialiased(source, size)
            else:
                source, target = chunk, antialiased(chunk, max(1, int(round(size * ratio))))
            latents = model.vae.encode(to_model(source)).latent_dist.mode()
            if ratio < 1:
                other = antialiased(from_model(model.vae.decode(latents).sample.float()), target.shape[-1])
            rendered.append(
                from_model(model.render(latents, (int(target.shape[-2]), int(target.shape[-1]))).float()).cpu()
            )
            baseline.append(other.cpu())
            targets.append(target.cpu())
        name, stacked = ratio_name(ratio), torch.cat(targets)
        out[f"val_psnr_render_{name}"] = float(per_image_scores(torch.cat(rendered), stacked)["psnr"].mean())
        baseline_name = "bicubic" if ratio >= 1 else "resized"
        out[f"val_psnr_{baseline_name}_{name}"] = float(per_image_scores(torch.cat(baseline), stacked)["psnr"].mean())
    return out


def train_implicit_decoder(
    metadata: pd.DataFrame,
    store: ImageStore,
    vae_dir: Path,
    train_config: TrainConfig,
    runs_root: Path,
    data_hash: str,
    *,
    ratios: tuple[float, float] = (1.0, 4.0),
    eval_ratios: Sequence[float] = (1.0, 2.0, 4.0),
    query_points: int = 1024,
    hidden: Sequence[int] = (128, 128),
    val_images: int | None = None,
    progress=None,
    stop_after: int | None = None,
) -> TrainingOutcome:
    """A LIIF head over the project's frozen VAE, trained on the train split at output ratios in
    ``ratios`` (:func:`render_step`), validated on val (the first ``val_images``) at ``eval_ratios``."""
    train = StoreImages(store, metadata[metadata["split"] == "train"])
    val = StoreImages(store, metadata[metadata["split"] == "val"].iloc[:val_images]).stack()
    sampler = EpochSampler(len(train), train_config.batch_size, train_config.seed)
    vae = load_vae(vae_dir).requires_grad_(False)
    torch.manual_seed(train_config.seed)  # the head's initial weights: the same run starts the same
    decoder = ImplicitDecoder.from_vae(vae, hidden)
    run_dir = Path(runs_root) / run_key(
        "implicit_decoder",
        {"hidden": list(hidden), "ratios": list(ratios), "query_points": query_points, "vae": str(vae_dir)},
        train_config.identity(),
        data_hash,
    )
    trainer = Trainer(
        decoder,
        render_step(ratios, query_points),
        lambda step: train.batch(sampler.indices(step)),
        train_config,
        run_dir,
        evaluate=lambda model, step: evaluate_rendering(cast(ImplicitDecoder, model), val, eval_ratios),
        progress=progress,
    )
    model_dir = run_dir / "model"
    result = trainer.fit_and_save(
        model_dir, lambda result, tmp: cast(ImplicitDecoder, result.ema_model).save_pretrained(tmp), stop_after
    )
    return TrainingOutcome(
        "implicit_decoder", run_dir, model_dir, result.final_step, result.resumed_from, result.last_eval
    )
