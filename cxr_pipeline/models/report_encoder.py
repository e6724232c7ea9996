"""The report encoder of text-conditional generation: a BERT-family model and its tokenizer.

One loading path serves every encoder: a local folder read with ``AutoTokenizer`` /
``AutoModel`` and ``local_files_only=True``, so nothing is ever downloaded. The folder is either
a pretrained biomedical checkpoint a user configures (BioBERT, CXR-BERT, PubMedBERT, ...) or the
small encoder this project pretrains when none is configured: a WordPiece tokenizer trained on the
training split's reports (``tokenizers``) and a small BERT pretrained on them by masked-language
modelling (``BertForMaskedLM``), both written with ``save_pretrained``.

The diffusion model attends to the encoder's last hidden states with the attention mask; the
empty report (``""``, just ``[CLS] [SEP]``) is the null condition of classifier-free guidance.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import (AutoModel, AutoTokenizer, BertConfig, BertForMaskedLM, DataCollatorForLanguageModeling,
                          PreTrainedTokenizerFast)

from ..data.atomic import atomic_folder
from .batches import EpochSampler
from .training import TrainConfig, Trainer, TrainingOutcome, run_key

SPECIAL_TOKENS = {"pad_token": "[PAD]", "unk_token": "[UNK]", "cls_token": "[CLS]", "sep_token": "[SEP]",
                  "mask_token": "[MASK]"}
ENCODER_FILE = "report_encoder.json"  # beside the weights: what the project's own pretraining recorded


@dataclass(frozen=True)
class ReportEncoderConfig:
    """The project's own encoder: small enough to pretrain in CPU minutes on a few thousand reports."""

    vocab_size: int = 2000  # WordPiece vocabulary, special tokens included
    hidden_size: int = 128
    layers: int = 2
    heads: int = 4
    intermediate_size: int = 256
    max_length: int = 64  # tokens per report, [CLS] and [SEP] included
    mlm_probability: float = 0.15  # BERT's masking rate: 80% [MASK], 10% random, 10% kept


def train_tokenizer(texts: Sequence[str], vocab_size: int, max_length: int) -> PreTrainedTokenizerFast:
    """A BERT-style WordPiece tokenizer (lower-cased, accents stripped) trained on ``texts``. The
    ``tokenizers`` trainer breaks frequency ties in hash order, so two trainings can differ in
    token ids (and, with ties at the vocabulary limit, in tokens): a training run keeps the one it
    made first (:func:`pretrain_report_encoder`)."""
    tokenizer = Tokenizer(models.WordPiece(unk_token=SPECIAL_TOKENS["unk_token"]))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True, strip_accents=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS.values()),
                                        show_progress=False)
    tokenizer.train_from_iterator(list(texts), trainer)
    cls, sep = SPECIAL_TOKENS["cls_token"], SPECIAL_TOKENS["sep_token"]
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{cls} $A {sep}", pair=f"{cls} $A {sep} $B:1 {sep}:1",
        special_tokens=[(cls, tokenizer.token_to_id(cls)), (sep, tokenizer.token_to_id(sep))])
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, model_max_length=max_length, **SPECIAL_TOKENS)


def build_encoder(config: ReportEncoderConfig, tokenizer: PreTrainedTokenizerFast) -> BertForMaskedLM:
    """A small BERT with its masked-language-modelling head. The output layer is not tied to the
    input embeddings, so checkpoints are plain tensors (safetensors refuses shared ones)."""
    return BertForMaskedLM(BertConfig(vocab_size=len(tokenizer), hidden_size=config.hidden_size,
                                      num_hidden_layers=config.layers, num_attention_heads=config.heads,
                                      intermediate_size=config.intermediate_size,
                                      max_position_embeddings=config.max_length, pad_token_id=tokenizer.pad_token_id,
                                      tie_word_embeddings=False))


def masked_batch(tokenizer: PreTrainedTokenizerFast, token_ids: Sequence[Sequence[int]], probability: float,
                 seed: int) -> dict[str, torch.Tensor]:
    """Padded reports with BERT's masking, seeded: the same seed masks the same tokens (a resumed
    training replays its batches exactly)."""
    collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=probability, seed=seed)
    return dict(collator([{"input_ids": list(ids)} for ids in token_ids]))


@torch.no_grad()
def masked_lm_scores(model: BertForMaskedLM, batch: dict[str, torch.Tensor]) -> dict[str, float]:
    """Masked-token loss and accuracy (over the masked positions only)."""
    device = next(model.parameters()).device
    batch = {k: v.to(device) for k, v in batch.items()}
    out = model(**batch)
    masked = batch["labels"] != -100
    correct = (out.logits.argmax(-1) == batch["labels"])[masked].float().mean()
    return {"mlm_loss": float(out.loss), "mlm_accuracy": float(correct)}


