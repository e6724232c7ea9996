"""The report encoder of text-conditional generation: a BERT-family model and its tokenizer.

One loading path serves every encoder: a local folder read with ``AutoTokenizer`` /
``AutoModel`` and ``local_files_only=True``, so nothing is ever downloaded. The folder is either
a pretrained biomedical checkpoint a user configures (BioBERT, CXR-BERT, PubMedBERT, ...) or the
small encoder this project pretrains when none is configured: a WordPiece tokenizer built on the
training split's reports (:mod:`.report_tokenizer`, the same files on every run) and a small BERT
pretrained on them by masked-language modelling (``BertForMaskedLM``), both written with
``save_pretrained``.

The diffusion model attends to the encoder's last hidden states with the attention mask; the
empty report (``""``, just ``[CLS] [SEP]``) is the null condition of classifier-free guidance.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from transformers import (
    AutoModel,
    AutoTokenizer,
    BertConfig,
    BertForMaskedLM,
    DataCollatorForLanguageModeling,
    PreTrainedModel,
    PreTrainedTokenizerFast,
)

from .batches import EpochSampler
from .diffusion import TextCondition
from .report_tokenizer import VOCABULARY_RULE, train_tokenizer
from .training import TrainConfig, Trainer, TrainingOutcome, run_key

ENCODER_FILE = "report_encoder.json"  # beside the weights: what the project's own pretraining recorded


@dataclass(frozen=True)
class ReportEncoderConfig:
    """The project's own encoder: small enough to pretrain in CPU minutes on a few thousand reports."""

    vocab_size: int = 2000  # WordPiece vocabulary, special tokens included
    hidden_size: int = 128
    layers: int = 2
    heads: int = 4
    intermediate_size: int = 256
    max_length: int = 128  # tokens per report, [CLS] and [SEP] included (demo reports: 40 to 110)
    mlm_probability: float = 0.15  # BERT's masking rate: 80% [MASK], 10% random, 10% kept


def build_encoder(config: ReportEncoderConfig, tokenizer: PreTrainedTokenizerFast) -> BertForMaskedLM:
    """A small BERT with its masked-language-modelling head. The output layer is not tied to the
    input embeddings, so checkpoints are plain tensors (safetensors refuses shared ones)."""
    return BertForMaskedLM(
        BertConfig(
            vocab_size=len(tokenizer),
            hidden_size=config.hidden_size,
            num_hidden_layers=config.layers,
            num_attention_heads=config.heads,
            intermediate_size=config.intermediate_size,
            max_position_embeddings=config.max_length,
            pad_token_id=tokenizer.pad_token_id,
            tie_word_embeddings=False,
        )
    )


def masked_batch(
    tokenizer: PreTrainedTokenizerFast, token_ids: Sequence[Sequence[int]], probability: float, seed: int
) -> dict[str, torch.Tensor]:
    """Padded reports with BERT's masking, seeded: the same seed masks the same tokens (a resumed
    training replays its batches exactly)."""
    # The collator's own ``seed`` refuses to run in a subprocess that is not a DataLoader worker
    # (every Dagster step is one): it draws from torch's global generator instead, seeded here
    # inside a fork so the caller's random state is untouched.
    collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=probability)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return dict(collator([{"input_ids": list(ids)} for ids in token_ids]))


