"""The report encoder: a WordPiece tokenizer built on reports (the same files in every process), a
small BERT pretrained on them by masked-language modelling, and one loading path for it and for any
local BERT-family checkpoint."""

import hashlib
import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoTokenizer, BertConfig, BertModel, BertTokenizerFast

from cxr_pipeline.models.report_encoder import (
    ReportEncoder,
    ReportEncoderConfig,
    build_encoder,
    masked_batch,
    masked_lm_loss,
    masked_lm_scores,
    pretrain_report_encoder,
    token_counts,
)
from cxr_pipeline.models.report_tokenizer import train_tokenizer, word_counts, wordpiece_vocabulary
from cxr_pipeline.models.training import TrainConfig

SIDES, SIZES = ("right", "left"), ("small", "moderate", "large")
FINDINGS = ("pleural effusion", "pneumothorax", "consolidation in the lower lobe", "atelectasis at the base")


def reports() -> list[str]:
    positive = [
        f"{size.capitalize()} {side} {finding}." for size, side, finding in itertools.product(SIZES, SIDES, FINDINGS)
    ]
    negative = [
        f"No {a} or {b}. The heart size is normal."
        for a, b in itertools.permutations(("pneumothorax", "pleural effusion", "focal consolidation"), 2)
    ]
    return positive + negative + ["Heart size is normal. Lungs are clear.", "The lungs are clear without effusion."]


ENCODER = ReportEncoderConfig(vocab_size=200, hidden_size=32, layers=1, heads=2, intermediate_size=64, max_length=24)
TRAIN = TrainConfig(
    steps=100,
    batch_size=16,
    learning_rate=3e-3,
    warmup_steps=4,
    ema_decay=0.9,
    checkpoint_every=50,
    eval_every=50,
    log_every=10,
    device="cpu",
)


def test_the_tokenizer_round_trips_through_save_pretrained(tmp_path):
    tokenizer = train_tokenizer(reports(), vocab_size=200, max_length=24)
    ids = tokenizer("No pneumothorax or pleural effusion.")["input_ids"]
    assert ids[0] == tokenizer.cls_token_id and ids[-1] == tokenizer.sep_token_id
    assert tokenizer.unk_token_id not in ids  # every word of the corpus is in the vocabulary
    assert tokenizer.decode(ids, skip_special_tokens=True) == "no pneumothorax or pleural effusion."
    assert tokenizer("")["input_ids"] == [tokenizer.cls_token_id, tokenizer.sep_token_id]  # the null condition
    tokenizer.save_pretrained(str(tmp_path))
    loaded = AutoTokenizer.from_pretrained(str(tmp_path), local_files_only=True)
    for text in ("Moderate right pleural effusion.", "Unseen words: cardiomegaly!"):
        assert loaded(text)["input_ids"] == tokenizer(text)["input_ids"]
    assert loaded.mask_token == "[MASK]" and loaded.model_max_length == 24
    assert token_counts(loaded, ["Small left pneumothorax."]).tolist() == [
        len(loaded("Small left pneumothorax.")["input_ids"])
    ]


TOKENIZER_IN_A_FRESH_PROCESS = """
import json, sys
from cxr_pipeline.models.report_tokenizer import train_tokenizer
texts = json.loads(open(sys.argv[1]).read())
for vocab_size in (60, 400):  # words left out (pieces spell them), and every word kept
    train_tokenizer(texts, vocab_size, 24).save_pretrained(f"{sys.argv[2]}/{vocab_size}")
"""


def _folder_digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_the_tokenizer_files_are_the_same_in_every_process(tmp_path):
    """Two fresh interpreters with different hash seeds (Python's, and the per-process random
    state of the hash maps inside ``tokenizers``) write byte-identical tokenizer files."""
    (tmp_path / "reports.json").write_text(json.dumps(reports() * 3 + reports()[::2]))
    digests = []
    for seed in ("1", "2"):
        subprocess.run(
            [sys.executable, "-c", TOKENIZER_IN_A_FRESH_PROCESS, str(tmp_path / "reports.json"), str(tmp_path / seed)],
            check=True,
            env={**os.environ, "PYTHONHASHSEED": seed},
        )
        digests.append(_folder_digest(tmp_path / seed))
    assert {"60/tokenizer.json", "400/tokenizer.json", "400/tokenizer_config.json"} <= set(digests[0])
    assert digests[0] == digests[1]


