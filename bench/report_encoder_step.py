"""What a training step of the report encoder's masked-language modelling costs, and where.

The project's own encoder is a small BERT (2 layers of 128) over a 2000-token vocabulary, so the
prediction head over the vocabulary is about half of the multiply-adds at every position. The loss
reads only the masked positions (15%). This times, back to back in one process after a warm-up, on
the work folder's training reports (the recipe's tokenizer, batch and masking):

- ``whole head``: ``BertForMaskedLM(**batch).loss``, the head applied at every position;
- ``masked head``: ``report_encoder.masked_lm_loss``, the head at the masked positions only
  (what the pretraining uses);

each in fp32 and under CPU bf16 autocast, and checks that both heads give the same loss (eval mode,
no dropout). Prints seconds per step and the ratio to the whole head in fp32.

    python bench/report_encoder_step.py [--home WORK] [--steps 30] [--rounds 2]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd
import torch

from cxr_pipeline.kinds.report_encoder import Recipe, split_prompts
from cxr_pipeline.models.report_encoder import build_encoder, masked_batch, masked_lm_loss
from cxr_pipeline.models.report_tokenizer import train_tokenizer
from cxr_pipeline.settings import WorkPaths, work_home


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--home", default=str(work_home()), help="work folder (default: CXR_HOME, else ./work)")
    parser.add_argument("--steps", type=int, default=30, help="timed steps per variant and round")
    parser.add_argument("--rounds", type=int, default=2, help="the variants timed in turn this many times")
    args = parser.parse_args()
    recipe = Recipe()
    config = recipe.encoder()
    reports = split_prompts(pd.read_parquet(WorkPaths(Path(args.home)).metadata), "train")
    tokenizer = train_tokenizer(reports, config.vocab_size, config.max_length)
    ids = tokenizer(reports, truncation=True, max_length=config.max_length)["input_ids"]
    size = recipe.batch_size
    batches = [
        masked_batch(tokenizer, [ids[(i * size + j) % len(ids)] for j in range(size)], config.mlm_probability, seed=i)
        for i in range(args.steps)
    ]
    torch.manual_seed(0)
    model = build_encoder(config, tokenizer)
    with torch.no_grad():
        model.eval()
        whole, masked = float(model(**batches[0]).loss), float(masked_lm_loss(model, batches[0]))
        model.train()
    print(
        f"{len(reports)} training reports, batch {size}, {torch.get_num_threads()} threads; "
        f"loss with the whole head {whole:.6f}, with the masked head {masked:.6f}"
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    variants = {
        "whole head, fp32": (lambda b: model(**b).loss, False),
        "masked head, fp32": (lambda b: masked_lm_loss(model, b), False),
        "whole head, bf16": (lambda b: model(**b).loss, True),
        "masked head, bf16": (lambda b: masked_lm_loss(model, b), True),
    }
    times: dict[str, list[float]] = {name: [] for name in variants}
    for round_ in range(args.rounds + 1):  # round 0 warms up
        for name, (loss_of, bf16) in variants.items():
            started = time.perf_counter()
            for batch in batches:
                with torch.autocast("cpu", torch.bfloat16, enabled=bf16):
                    loss = loss_of(batch)
                loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            if round_:
                times[name].append((time.perf_counter() - started) / len(batches))
    base = min(times["whole head, fp32"])
    rows = [
        {"variant": name, "s/step (best round)": round(min(t), 4), "speed-up": round(base / min(t), 2)}
        for name, t in times.items()
    ]
    print(pd.DataFrame(rows).to_markdown(index=False))


if __name__ == "__main__":
    main()