def pretrain_report_encoder(train_texts: Sequence[str], val_texts: Sequence[str], config: ReportEncoderConfig,
                            train_config: TrainConfig, runs_root: Path, data_hash: str, *, progress=None,
                            stop_after: int | None = None) -> TrainingOutcome:
    """The tokenizer trained on ``train_texts``, then the BERT pretrained on them by masked-language
    modelling with the project's Trainer (checkpoints, exact resume, EMA), validated on
    ``val_texts`` (masked-token loss and accuracy, the same masks every time). The model folder
    holds the encoder and its tokenizer, loadable with :func:`load_report_encoder`."""
    texts = [t for t in train_texts if t.strip()]
    if not texts:
        raise ValueError("no non-empty training reports to pretrain the report encoder on")
    run_dir = Path(runs_root) / run_key("report_encoder", asdict(config), train_config.identity(), data_hash)
    tokenizer_dir = run_dir / "tokenizer"  # the run's own vocabulary: a resumed run reads it back
    if (tokenizer_dir / "tokenizer.json").exists():
        tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True)
    else:
        tokenizer = train_tokenizer(texts, config.vocab_size, config.max_length)
        with atomic_folder(tokenizer_dir) as tmp:
            tokenizer.save_pretrained(str(tmp))
    token_ids = tokenizer(texts, truncation=True, max_length=config.max_length)["input_ids"]
    val_ids = tokenizer([t for t in val_texts if t.strip()][:256], truncation=True, max_length=config.max_length)["input_ids"]
    torch.manual_seed(train_config.seed)  # the initial weights: the same run starts the same
    sampler = EpochSampler(len(token_ids), train_config.batch_size, train_config.seed)

    def batches(step: int) -> dict[str, torch.Tensor]:
        picked = sampler.indices(step)
        return masked_batch(tokenizer, [token_ids[i] for i in picked], config.mlm_probability,
                            train_config.seed * 1_000_003 + step)

    def step_fn(model: BertForMaskedLM, batch: dict[str, torch.Tensor], generator: torch.Generator):
        # BERT's dropout draws from the global generator: seed it from the step's own, so a resumed
        # run replays the same dropout masks
        torch.manual_seed(int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device)))
        return model(**batch).loss, {}

    def evaluate(model: torch.nn.Module, step: int) -> dict[str, float]:
        if not val_ids:
            return {}
        return {f"val_{k}": v for k, v in masked_lm_scores(model, masked_batch(
            tokenizer, val_ids, config.mlm_probability, seed=train_config.seed)).items()}

    trainer = Trainer(build_encoder(config, tokenizer), step_fn, batches, train_config, run_dir,
                      batch_size_of=lambda batch: int(batch["input_ids"].shape[0]), evaluate=evaluate,
                      progress=progress)
    model_dir = run_dir / "model"

    def save(result, folder: Path) -> None:
        result.ema_model.save_pretrained(str(folder))
        tokenizer.save_pretrained(str(folder))
        (folder / ENCODER_FILE).write_text(json.dumps({"config": asdict(config), "train_reports": len(texts),
                                                       "step": result.final_step, "vocabulary": len(tokenizer)},
                                                      indent=2))

    result = trainer.fit_and_save(model_dir, save, stop_after)
    return TrainingOutcome("report_encoder", run_dir, model_dir, result.final_step, result.resumed_from,
                           result.last_eval)


def load_report_encoder(folder: str | Path, device: torch.device | str = "cpu"):
    """(tokenizer, encoder) from a local folder, never from the network: the project's own
    pretrained encoder or any BERT-family checkpoint (the MLM head, if saved, is dropped)."""
    folder = Path(folder)
    if not (folder / "config.json").exists():
        raise FileNotFoundError(f"{folder} holds no transformers model (no config.json): point the report "
                                f"encoder at a local checkpoint folder, or let the pipeline pretrain its own")
    tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    encoder = AutoModel.from_pretrained(str(folder), local_files_only=True).to(device).eval()
    return tokenizer, encoder


@torch.no_grad()
def encode_reports(tokenizer, encoder, texts: Sequence[str], max_length: int | None = None,
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Reports -> (token embeddings (N, L, H), attention mask (N, L)): what cross-attention reads.
    Padded to the longest report in the batch, truncated at ``max_length`` (default: the
    tokenizer's own limit). The empty report is ``[CLS] [SEP]``: the null condition."""
    device = next(encoder.parameters()).device
    limit = max_length or min(int(tokenizer.model_max_length), int(encoder.config.max_position_embeddings))
    batch = tokenizer(list(texts), padding=True, truncation=True, max_length=limit, return_tensors="pt")
    mask = batch["attention_mask"].to(device)
    hidden = encoder(input_ids=batch["input_ids"].to(device), attention_mask=mask).last_hidden_state
    return hidden, mask


def token_counts(tokenizer, texts: Sequence[str]) -> np.ndarray:
    """Tokens per report (with [CLS] and [SEP], untruncated): how much a ``max_length`` cuts off."""
    return np.asarray([len(ids) for ids in tokenizer(list(texts))["input_ids"]])
