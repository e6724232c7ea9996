"""The learned regression baseline inside a restoration evaluation: trained on the training
split's pairs (the diffusion model's own), its checkpoint chosen on val, run once per evaluation
and shared by the current model and the champion (its output does not depend on either)."""

from __future__ import annotations

import pandas as pd
import torch

from ..models.regression import RegressionRecipe, ResidualCNN, train_regression
from ..models.training import pick_device
from ..reports.document import Table
from .outcome import Log


def fit_regression_baseline(
    train_inputs: torch.Tensor,
    train_targets: torch.Tensor,
    val_inputs: torch.Tensor,
    val_targets: torch.Tensor,
    recipe: RegressionRecipe,
    task: str,
    *,
    device: str = "auto",
    log: Log = print,
) -> tuple[ResidualCNN, Table, str]:
    """The trained CNN, its val curve as a report table, and a sentence saying how it was made."""
    log(f"{task}: training the regression baseline on {len(train_inputs)} pairs, {recipe.steps} steps")
    trained = train_regression(
        train_inputs,
        train_targets,
        val_inputs,
        val_targets,
        recipe,
        str(pick_device(device)),
        log=log,
    )
    curve = pd.DataFrame(trained.curve, columns=["step", "train L1", "val PSNR"]).round(4)
    note = (
        f"The residual CNN ({recipe.channels} channels, {recipe.blocks} residual blocks, "
        f"{sum(p.numel() for p in trained.model.parameters()):,} parameters) was trained with L1 on "
        f"{len(train_inputs)} training pairs for {recipe.steps} steps ({trained.seconds:.0f} s); its checkpoint, "
        f"step {trained.best_step}, is the one with the best PSNR on {len(val_inputs)} val pairs."
    )
    return trained.model, Table(f"Regression baseline, {task}: val curve", curve), note