def test_a_vocabulary_too_small_for_every_word_keeps_the_frequent_ones_and_spells_the_rest():
    counts = word_counts(reports())
    full, small = wordpiece_vocabulary(counts, 1000), wordpiece_vocabulary(counts, 60)
    assert len(small) == 60 and len(set(small)) == 60 and len(set(full)) == len(full)
    assert small[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    assert {w for w in counts if len(w) > 1} <= set(full)  # room for every word: all kept whole
    assert "pneumothorax" in small  # in 10 of 32 reports: kept whole
    assert "atelectasis" not in small  # in 6: left out, and the most tokens saved by pieces of it
    tokenizer = train_tokenizer(reports(), 60, 64)
    pieces = tokenizer.tokenize("Atelectasis. Left pneumothorax.")
    assert (
        pieces[-4:] == [".", "left", "pneumothorax", "."] and 1 < len(pieces) - 4 <= 3
    )  # a few pieces, not 11 letters
    ids = tokenizer("Atelectasis. Left pneumothorax.")["input_ids"]
    assert tokenizer.unk_token_id not in ids
    assert tokenizer.decode(ids, skip_special_tokens=True) == "atelectasis. left pneumothorax."
    assert tokenizer.tokenize("Atelectasis, left.")[2] == "[UNK]"  # a character no report used: that word unknown
    with pytest.raises(ValueError, match="cannot hold"):
        wordpiece_vocabulary(counts, 20)


def test_the_loss_from_the_masked_positions_alone_is_bert_for_masked_lm_s_own():
    tokenizer = train_tokenizer(reports(), ENCODER.vocab_size, ENCODER.max_length)
    ids = tokenizer(reports(), truncation=True, max_length=ENCODER.max_length)["input_ids"]
    torch.manual_seed(0)
    model = build_encoder(ENCODER, tokenizer).eval()  # no dropout: both forwards see the same network
    batch = masked_batch(tokenizer, ids, ENCODER.mlm_probability, seed=3)
    assert 0 < int((batch["labels"] != -100).sum()) < batch["labels"].numel()
    with torch.no_grad():
        own = model(**batch)
        torch.testing.assert_close(masked_lm_loss(model, batch), own.loss, atol=1e-5, rtol=0)
        scores = masked_lm_scores(model, batch)
    masked = batch["labels"] != -100
    accuracy = float((own.logits.argmax(-1) == batch["labels"])[masked].float().mean())
    assert scores["mlm_accuracy"] == pytest.approx(accuracy) and scores["mlm_loss"] == pytest.approx(
        float(own.loss), abs=1e-5
    )
    # and the gradient it trains with is the same
    model(**batch).loss.backward()
    expected = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    masked_lm_loss(model, batch).backward()
    got = {name: p.grad for name, p in model.named_parameters() if p.grad is not None}
    assert "cls.predictions.decoder.weight" in got and got.keys() == expected.keys()
    for name, grad in got.items():
        torch.testing.assert_close(grad, expected[name], atol=1e-5, rtol=1e-4)


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    runs = tmp_path_factory.mktemp("encoder")
    events = []
    # scored on the training reports themselves (about 37 masked tokens): a check that it learns, not of generalization
    outcome = pretrain_report_encoder(reports(), reports(), ENCODER, TRAIN, runs, "tiny", progress=events.append)
    return outcome, events, runs


def test_pretraining_learns_the_reports_and_saves_a_loadable_encoder(pretrained):
    outcome, events, _ = pretrained
    evals = [e.metrics for e in events if e.kind == "eval"]
    losses = [e.metrics["loss"] for e in events if e.kind == "step"]
    assert np.mean(losses[-2:]) < 0.7 * np.mean(losses[:2]), losses
    # chance is about 1 / 150 tokens; the same masks at every evaluation
    assert evals[-1]["val_mlm_accuracy"] > 0.2 and evals[-1]["val_mlm_loss"] < evals[0]["val_mlm_loss"]
    assert outcome.metrics["val_mlm_loss"] == evals[-1]["val_mlm_loss"]
    encoder = ReportEncoder.from_pretrained(outcome.model_dir)
    assert type(encoder.encoder).__name__ == "BertModel" and not encoder.encoder.training  # the MLM head is dropped
    text = encoder.encode(["Large right pneumothorax.", "", "No pleural effusion."])
    hidden, mask = text.hidden, text.mask
    assert hidden.shape[:2] == mask.shape and hidden.shape[-1] == ENCODER.hidden_size
    assert mask.sum(1).tolist()[1] == 2  # the empty report: [CLS] [SEP]
    # padding never changes a report's embeddings: the mask keeps the other reports out
    alone = encoder.encode(["No pleural effusion."]).hidden
    torch.testing.assert_close(hidden[2, : alone.shape[1]], alone[0], atol=1e-5, rtol=0)
    left = encoder.encode(["Large left pneumothorax."]).hidden
    # saved and read back through the same path, it encodes the same
    encoder.save_pretrained(outcome.run_dir / "copy")
    again = ReportEncoder.from_pretrained(outcome.run_dir / "copy").encode(["Large right pneumothorax."]).hidden
    torch.testing.assert_close(again[0], hidden[0, : again.shape[1]], atol=1e-6, rtol=0)
    assert not torch.allclose(left[0], hidden[0, : left.shape[1]])  # one word differs, so do the embeddings


def test_a_resumed_pretraining_ends_where_an_uninterrupted_one_does(tmp_path):
    first = pretrain_report_encoder(reports(), reports()[::3], ENCODER, TRAIN, tmp_path / "a", "tiny", stop_after=60)
    assert first.final_step == 60
    uninterrupted = pretrain_report_encoder(reports(), reports()[::3], ENCODER, TRAIN, tmp_path / "b", "tiny")
    resumed = pretrain_report_encoder(reports(), reports()[::3], ENCODER, TRAIN, tmp_path / "a", "tiny")
    assert resumed.resumed_from == 50 and resumed.final_step == TRAIN.steps  # from the checkpoint at 50
    ours, theirs = (load_file(o.model_dir / "model.safetensors") for o in (resumed, uninterrupted))
    assert ours.keys() == theirs.keys()
    for name in ours:
        torch.testing.assert_close(ours[name], theirs[name], rtol=0, atol=0)


def test_any_local_bert_checkpoint_loads_through_the_same_path(tmp_path):
    """A stand-in for a configured BioBERT: a WordPiece vocab.txt, a BertModel, save_pretrained."""
    words = sorted({w.strip(".,!").lower() for text in reports() for w in text.split()})
    (tmp_path / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n")
    tokenizer = BertTokenizerFast(vocab_file=str(tmp_path / "vocab.txt"))
    checkpoint = tmp_path / "biobert-like"
    tokenizer.save_pretrained(str(checkpoint))
    BertModel(
        BertConfig(
            vocab_size=len(tokenizer), hidden_size=48, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64
        )
    ).save_pretrained(str(checkpoint))
    text = ReportEncoder.from_pretrained(checkpoint).encode(["Small left pleural effusion.", "Lungs are clear."])
    hidden, mask = text.hidden, text.mask
    assert hidden.shape == (2, mask.shape[1], 48) and mask[0].sum() == 7  # [CLS] 5 words and the period [SEP]
    with pytest.raises(FileNotFoundError, match=r"no config\.json"):
        ReportEncoder.from_pretrained(tmp_path / "nothing-here")


def _masks_in_a_worker(seed: int) -> list[list[int]]:
    tokenizer = train_tokenizer(reports(), 120, 32)
    ids = tokenizer(reports()[:4])["input_ids"]
    return [masked_batch(tokenizer, ids, 0.5, seed)["labels"].tolist() for _ in range(2)]


def test_masking_is_seeded_inside_a_subprocess_like_a_dagster_step():
    """transformers' own collator seed refuses to run outside a DataLoader worker in a child
    process; every Dagster step is one."""
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(1) as pool:
        first, second = pool.apply(_masks_in_a_worker, (3,))
    assert first == second  # the same seed, the same masks
