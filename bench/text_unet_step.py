"""Where the text model's training step goes, against the class model's UNet it starts from:
seconds per step (forward, backward, AdamW; batch 64 on the demo's 32x32x4 latents, this
machine's threads) of the text UNet in fp32 (reports padded to the demo's 78 tokens, their
attention mask, PyTorch's scaled-dot-product attention), and of one change at a time:

- ``40 tokens``: shorter reports (cross-attention cost follows the report length);
- ``classic attention``: diffusers' ``AttnProcessor`` (baddbmm + softmax) instead of SDPA;
- ``bf16 everywhere``: CPU bf16 autocast over the whole UNet, with PyTorch's fused attention;
- ``bf16 everywhere, explicit attention``: what the recipe trains with now (the Trainer's
  ``explicit_attention`` under CPU bf16);
- ``bf16 in ResNet blocks``: autocast around the convolution blocks only, attention in fp32;
- ``classic attention + bf16 in ResNet blocks``: the two candidates that keep the architecture;
- ``1 cross-attention level``: the 4x4 level and the middle only.

Steps are timed round-robin (every variant once per round) and the median is reported, so a
slow stretch of the machine falls on all of them alike.

    python bench/text_unet_step.py [--rounds 8] [--length 78]
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import replace

import pandas as pd
import torch
from diffusers.models.resnet import ResnetBlock2D
from steps import fixed_batch_step

from cxr_pipeline import kinds
from cxr_pipeline.models.training import explicit_attention

BATCH, CHANNELS, SIZE, HIDDEN = 64, 4, 32, 128


def text_unet(levels: int | None = None) -> torch.nn.Module:
    profile = kinds.TEXT_LDM.unet_profiles["demo"]
    if levels is not None:
        profile = replace(profile, cross_attention_levels=levels)
    return profile.config(SIZE, CHANNELS, CHANNELS, None, cross_attention_dim=HIDDEN).build()


def bf16_resnet_blocks(unet: torch.nn.Module) -> torch.nn.Module:
    """Autocast each ResNet block to bf16 and hand fp32 on, so attention stays fp32."""
    for block in unet.modules():
        if isinstance(block, ResnetBlock2D):

            def forward(*args, _forward=block.forward, **kwargs):
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    return _forward(*args, **kwargs).float()

            block.forward = forward
    return unet


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--length", type=int, default=78, help="report tokens (the demo pads its reports to 78)")
    args = parser.parse_args()
    torch.manual_seed(0)
    latents = torch.randn(BATCH, CHANNELS, SIZE, SIZE)
    t = torch.randint(0, 1000, (BATCH,))

    def report(length: int) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = torch.randn(BATCH, length, HIDDEN)
        mask = (torch.arange(length)[None] < torch.randint(length // 4, length + 1, (BATCH, 1))).long()
        return hidden, mask

    def text_forward(unet, x, t, hidden, mask):
        return unet(x, t, encoder_hidden_states=hidden, encoder_attention_mask=mask, class_labels=hidden.mean(1)).sample

    def class_forward(unet, x, t, labels):
        return unet(x, t, class_labels=labels).sample

    full, short = report(args.length), report(40)
    classic, classic_bf16, explicit_bf16 = text_unet(), bf16_resnet_blocks(text_unet()), text_unet()
    for unet in (classic, classic_bf16, explicit_bf16):
        explicit_attention(unet)
    class_unet = kinds.CLASS_DDPM.unet_profiles["demo"].config(SIZE, CHANNELS, CHANNELS, 7).build()
    labels = torch.randint(0, 7, (BATCH,))
    variants = {
        "text UNet in fp32 (SDPA, masked)": fixed_batch_step(text_unet(), (latents, t, *full), text_forward),
        "40 tokens": fixed_batch_step(text_unet(), (latents, t, *short), text_forward),
        "classic attention": fixed_batch_step(classic, (latents, t, *full), text_forward),
        "bf16 everywhere": fixed_batch_step(text_unet(), (latents, t, *full), text_forward, bf16=True),
        "bf16 everywhere, explicit attention (the recipe)": fixed_batch_step(
            explicit_bf16, (latents, t, *full), text_forward, bf16=True
        ),
        "bf16 in ResNet blocks": fixed_batch_step(bf16_resnet_blocks(text_unet()), (latents, t, *full), text_forward),
        "classic attention + bf16 in ResNet blocks": fixed_batch_step(classic_bf16, (latents, t, *full), text_forward),
        "1 cross-attention level": fixed_batch_step(text_unet(levels=1), (latents, t, *full), text_forward),
        "class UNet, fp32": fixed_batch_step(class_unet, (latents, t, labels), class_forward),
        "class UNet, bf16 (its recipe)": fixed_batch_step(class_unet, (latents, t, labels), class_forward, bf16=True),
    }
    for step in variants.values():  # warm-up
        step()
    seconds: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, step in variants.items():
            started = time.perf_counter()
            step()
            seconds[name].append(time.perf_counter() - started)
    base = statistics.median(seconds["text UNet in fp32 (SDPA, masked)"])
    rows = [
        {
            "variant": name,
            "s per step (median)": round(statistics.median(v), 3),
            "x fp32 step": round(statistics.median(v) / base, 2),
        }
        for name, v in seconds.items()
    ]
    print(f"{torch.get_num_threads()} threads, batch {BATCH}, {args.rounds} rounds")
    print(pd.DataFrame(rows).to_markdown(index=False))


if __name__ == "__main__":
    main()
