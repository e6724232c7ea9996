"""Training throughput of the VAE step inside our Trainer against a bare PyTorch loop over the
same model, batch size and steps, in one process. The Trainer adds the store reads, EMA,
gradient clipping, the LR schedule, progress events and the final checkpoint.

    python bench/vae_overhead.py [--steps 60] [--batch-size 16] [--rounds 3]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from cxr_pipeline.data.demo import phantom
from cxr_pipeline.data.image_store import ImageStore, to_stored
from cxr_pipeline.models.batches import EpochSampler, StoreImages
from cxr_pipeline.models.training import TrainConfig, Trainer, step_generator
from cxr_pipeline.models.vae import VaeConfig, vae_step


def demo_images(count: int, size: int) -> np.ndarray:
    images = []
    for i in range(count):
        rng = np.random.default_rng(i)
        traits = phantom.sample_patient(rng, i)
        images.append(phantom.render(traits, phantom.sample_study(rng, (), seed=i), size))
    return np.stack(images)


def bare_loop(images: torch.Tensor, config: TrainConfig, vae_config: VaeConfig) -> float:
    torch.manual_seed(0)
    model = vae_config.build()
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate)
    step_fn = vae_step(vae_config.kl_weight)
    sampler = EpochSampler(len(images), config.batch_size, 0)
    batches = [images[sampler.indices(s)] for s in range(config.steps)]  # in memory, prepared outside the timing
    started = time.perf_counter()
    for step, batch in enumerate(batches):
        loss, _ = step_fn(model, batch, step_generator(0, step))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return config.steps * config.batch_size / (time.perf_counter() - started)


def pipeline_loop(
    store: ImageStore, rows: pd.DataFrame, config: TrainConfig, vae_config: VaeConfig, run_dir: Path
) -> tuple[float, float]:
    torch.manual_seed(0)
    data = StoreImages(store, rows)
    sampler = EpochSampler(len(data), config.batch_size, 0)
    load_times = []

    def batches(step: int) -> torch.Tensor:
        started = time.perf_counter()
        batch = data.batch(sampler.indices(step))
        load_times.append(time.perf_counter() - started)
        return batch

    trainer = Trainer(vae_config.build(), vae_step(vae_config.kl_weight), batches, config, run_dir)
    started = time.perf_counter()
    trainer.fit()
    elapsed = time.perf_counter() - started
    return config.steps * config.batch_size / elapsed, float(np.mean(load_times))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    config = TrainConfig(
        steps=args.steps,
        batch_size=args.batch_size,
        learning_rate=2e-3,
        warmup_steps=5,
        checkpoint_every=10**9,
        eval_every=10**9,
        log_every=10,
        device="cpu",
    )
    vae_config = VaeConfig()
    images = demo_images(args.images, 64)
    with tempfile.TemporaryDirectory() as tmp:
        store = ImageStore(Path(tmp) / "store")
        shard = store.write_shard(to_stored(images))
        rows = pd.DataFrame(
            {"image_id": [str(i) for i in range(len(images))], "shard": shard, "shard_index": range(len(images))}
        )
        tensor = torch.from_numpy(store.read_many([shard] * len(images), list(range(len(images))))).unsqueeze(1)
        # CPU throughput drifts by several percent between runs: alternate the two loops and
        # compare each pipeline run with the bare runs either side of it.
        bare = [bare_loop(tensor, config, vae_config)]
        ours, loads = [], []
        for round_ in range(args.rounds):
            rate, load_s = pipeline_loop(store, rows, config, vae_config, Path(tmp) / f"run{round_}")
            ours.append(rate)
            loads.append(load_s)
            bare.append(bare_loop(tensor, config, vae_config))
    ratios = [rate / ((bare[i] + bare[i + 1]) / 2) for i, rate in enumerate(ours)]
    step_s = args.batch_size / float(np.median(ours))
    print(f"bare PyTorch loop  img/s: {', '.join(f'{b:.1f}' for b in bare)}")
    print(f"pipeline Trainer   img/s: {', '.join(f'{o:.1f}' for o in ours)}")
    print(
        f"pipeline / bare, per round: {', '.join(f'{r:.3f}' for r in ratios)}; "
        f"median {np.median(ratios):.3f}x (overhead {100 * (1 - np.median(ratios)):+.1f}%)"
    )
    print(
        f"batch read from the store: {1000 * np.mean(loads):.2f} ms of a {1000 * step_s:.0f} ms step "
        f"({100 * np.mean(loads) / step_s:.2f}%)"
    )


if __name__ == "__main__":
    main()
