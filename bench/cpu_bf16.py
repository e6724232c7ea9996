"""Does bf16 autocast (or channels-last) speed up the demo models' training steps on this CPU?

The issue's lever: "bf16 autocast on CPUs with AVX512-BF16, only where measured faster". Each
demo model's training step (forward, loss, backward, AdamW) at its demo batch and input size, in
fp32, under ``torch.autocast("cpu", torch.bfloat16)`` with PyTorch's fused attention kernel and
with explicit attention (``training.explicit_attention``, what the Trainer uses under CPU bf16),
and in fp32 with channels-last memory and with both, timed back to back in one process after a
warm-up. Prints seconds per step and the ratio to fp32.

    python bench/cpu_bf16.py [--steps 20] [--models classifier,vae]
"""

import argparse
import copy
import time

import torch
from steps import fixed_batch_step

from cxr_pipeline import kinds
from cxr_pipeline.kinds.vae import VAE_PROFILES
from cxr_pipeline.models.classifier import ClassifierConfig, CxrClassifier
from cxr_pipeline.models.training import explicit_attention


def models():
    """(name, module, make inputs, forward) at the demo recipes' batch and input sizes."""
    classifier = CxrClassifier(ClassifierConfig(), 6)
    yield "classifier (64 px, batch 32)", classifier, lambda: (torch.rand(32, 1, 64, 64),), lambda m, x: m(x)
    vae = VAE_PROFILES["demo"].build()
    yield (
        "vae (32 px crops, batch 32)",
        vae,
        lambda: (torch.randn(32, 1, 32, 32),),
        lambda m, x: m(x, sample_posterior=True).sample,
    )
    denoiser = kinds.DENOISER.unet_profiles["demo"].config(32, 2, 1).build()
    yield (
        "denoiser (32 px crops, batch 32)",
        denoiser,
        lambda: (torch.randn(32, 2, 32, 32), torch.randint(0, 1000, (32,))),
        lambda m, x, t: m(x, t).sample,
    )
    side = 64 // VAE_PROFILES["demo"].downsampling_factor  # the latent grid at the demo's 64 px
    class_model = kinds.CLASS_DDPM.unet_profiles["demo"].config(side, 4, 4, num_class_embeds=7).build()
    yield (
        f"class ({side}x{side}x4 latents, batch 64)",
        class_model,
        lambda: (torch.randn(64, 4, side, side), torch.randint(0, 1000, (64,)), torch.randint(0, 7, (64,))),
        lambda m, x, t, c: m(x, t, class_labels=c).sample,
    )
    sr = kinds.LATENT_SR.unet_profiles["demo"].config(side, 8, 4).build()
    yield (
        f"latent SR ({side}x{side}x8, batch 64)",
        sr,
        lambda: (torch.randn(64, 8, side, side), torch.randint(0, 1000, (64,))),
        lambda m, x, t: m(x, t).sample,
    )
    hidden, tokens = 128, 78  # the demo report encoder's width; reports padded to 78 tokens
    text = kinds.TEXT_LDM.unet_profiles["demo"].config(side, 4, 4, None, cross_attention_dim=hidden).build()

    def report_batch():
        mask = (torch.arange(tokens)[None] < torch.randint(tokens // 4, tokens + 1, (64, 1))).long()
        return torch.randn(64, 4, side, side), torch.randint(0, 1000, (64,)), torch.randn(64, tokens, hidden), mask

    yield (
        f"text ({side}x{side}x4, {tokens} tokens, batch 64)",
        text,
        report_batch,
        lambda m, x, t, h, mask: (
            m(x, t, encoder_hidden_states=h, encoder_attention_mask=mask, class_labels=h.mean(1)).sample
        ),
    )


def time_steps(module, inputs, forward, steps: int, bf16: bool, channels_last: bool, explicit: bool = False) -> float:
    module = copy.deepcopy(module).train()
    if explicit:
        explicit_attention(module)
    if channels_last:
        module = module.to(memory_format=torch.channels_last)
        inputs = tuple(x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x for x in inputs)
    step = fixed_batch_step(module, inputs, forward, bf16)
    for _ in range(3):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--models", default="", help="comma-separated name prefixes (default: all)")
    args = parser.parse_args()
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(
        f"{'model':36s} {'fp32 s/step':>12s} {'bf16':>8s} {'ratio':>6s} {'bf16+expl':>9s} {'ratio':>6s} "
        f"{'ch-last':>8s} {'ratio':>6s} {'both':>8s} {'ratio':>6s}"
    )
    wanted = [w for w in args.models.split(",") if w]
    for name, module, make_inputs, forward in models():
        if wanted and not any(name.startswith(w) for w in wanted):
            continue
        inputs = make_inputs()
        fp32 = time_steps(module, inputs, forward, args.steps, bf16=False, channels_last=False)
        bf16 = time_steps(module, inputs, forward, args.steps, bf16=True, channels_last=False)
        explicit = time_steps(module, inputs, forward, args.steps, bf16=True, channels_last=False, explicit=True)
        last = time_steps(module, inputs, forward, args.steps, bf16=False, channels_last=True)
        both = time_steps(module, inputs, forward, args.steps, bf16=True, channels_last=True)
        print(
            f"{name:36s} {fp32:12.3f} {bf16:8.3f} {fp32 / bf16:6.2f} {explicit:9.3f} {fp32 / explicit:6.2f} "
            f"{last:8.3f} {fp32 / last:6.2f} {both:8.3f} {fp32 / both:6.2f}"
        )


if __name__ == "__main__":
    main()
