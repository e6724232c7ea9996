"""Does keeping freed memory for reuse (``cxr_pipeline.compute.reuse_freed_memory``) pay?

glibc's malloc maps every large block afresh and unmaps it on free, so a process whose tensors are
tens of MiB or more spends CPU time in the kernel faulting in zeroed pages. Each workload below
runs in a fresh process with the C library's defaults (``CXR_REUSE_FREED_MEMORY=0``) and with
freed memory kept for reuse, alternating, several rounds; prints the median seconds per
operation, the ratio, the share of CPU time spent in the kernel and the peak memory of each.

    python bench/allocator.py [--rounds 3] [--workloads full_decode,full_encode,...]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _timed(operation, repeats: int) -> float:
    operation()  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        operation()
    return (time.perf_counter() - start) / repeats


def _training_step(name: str):
    """A demo model's whole training step (forward, loss, backward, AdamW), as bench/cpu_bf16.py builds it."""
    from cpu_bf16 import models  # beside this script
    from steps import fixed_batch_step

    for label, module, make_inputs, forward in models():
        if label.startswith(name):
            return fixed_batch_step(module.train(), make_inputs(), forward, bf16=name == "class")
    raise KeyError(name)


def run_workload(name: str) -> float:
    """Seconds per operation of one workload in this process."""
    import torch

    torch.manual_seed(0)
    if name in ("full_decode", "full_encode"):  # 256 px, what the full profile's evaluations and latents do
        from cxr_pipeline.kinds.vae import VAE_PROFILES

        vae = VAE_PROFILES["full"].build().eval()
        with torch.no_grad():
            if name == "full_decode":
                latents = torch.randn(8, vae.config.latent_channels, 64, 64)
                return _timed(lambda: vae.decode(latents), 2) / 8
            images = torch.rand(8, 1, 256, 256) * 2 - 1
            return _timed(lambda: vae.encode(images), 2) / 8
    from steps import fixed_batch_step

    if name == "full_class_step":  # the full profile's class UNet on 64x64x8 latents, batch 8
        from cxr_pipeline import kinds

        unet = kinds.CLASS_DDPM.unet_profiles["full"].config(64, 8, 8, num_class_embeds=7).build().train()
        inputs = (torch.randn(8, 8, 64, 64), torch.randint(0, 1000, (8,)), torch.randint(0, 7, (8,)))
        step = fixed_batch_step(unet, inputs, lambda m, x, t, c: m(x, t, class_labels=c).sample, False)
        return _timed(step, 3)
    demo = {
        "demo_vae_step": "vae",
        "demo_class_step": "class",
        "demo_sr_step": "latent SR",
        "demo_denoiser_step": "denoiser",
    }
    step = _training_step(demo[name])
    return _timed(step, 15)


WORKLOADS = (
    "full_decode",
    "full_encode",
    "full_class_step",
    "demo_vae_step",
    "demo_class_step",
    "demo_sr_step",
    "demo_denoiser_step",
)


def _worker(name: str) -> None:
    from cxr_pipeline.compute import reuse_freed_memory

    took = reuse_freed_memory()
    seconds = run_workload(name)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(
        json.dumps(
            {
                "seconds": seconds,
                "reuse": took,
                "kernel_share": usage.ru_stime / (usage.ru_stime + usage.ru_utime),
                "peak_mib": usage.ru_maxrss / 1024,
            }
        )
    )


def _measure(name: str, reuse: bool) -> dict:
    env = {**os.environ, "CXR_REUSE_FREED_MEMORY": "1" if reuse else "0"}
    out = subprocess.run(
        [sys.executable, __file__, "--worker", name], env=env, check=True, capture_output=True, text=True, cwd=ROOT
    ).stdout
    measured = json.loads(out.strip().splitlines()[-1])
    assert measured["reuse"] == reuse, "the setting did not take as asked"
    return measured


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workloads", default=",".join(WORKLOADS))
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        _worker(args.worker)
        return
    import torch

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.rounds} rounds, medians")
    print(
        f"{'workload':20s} {'defaults s/op':>14s} {'reuse s/op':>11s} {'speed-up':>9s} {'kernel share':>13s} "
        f"{'peak MiB':>15s}"
    )
    for name in args.workloads.split(","):
        runs = {False: [], True: []}
        for _ in range(args.rounds):
            for reuse in (False, True):
                runs[reuse].append(_measure(name, reuse))
        seconds = {reuse: statistics.median(r["seconds"] for r in rows) for reuse, rows in runs.items()}
        kernel = {reuse: statistics.median(r["kernel_share"] for r in rows) for reuse, rows in runs.items()}
        peak = {reuse: max(r["peak_mib"] for r in rows) for reuse, rows in runs.items()}
        print(
            f"{name:20s} {seconds[False]:14.3f} {seconds[True]:11.3f} {seconds[False] / seconds[True]:8.2f}x "
            f"{kernel[False]:6.0%} -> {kernel[True]:3.0%} {peak[False]:7.0f} -> {peak[True]:5.0f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