def masked_lm_logits(model: BertForMaskedLM, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """The vocabulary logits at the masked positions only, and their labels. The loss reads
    nothing else, and the prediction head over the whole vocabulary is half the small encoder's
    multiply-adds at every position: applied to the masked 15% alone, a step costs 0.78x on one
    core, 0.85x on two (BertForMaskedLM's own forward scores every position;
    bench/report_encoder_step.py)."""
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    hidden = model.bert(**inputs).last_hidden_state
    masked = batch["labels"] != -100
    return model.cls(hidden[masked]), batch["labels"][masked]


def masked_lm_loss(model: BertForMaskedLM, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """BertForMaskedLM's loss (cross-entropy over the masked tokens), from the masked positions."""
    logits, labels = masked_lm_logits(model, batch)
    return torch.nn.functional.cross_entropy(logits.float(), labels)


@torch.no_grad()
def masked_lm_scores(model: BertForMaskedLM, batch: dict[str, torch.Tensor]) -> dict[str, float]:
    """Masked-token loss and accuracy (over the masked positions only)."""
    device = next(model.parameters()).device
    logits, labels = masked_lm_logits(model, {k: v.to(device) for k, v in batch.items()})
    return {
        "mlm_loss": float(torch.nn.functional.cross_entropy(logits.float(), labels)),
        "mlm_accuracy": float((logits.argmax(-1) == labels).float().mean()),
    }


def pretrain_report_encoder(
    train_texts: Sequence[str],
    val_texts: Sequence[str],
    config: ReportEncoderConfig,
    train_config: TrainConfig,
    runs_root: Path,
    data_hash: str,
    *,
    progress=None,
    stop_after: int | None = None,
) -> TrainingOutcome:
    """The tokenizer trained on ``train_texts``, then the BERT pretrained on them by masked-language
    modelling with the project's Trainer (checkpoints, exact resume, EMA), validated on
    ``val_texts`` (masked-token loss and accuracy, the same masks every time). The model folder
    holds the encoder and its tokenizer, loadable with :meth:`ReportEncoder.from_pretrained`."""
    texts = [t for t in train_texts if t.strip()]
    if not texts:
        raise ValueError("no non-empty training reports to pretrain the report encoder on")
    run_dir = Path(runs_root) / run_key(
        "report_encoder", asdict(config), train_config.identity(), data_hash, VOCABULARY_RULE
    )
    tokenizer = train_tokenizer(texts, config.vocab_size, config.max_length)  # the same on every run and resume
    token_ids = tokenizer(texts, truncation=True, max_length=config.max_length)["input_ids"]
    val_ids = tokenizer([t for t in val_texts if t.strip()][:256], truncation=True, max_length=config.max_length)[
        "input_ids"
    ]
    torch.manual_seed(train_config.seed)  # the initial weights: the same run starts the same
    sampler = EpochSampler(len(token_ids), train_config.batch_size, train_config.seed)

    def batches(step: int) -> dict[str, torch.Tensor]:
        picked = sampler.indices(step)
        return masked_batch(
            tokenizer, [token_ids[i] for i in picked], config.mlm_probability, train_config.seed * 1_000_003 + step
        )

    def step_fn(model: BertForMaskedLM, batch: dict[str, torch.Tensor], generator: torch.Generator):
        # BERT's dropout draws from the global generator: seed it from the step's own, so a resumed
        # run replays the same dropout masks
        torch.manual_seed(int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device)))
        return masked_lm_loss(model, batch), {}

    def evaluate(model: torch.nn.Module, step: int) -> dict[str, float]:
        if not val_ids:
            return {}
        return {
            f"val_{k}": v
            for k, v in masked_lm_scores(
                model, masked_batch(tokenizer, val_ids, config.mlm_probability, seed=train_config.seed)
            ).items()
        }

    trainer = Trainer(
        build_encoder(config, tokenizer),
        step_fn,
        batches,
        train_config,
        run_dir,
        batch_size_of=lambda batch: int(batch["input_ids"].shape[0]),
        evaluate=evaluate,
        progress=progress,
    )
    model_dir = run_dir / "model"

    def save(result, folder: Path) -> None:
        result.ema_model.bert.save_pretrained(str(folder))  # the encoder alone: the MLM head only served pretraining
        tokenizer.save_pretrained(str(folder))
        (folder / ENCODER_FILE).write_text(
            json.dumps(
                {
                    "config": asdict(config),
                    "train_reports": len(texts),
                    "step": result.final_step,
                    "vocabulary": len(tokenizer),
                },
                indent=2,
            )
        )

    result = trainer.fit_and_save(model_dir, save, stop_after)
    return TrainingOutcome(
        "report_encoder", run_dir, model_dir, result.final_step, result.resumed_from, result.last_eval
    )


