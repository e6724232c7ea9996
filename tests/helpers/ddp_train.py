"""Run by test_training under ``torchrun``: trains a small regression with the shared Trainer.

A deterministic step (no noise), so one process on the global batch and two ranks on half
batches each must end with the same weights: DDP's gradient average is the full-batch gradient.
"""

import sys
from pathlib import Path

import torch

from cxr_pipeline.models import distributed
from cxr_pipeline.models.training import TrainConfig, Trainer

CONFIG = TrainConfig(
    steps=8,
    batch_size=8,
    learning_rate=1e-2,
    warmup_steps=2,
    checkpoint_every=4,
    eval_every=4,
    log_every=2,
    device="cpu",
)


def train_regression(run_dir: Path) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    data = torch.randn(64, 6, generator=torch.Generator().manual_seed(1))
    target = data.sum(dim=1, keepdim=True).sin()

    def batches(step: int) -> dict:
        rows = torch.arange(step * 8, step * 8 + 8) % 64
        return {"x": data[rows], "y": target[rows]}

    def step_fn(network, batch, generator):
        return torch.nn.functional.mse_loss(network(batch["x"]), batch["y"]), {}

    events = []
    trainer = Trainer(
        model,
        step_fn,
        batches,
        CONFIG,
        run_dir,
        progress=events.append,
        evaluate=lambda m, step: {"probe": float(m(data[:4]).sum())},
    )
    result = trainer.fit()
    if trainer.group.is_main:
        losses = [e.metrics["loss"] for e in result.history if e.kind == "step"]
        (run_dir / "events.txt").write_text(
            " ".join(sorted({e.kind for e in events})) + "\n" + " ".join(f"{v:.8f}" for v in losses)
        )
    else:
        assert not events, "only rank 0 reports"
    return {k: v.detach().clone() for k, v in result.ema_model.state_dict().items()}


if __name__ == "__main__":
    with distributed.joined_from_environment() as group:
        weights = train_regression(Path(sys.argv[1]))
        torch.save(weights, Path(sys.argv[1]) / f"weights_rank{group.rank}_of_{group.world_size}.pt")
