"""The learned regression baseline every restoration model is measured against: a residual CNN
trained with L1 on the same pairs, the one thing a reviewer from the field asks of a diffusion
model first ("does it beat a plain network trained on the same data?").

EDSR-shaped (no batch norm, residual blocks with scaled residuals, a global skip): for
super-resolution it works at LR and adds its pixel-shuffled residual to the bicubic upsampling;
for denoising it predicts the residual over the noisy input (RED-CNN and DnCNN learn the same
thing). Regression to the mean is what it does best: it should win PSNR and lose fine detail,
which is exactly the trade-off the evaluation reports show.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .. import compute


@dataclass(frozen=True)
class RegressionRecipe:
    """How the baseline trains. The checkpoint it keeps is the one with the best val PSNR."""

    channels: int = 32
    blocks: int = 6
    steps: int = 600
    batch_size: int = 16
    crop: int = 48  # target-side crop; the whole image where smaller
    learning_rate: float = 1e-3  # Adam, cosine to 0
    validate_every: int = 100
    seed: int = 0

    def params(self) -> dict:
        return asdict(self)


class _Block(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + 0.1 * self.body(x)


class ResidualCNN(nn.Module):
    """Input (N, 1, h, w) in [0, 1] -> (N, 1, h * scale, w * scale). With ``conditioned``, each
    image also carries one number (a denoiser's dose, as ``log10(I0)``), given to the network as
    a constant plane beside the image (FFDNet's noise-level map). On the demo's val split the
    blind network denoised 0.9 dB better, so the evaluation's baseline is blind; the option stays
    for the recipe search (experiments/regression_recipe.py)."""

    def __init__(self, scale: int = 1, channels: int = 48, blocks: int = 6, conditioned: bool = False):
        super().__init__()
        if scale not in (1, 2, 3, 4, 8):
            raise ValueError(f"scale must be 1, 2, 3, 4 or 8, got {scale}")
        self.scale, self.conditioned = scale, conditioned
        self.head = nn.Conv2d(2 if conditioned else 1, channels, 3, padding=1)
        self.body = nn.Sequential(
            *[_Block(channels) for _ in range(blocks)], nn.Conv2d(channels, channels, 3, padding=1)
        )
        stages: list[nn.Module] = []
        for factor in [2] * int(math.log2(scale)) if scale in (2, 4, 8) else [scale] if scale > 1 else []:
            stages += [nn.Conv2d(channels, channels * factor**2, 3, padding=1), nn.PixelShuffle(factor)]
        self.upsample = nn.Sequential(*stages)
        self.tail = nn.Conv2d(channels, 1, 3, padding=1)
        nn.init.zeros_(self.tail.weight)  # starts as the skip path: bicubic, or the input itself
        if self.tail.bias is not None:
            nn.init.zeros_(self.tail.bias)

    def forward(self, x: torch.Tensor, condition: torch.Tensor | None = None) -> torch.Tensor:
        if self.conditioned:
            if condition is None:
                raise ValueError("this network is conditioned: pass one value per image")
            plane = condition.to(x).reshape(-1, 1, 1, 1).expand(-1, 1, *x.shape[-2:])
            features = self.head(torch.cat([x, plane], dim=1))
        else:
            features = self.head(x)
        residual = self.tail(self.upsample(features + self.body(features)))
        if self.scale == 1:
            return x + residual
        base = F.interpolate(x, scale_factor=self.scale, mode="bicubic", align_corners=False)
        return base + residual


def _crops(inputs: torch.Tensor, targets: torch.Tensor, indices: np.ndarray, crop: int, scale: int, rng):
    side = targets.shape[-1]
    if crop >= side:
        return inputs[indices], targets[indices]
    low = crop // scale
    tops = rng.integers(0, inputs.shape[-2] - low + 1, len(indices))
    lefts = rng.integers(0, inputs.shape[-1] - low + 1, len(indices))
    x = torch.stack([inputs[i, :, t : t + low, s : s + low] for i, t, s in zip(indices, tops, lefts)])
    y = torch.stack(
        [
            targets[i, :, t * scale : (t + low) * scale, s * scale : (s + low) * scale]
            for i, t, s in zip(indices, tops, lefts)
        ]
    )
    return x, y


@torch.no_grad()
def restore(
    model: ResidualCNN, inputs: torch.Tensor, conditions: torch.Tensor | None = None, batch_size: int = 32
) -> torch.Tensor:
    model.eval()
    device = next(model.parameters()).device
    out = []
    for i in range(0, len(inputs), batch_size):
        condition = conditions[i : i + batch_size].to(device) if conditions is not None else None
        out.append(model(inputs[i : i + batch_size].to(device), condition).clamp(0, 1).cpu())
    return torch.cat(out).float()


def _psnr(prediction: torch.Tensor, target: torch.Tensor) -> float:
    mse = ((prediction.double() - target.double()) ** 2).mean(dim=(1, 2, 3)).clamp_min(1e-12)
    return float((-10 * torch.log10(mse)).mean())


@dataclass
class TrainedBaseline:
    model: ResidualCNN
    curve: list[tuple[int, float, float]]  # (step, train L1 over the last interval, val PSNR)
    best_step: int
    seconds: float


def train_regression(
    inputs: torch.Tensor,
    targets: torch.Tensor,
    val_inputs: torch.Tensor,
    val_targets: torch.Tensor,
    recipe: RegressionRecipe,
    device: str = "cpu",
    log: Callable[[str], None] | None = None,
    conditions: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> TrainedBaseline:
    """L1 on random crops of the training pairs; every ``validate_every`` steps the val PSNR,
    and the best checkpoint is the one returned (early stopping on val, never on test).
    ``conditions``: one value per training and per val image (see :class:`ResidualCNN`)."""
    scale = targets.shape[-1] // inputs.shape[-1]
    torch.manual_seed(recipe.seed)
    rng = np.random.default_rng(recipe.seed)
    train_conditions, val_conditions = conditions if conditions is not None else (None, None)
    model = ResidualCNN(scale, recipe.channels, recipe.blocks, conditioned=conditions is not None).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=recipe.learning_rate)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, recipe.steps)
    best = (
        _psnr(restore(model, val_inputs, val_conditions), val_targets),
        0,
        {k: v.clone() for k, v in model.state_dict().items()},
    )
    curve, losses, start = [(0, float("nan"), best[0])], [], time.perf_counter()
    order = np.empty(0, dtype=int)
    for step in range(1, recipe.steps + 1):
        if len(order) < recipe.batch_size:
            order = np.concatenate([order, rng.permutation(len(inputs))])
        compute.rebalance()  # the step's share of the cores, as other steps start and end
        batch, order = order[: recipe.batch_size], order[recipe.batch_size :]
        x, y = _crops(inputs, targets, batch, recipe.crop, scale, rng)
        condition = train_conditions[batch].to(device) if train_conditions is not None else None
        model.train()
        loss = F.l1_loss(model(x.to(device), condition), y.to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(float(loss.detach()))
        if step % recipe.validate_every == 0 or step == recipe.steps:
            val = _psnr(restore(model, val_inputs, val_conditions), val_targets)
            curve.append((step, float(np.mean(losses)), val))
            losses = []
            if log:
                log(f"regression baseline step {step}: val PSNR {val:.2f} dB")
            if val > best[0]:
                best = (val, step, {k: v.clone() for k, v in model.state_dict().items()})
    model.load_state_dict(best[2])
    return TrainedBaseline(model.cpu().eval(), curve, best[1], time.perf_counter() - start)