class ReportImageAligner(torch.nn.Module):
    """ConVIRT (Zhang et al. 2022) on the demo's scale: the report encoder's pooled embedding and
    a small convolutional encoder of the paired image's VAE latent, each projected to a shared
    space and pulled together by a symmetric InfoNCE loss with a learned temperature (CLIP). The
    masked-mean pooling is the one the diffusion UNet reads, so what aligns is what it sees."""

    def __init__(self, encoder: PreTrainedModel, latent_channels: int, width: int = 64, dim: int = 128):
        super().__init__()
        self.encoder = encoder
        hidden = int(encoder.config.hidden_size)
        self.text_projection = torch.nn.Sequential(
            torch.nn.Linear(hidden, dim), torch.nn.GELU(), torch.nn.Linear(dim, dim)
        )
        self.image = torch.nn.Sequential(
            torch.nn.Conv2d(latent_channels, width, 3, padding=1),
            torch.nn.GELU(),
            torch.nn.Conv2d(width, 2 * width, 3, stride=2, padding=1),
            torch.nn.GELU(),
            torch.nn.Conv2d(2 * width, 2 * width, 3, stride=2, padding=1),
            torch.nn.GELU(),
            torch.nn.AdaptiveAvgPool2d(1),
            torch.nn.Flatten(),
            torch.nn.Linear(2 * width, dim),
        )
        self.log_temperature = torch.nn.Parameter(torch.tensor(float(np.log(1 / 0.07))))

    def text_embedding(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        pooled = TextCondition(hidden, attention_mask).pooled()
        return torch.nn.functional.normalize(self.text_projection(pooled), dim=-1)

    def image_embedding(self, latents: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.normalize(self.image(latents), dim=-1)

    def loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(symmetric InfoNCE loss, share of pairs each side ranks first in the batch)."""
        text = self.text_embedding(batch["input_ids"], batch["attention_mask"])
        image = self.image_embedding(batch["latents"])
        logits = self.log_temperature.clamp(max=float(np.log(100.0))).exp() * text @ image.T
        target = torch.arange(len(text), device=text.device)
        loss = (
            torch.nn.functional.cross_entropy(logits, target) + torch.nn.functional.cross_entropy(logits.T, target)
        ) / 2
        hits = ((logits.argmax(1) == target).float().mean() + (logits.argmax(0) == target).float().mean()) / 2
        return loss, hits


def align_report_encoder(
    encoder_dir: Path,
    train_texts: Sequence[str],
    train_latents: Any,
    val_texts: Sequence[str],
    val_latents: Any,
    train_config: TrainConfig,
    runs_root: Path,
    data_hash: str,
    *,
    max_length: int | None = None,
    progress=None,
    stop_after: int | None = None,
) -> TrainingOutcome:
    """Second stage of the project's own encoder: contrastive report-image alignment on the
    training pairs (report text, VAE latent of its image), from the masked-language-model weights
    in ``encoder_dir``. MLM alone teaches which words go together; it barely separates "No
    pleural effusion." from "Small pleural effusion.", which the paired images tell apart.
    Validated by the contrastive loss and in-batch retrieval accuracy on val pairs."""
    start = ReportEncoder.from_pretrained(encoder_dir)
    tokenizer = start.tokenizer
    length = max_length or start.max_length
    run_dir = Path(runs_root) / run_key(
        "report_encoder_alignment", str(encoder_dir), train_config.identity(), data_hash, length
    )
    tokens = tokenizer(list(train_texts), padding="max_length", truncation=True, max_length=length, return_tensors="pt")
    val = tokenizer(list(val_texts), padding="max_length", truncation=True, max_length=length, return_tensors="pt")
    torch.manual_seed(train_config.seed)
    model = ReportImageAligner(copy.deepcopy(start.encoder).train().requires_grad_(True), train_latents.shape[1])
    sampler = EpochSampler(len(train_texts), train_config.batch_size, train_config.seed)

    def batches(step: int) -> dict[str, torch.Tensor]:
        picked = torch.from_numpy(sampler.indices(step))
        return {
            "input_ids": tokens["input_ids"][picked],
            "attention_mask": tokens["attention_mask"][picked],
            "latents": train_latents[picked],
        }

    def step_fn(network: torch.nn.Module, batch: dict[str, torch.Tensor], generator: torch.Generator):
        torch.manual_seed(int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device)))  # dropout
        return cast(ReportImageAligner, network).loss(batch)[0], {}

    @torch.no_grad()
    def evaluate(network: torch.nn.Module, step: int) -> dict[str, float]:
        device = next(network.parameters()).device
        network.eval()
        losses, hits = [], []
        for first in range(0, len(val_texts) - train_config.batch_size + 1, train_config.batch_size):
            rows = slice(first, first + train_config.batch_size)
            loss, hit = cast(ReportImageAligner, network).loss(
                {
                    "input_ids": val["input_ids"][rows].to(device),
                    "attention_mask": val["attention_mask"][rows].to(device),
                    "latents": val_latents[rows].to(device),
                }
            )
            losses.append(float(loss))
            hits.append(float(hit))
        network.train()
        return (
            {"val_contrastive_loss": float(np.mean(losses)), "val_retrieval_top1": float(np.mean(hits))}
            if losses
            else {}
        )

    trainer = Trainer(
        model,
        step_fn,
        batches,
        train_config,
        run_dir,
        batch_size_of=lambda batch: int(batch["input_ids"].shape[0]),
        evaluate=evaluate,
        progress=progress,
    )
    model_dir = run_dir / "model"

    def save(result, folder: Path) -> None:
        ReportEncoder(tokenizer, result.ema_model.encoder).save_pretrained(folder)
        recorded = (
            json.loads((Path(encoder_dir) / ENCODER_FILE).read_text())
            if (Path(encoder_dir) / ENCODER_FILE).exists()
            else {}
        )
        (folder / ENCODER_FILE).write_text(
            json.dumps(
                {**recorded, "alignment": {"step": result.final_step, "train_pairs": len(train_texts)}}, indent=2
            )
        )

    result = trainer.fit_and_save(model_dir, save, stop_after)
    return TrainingOutcome(
        "report_encoder", run_dir, model_dir, result.final_step, result.resumed_from, result.last_eval
    )


class ReportEncoder:
    """A tokenizer and a BERT-family encoder from a local folder, never from the network: the
    project's own pretrained encoder or any configured checkpoint (an MLM head, if saved, is
    dropped). Frozen: the text model reads its last hidden states."""

    def __init__(self, tokenizer, encoder: PreTrainedModel):
        self.tokenizer, self.encoder = tokenizer, encoder.eval().requires_grad_(False)

    @classmethod
    def from_pretrained(cls, folder: str | Path, device: torch.device | str = "cpu") -> ReportEncoder:
        folder = Path(folder)
        if not (folder / "config.json").exists():
            raise FileNotFoundError(
                f"{folder} holds no transformers model (no config.json): point the report "
                f"encoder at a local checkpoint folder, or let the pipeline pretrain its own"
            )
        tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        encoder = AutoModel.from_pretrained(str(folder), local_files_only=True, add_pooling_layer=False)
        return cls(tokenizer, encoder.to(device))

    def save_pretrained(self, folder: str | Path) -> None:
        self.encoder.save_pretrained(str(folder))
        self.tokenizer.save_pretrained(str(folder))

    @property
    def hidden_size(self) -> int:
        return int(self.encoder.config.hidden_size)

    @property
    def max_length(self) -> int:
        return min(int(self.tokenizer.model_max_length), int(self.encoder.config.max_position_embeddings))

    def token_counts(self, texts: Sequence[str]) -> np.ndarray:
        """Tokens per report (with [CLS] and [SEP], untruncated): how much ``max_length`` cuts off."""
        return token_counts(self.tokenizer, texts)

    @property
    def layer_count(self) -> int:
        return len(self.encoder.encoder.layer)

    @torch.no_grad()
    def encode(
        self, texts: Sequence[str], pad_to: int | None = None, batch_size: int = 256, layers: int | None = None
    ) -> TextCondition:
        """Reports -> token embeddings (N, L, H) and attention mask (N, L), what cross-attention
        reads. Padded to the longest report (or to ``pad_to``), truncated at :attr:`max_length`.
        The empty report is ``[CLS] [SEP]``: the null condition. ``layers``: the output of the
        first this many layers (default all; 0 is the embeddings)."""
        texts = list(texts)
        device = next(self.encoder.parameters()).device
        length = pad_to or min(self.max_length, int(self.token_counts(texts).max(initial=2)))
        hidden, masks = [], []
        for start in range(0, len(texts), batch_size):
            batch = self.tokenizer(
                texts[start : start + batch_size],
                padding="max_length",
                truncation=True,
                max_length=length,
                return_tensors="pt",
            )
            mask = batch["attention_mask"].to(device)
            out = self.encoder(
                input_ids=batch["input_ids"].to(device), attention_mask=mask, output_hidden_states=layers is not None
            )
            hidden.append(out.last_hidden_state if layers is None else out.hidden_states[layers])
            masks.append(mask)
        return TextCondition(torch.cat(hidden).float(), torch.cat(masks))

    def top_layers(self, count: int) -> torch.nn.ModuleList:
        """Trainable copies of the last ``count`` transformer layers."""
        if not 0 < count <= self.layer_count:
            raise ValueError(f"the encoder has {self.layer_count} layers; cannot train its last {count}")
        return copy.deepcopy(torch.nn.ModuleList(self.encoder.encoder.layer[-count:])).train().requires_grad_(True)

    def with_top_layers(self, layers: torch.nn.ModuleList) -> ReportEncoder:
        """This encoder with its last layers replaced by ``layers`` (trained ones)."""
        encoder = copy.deepcopy(self.encoder)
        for offset, layer in enumerate(layers, start=len(encoder.encoder.layer) - len(layers)):
            encoder.encoder.layer[offset] = copy.deepcopy(layer)
        return ReportEncoder(self.tokenizer, encoder.float())

    @staticmethod
    def run_layers(layers: torch.nn.ModuleList, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Transformer layers over hidden states, padding masked out (an additive (N, 1, 1, L)
        mask, which the eager and the SDPA attention both read)."""
        additive = (1.0 - mask[:, None, None, :].to(hidden.dtype)) * torch.finfo(hidden.dtype).min
        for layer in layers:
            out = layer(hidden, attention_mask=additive)
            hidden = out[0] if isinstance(out, tuple) else out
        return hidden


def token_counts(tokenizer, texts: Sequence[str]) -> np.ndarray:
    """Tokens per report (with [CLS] and [SEP], untruncated): how much a ``max_length`` cuts off."""
    return np.asarray([len(ids) for ids in tokenizer(list(texts))["input_ids"]])
