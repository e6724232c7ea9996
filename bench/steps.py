"""What the benches time when they compare precisions, threads or allocators: one training step
on a fixed batch. Not what trains (that is ``cxr_pipeline.models.training.Trainer``)."""

from __future__ import annotations

from collections.abc import Callable

import torch


def fixed_batch_step(
    module: torch.nn.Module, inputs: tuple, forward: Callable[..., torch.Tensor], bf16: bool = False
) -> Callable[[], None]:
    """One AdamW step of ``module`` on the same ``inputs`` each call (a squared-output loss): what
    the benches time when they compare precisions, threads or compilation, not what trains."""
    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-4)

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = forward(module, *inputs)
        loss = out.float().pow(2).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step
