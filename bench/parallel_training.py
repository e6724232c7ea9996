"""Two training steps side by side with one thread each, or one at a time with every thread?

The issue's lever "use the machine": each demo model's training step (forward, loss, backward,
AdamW at its demo batch and input size, bf16 where its recipe uses it) timed

- alone, with every core's thread (what the main job did: one heavy step at a time);
- alone, with ``threads / workers`` threads;
- ``workers`` copies at once, each in its own process with ``threads / workers`` threads (what
  ``jobs.training_executor`` now does where cores allow).

It prints seconds per step and the throughput of the side-by-side copies against one step with
every thread (``> 1``: running steps side by side gets more training done per second).

    python bench/parallel_training.py [--steps 15] [--workers 2]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import time


def _models():
    import torch

    from cxr_pipeline import kinds
    from cxr_pipeline.kinds.vae import VAE_PROFILES

    vae = VAE_PROFILES["demo"]
    side = 64 // vae.downsampling_factor
    yield (
        "vae (32 px crops, batch 32, bf16)",
        True,
        lambda: vae.build(),
        lambda: (torch.randn(32, 1, 32, 32),),
        lambda m, x: m(x, sample_posterior=True).sample,
    )
    yield (
        "denoiser (32 px crops, batch 32)",
        False,
        lambda: kinds.DENOISER.unet_profiles["demo"].config(32, 2, 1).build(),
        lambda: (torch.randn(32, 2, 32, 32), torch.randint(0, 1000, (32,))),
        lambda m, x, t: m(x, t).sample,
    )
    yield (
        f"class ({side}x{side}x4, batch 64, bf16)",
        True,
        lambda: kinds.CLASS_DDPM.unet_profiles["demo"].config(side, 4, 4, num_class_embeds=7).build(),
        lambda: (torch.randn(64, 4, side, side), torch.randint(0, 1000, (64,)), torch.randint(0, 7, (64,))),
        lambda m, x, t, c: m(x, t, class_labels=c).sample,
    )
    yield (
        f"latent SR ({side}x{side}x8, batch 64)",
        False,
        lambda: kinds.LATENT_SR.unet_profiles["demo"].config(side, 8, 4).build(),
        lambda: (torch.randn(64, 8, side, side), torch.randint(0, 1000, (64,))),
        lambda m, x, t: m(x, t).sample,
    )


def _time(index: int, threads: int, steps: int, barrier, results) -> None:
    import torch
    from steps import fixed_batch_step

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    name, bf16, build, make_inputs, forward = list(_models())[index]
    step = fixed_batch_step(build().train(), make_inputs(), forward, bf16)

    for _ in range(3):
        step()
    barrier.wait()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    results.put((time.perf_counter() - start) / steps)


def seconds_per_step(index: int, threads: int, workers: int, steps: int) -> float:
    """Mean seconds per step of ``workers`` processes timing the model at once."""
    context = mp.get_context("spawn")
    barrier, results = context.Barrier(workers), context.Queue()
    procs = [context.Process(target=_time, args=(index, threads, steps, barrier, results)) for _ in range(workers)]
    for proc in procs:
        proc.start()
    times = [results.get() for _ in procs]
    for proc in procs:
        proc.join()
    return sum(times) / len(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0))
    each = max(1, cores // args.workers)
    print(f"{cores} cores; {args.workers} steps side by side with {each} thread(s) each, against one with {cores}")
    print(
        f"{'model':36s} {'alone ' + str(cores) + 't':>10s} {'alone ' + str(each) + 't':>10s} "
        f"{'side by side':>13s} {'throughput':>11s} {'shared ' + str(cores) + 't':>10s} {'throughput':>11s}"
    )
    for index, (name, *_rest) in enumerate(_models()):
        alone = seconds_per_step(index, cores, 1, args.steps)
        alone_each = seconds_per_step(index, each, 1, args.steps)
        side = seconds_per_step(index, each, args.workers, args.steps)
        # every step with every core's thread, the cores shared (oversubscribed)
        shared = seconds_per_step(index, cores, args.workers, args.steps)
        print(
            f"{name:36s} {alone:10.3f} {alone_each:10.3f} {side:13.3f} {args.workers * alone / side:10.2f}x "
            f"{shared:10.3f} {args.workers * alone / shared:10.2f}x",
            flush=True,
        )


if __name__ == "__main__":
    main()
