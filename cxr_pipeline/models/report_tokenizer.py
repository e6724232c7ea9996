"""The report tokenizer the project trains when no pretrained encoder is configured: BERT's
WordPiece (lower-cased, accents stripped, ``[CLS] ... [SEP]``), with a vocabulary chosen by a
rule that gives the same files for the same reports on every machine and in every process.

``tokenizers``' own WordPiece trainer is not used: it learns its merges through hash maps, so two
trainings on the same reports give different vocabularies (not only different ids), hence a
different encoder and a different text model each run. The vocabulary here is built from sorted
counts over the words that BERT's own normalizer and pre-tokenizer produce, every tie broken by the
token's text, and is then served by ``tokenizers``' WordPiece model (greedy longest match):

1. the special tokens, then every character seen, word-initial and as a ``##`` continuation;
2. whole words, most frequent first (three quarters of the room when they do not all fit);
3. up to a quarter of the room for the word-initial prefixes and ``##`` suffixes that save the
   most tokens over the words left out (or over all words, when every word fits), so a rare or
   unseen word is spelled in a few pieces instead of letter by letter.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

SPECIAL_TOKENS = {
    "pad_token": "[PAD]",
    "unk_token": "[UNK]",
    "cls_token": "[CLS]",
    "sep_token": "[SEP]",
    "mask_token": "[MASK]",
}
CONTINUATION = "##"
# Part of every pretraining run's key: a run folder made under another rule (or by the hash-ordered
# trainer) is never resumed with this one's vocabulary
VOCABULARY_RULE = "wordpiece-sorted-counts-1"
PIECE_SHARE = 4  # at most one part in this many of the room left after the alphabet goes to pieces


def _bert_tokenizer(vocabulary: dict[str, int]) -> Tokenizer:
    tokenizer = Tokenizer(
        models.WordPiece(vocabulary, unk_token=SPECIAL_TOKENS["unk_token"], continuing_subword_prefix=CONTINUATION)
    )
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True, strip_accents=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece(prefix=CONTINUATION)
    return tokenizer


def word_counts(texts: Iterable[str]) -> Counter[str]:
    """How often each word occurs, words as BERT's normalizer and pre-tokenizer cut them (the
    same cut the tokenizer makes when it encodes)."""
    cutter = _bert_tokenizer({SPECIAL_TOKENS["unk_token"]: 0})
    counts: Counter[str] = Counter()
    for text in texts:
        normalized = cutter.normalizer.normalize_str(text)
        counts.update(word for word, _ in cutter.pre_tokenizer.pre_tokenize_str(normalized))
    return counts


def _ranked(scores: dict[str, int], limit: int) -> list[str]:
    """The ``limit`` best by score, ties broken by the text: never by hash or insertion order."""
    return [token for token, _ in sorted(scores.items(), key=lambda item: (-item[1], item[0]))[: max(limit, 0)]]


def _affix_savings(words: dict[str, int]) -> dict[str, int]:
    """For each word-initial prefix and ``##`` suffix (2 characters or more) of ``words``: the
    tokens it would save over spelling those words letter by letter."""
    savings: Counter[str] = Counter()
    for word, count in words.items():
        for end in range(2, len(word)):
            savings[word[:end]] += count * (end - 1)
            savings[CONTINUATION + word[len(word) - end :]] += count * (end - 1)
    return dict(savings)


def wordpiece_vocabulary(counts: dict[str, int], vocab_size: int) -> list[str]:
    """The vocabulary, in id order, for words with these counts (see the module docstring)."""
    specials = list(SPECIAL_TOKENS.values())
    alphabet = sorted({word[0] for word in counts} | {CONTINUATION + c for word in counts for c in word[1:]})
    room = vocab_size - len(specials) - len(alphabet)
    if room < 0:
        raise ValueError(
            f"vocab_size {vocab_size} cannot hold the {len(specials)} special tokens and the "
            f"{len(alphabet)} characters of the reports: raise it to at least "
            f"{len(specials) + len(alphabet)}"
        )
    words = {word: count for word, count in counts.items() if len(word) > 1}
    kept = _ranked(words, room if len(words) <= room else room - room // PIECE_SHARE)
    # pieces serve the words left out or, when every word fits, words no report has used yet
    left_out = {word: count for word, count in words.items() if word not in set(kept)} or words
    taken = set(specials) | set(alphabet) | set(kept)
    affixes = {piece: saved for piece, saved in _affix_savings(left_out).items() if piece not in taken}
    return specials + alphabet + kept + _ranked(affixes, min(room // PIECE_SHARE, room - len(kept)))


def train_tokenizer(texts: Sequence[str], vocab_size: int, max_length: int) -> PreTrainedTokenizerFast:
    """A BERT-style WordPiece tokenizer for ``texts`` whose files depend on the texts alone."""
    vocabulary = wordpiece_vocabulary(word_counts(texts), vocab_size)
    tokenizer = _bert_tokenizer({token: index for index, token in enumerate(vocabulary)})
    cls, sep = SPECIAL_TOKENS["cls_token"], SPECIAL_TOKENS["sep_token"]
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{cls} $A {sep}",
        pair=f"{cls} $A {sep} $B:1 {sep}:1",
        special_tokens=[(cls, tokenizer.token_to_id(cls)), (sep, tokenizer.token_to_id(sep))],
    )
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, model_max_length=max_length, **SPECIAL_TOKENS)
