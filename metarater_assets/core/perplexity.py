"""Fluency as perplexity under an n-gram model of clean reference text (CCNet's idea, as in the
``ccnet_perplexity`` signal RedPajama-V2 ships beside its quality signals).

CCNet scores every document with a 5-gram KenLM model trained on Wikipedia; RPv2 ships that
perplexity per document. This is the same idea at the scale of one pipeline step: a **word bigram
model with interpolated Kneser-Ney-style absolute discounting**, trained on the reference texts the
config names, with no external model or binary.

Tokens are DSIR's (lower-cased ``\\w+|[^\\w\\s]+``, xxh3-64 hashed by the compiled kernel), hashed
into ``buckets`` buckets (2^20 by default: with a reference of a few million tokens, collisions are
rare). For a document of tokens w_1..w_n:

    p(w_1)          = p_uni(w_1)
    p(w_i | w_i-1)  = max(c(w_i-1 w_i) - D, 0) / c(w_i-1 .)  +  D * N1+(w_i-1 .) / c(w_i-1 .) * p_uni(w_i)
                      (a context never seen in the reference: p_uni(w_i))
    p_uni(w)        = (c(w) + 1) / (N + buckets)                       (add-one, never zero)

with ``c(w_i-1 .)`` the number of bigrams starting with w_i-1 and ``N1+(w_i-1 .)`` the number of
distinct words seen after it. The score is the **mean negative log-likelihood per token, in nats**
(the log of the perplexity): lower is better. A document with no tokens scores null.

Why it is here: a document whose words are all real but out of order (word salad, spun or
machine-garbled text) keeps its unigram statistics, so DSIR's bag of n-grams, whose features are
averaged log *ratios*, barely moves, and of the RPv2 signals only terminal punctuation does. Its
bigrams are unlikely under any model of fluent text, so its perplexity rises. The controlled
benchmark (bench/controlled.py) measures this.
"""
from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from . import dsir

#: 1: the bigram model above (version of the model and of the score's definition)
PERPLEXITY_VERSION = "1"
SCORE = "ngram_log_perplexity"
DEFAULT_BUCKETS = 1 << 20
DEFAULT_DISCOUNT = 0.75


def _layout(flat: np.ndarray, offsets: np.ndarray):
    """DSIR's layout (per document: n unigram buckets, then n-1 bigram buckets) as flat arrays:
    every token's bucket, and per bigram its bucket, its first and second word's buckets and its
    document; and n per document."""
    lens = np.diff(offsets).astype(np.int64)
    n = (lens + 1) // 2
    doc = np.repeat(np.arange(len(lens)), lens)
    start = offsets[:-1].astype(np.int64)[doc]
    pos = np.arange(len(flat), dtype=np.int64) - start
    is_uni = pos < n[doc]
    big = ~is_uni
    first = (start + pos - n[doc])[big]  # index of each bigram's first word
    flat = flat.astype(np.int64)
    return flat[is_uni], flat[big], flat[first], flat[first + 1], doc[big], n


@dataclass(frozen=True)
class BigramModel:
    buckets: int
    discount: float
    unigram: np.ndarray  # c(w), int64
    context: np.ndarray  # c(w .), int64
    bigram: np.ndarray  # c(w v) by the bigram's bucket, int64
    followers: np.ndarray  # N1+(w .), int64

    @classmethod
    def fit(cls, texts, buckets: int = DEFAULT_BUCKETS, discount: float = DEFAULT_DISCOUNT) -> "BigramModel":
        """Counts of a reference: ``texts`` is an iterable of batches (lists of str or Arrow
        string columns), so a large reference is read a batch at a time."""
        if not 0.0 < discount < 1.0:
            raise ValueError(f"discount must be in (0, 1), got {discount}")
        uni = np.zeros(buckets, np.int64)
        ctx = np.zeros(buckets, np.int64)
        bi = np.zeros(buckets, np.int64)
        pairs: list[np.ndarray] = []
        for batch in texts:
            u, b, w1, _, _, _ = _layout(*dsir.doc_buckets(batch, buckets))
            uni += np.bincount(u, minlength=buckets)
            ctx += np.bincount(w1, minlength=buckets)
            bi += np.bincount(b, minlength=buckets)
            pairs.append(np.unique(w1 * buckets + b))
        followers = np.zeros(buckets, np.int64)
        if pairs:
            distinct = np.unique(np.concatenate(pairs))
            followers = np.bincount(distinct // buckets, minlength=buckets).astype(np.int64)
        return cls(buckets, float(discount), uni, ctx, bi, followers)

    @property
    def tokens(self) -> int:
        return int(self.unigram.sum())

    def digest(self) -> str:
        h = hashlib.sha1(f"{PERPLEXITY_VERSION}:{self.buckets}:{self.discount}".encode())
        for a in (self.unigram, self.context, self.bigram, self.followers):
            h.update(np.ascontiguousarray(a).tobytes())
        return h.hexdigest()

    def score(self, texts) -> np.ndarray:
        """Mean negative log-likelihood per token (nats) of each document; NaN where a document
        has no token."""
        flat, offsets = dsir.doc_buckets(texts, self.buckets)
        _, b, w1, w2, bdoc, n = _layout(flat, offsets)
        log_uni = np.log(self.unigram + 1.0) - np.log(float(self.unigram.sum()) + float(self.buckets))
        c1 = self.context[w1].astype(np.float64)
        seen = c1 > 0
        safe = np.where(seen, c1, 1.0)
        D = self.discount
        p = np.maximum(self.bigram[b] - D, 0.0) / safe + D * self.followers[w1] / safe * np.exp(log_uni[w2])
        logp = np.where(seen, np.log(np.where(seen, p, 1.0)), log_uni[w2])
        docs = len(n)
        total = np.bincount(bdoc, weights=logp, minlength=docs)  # each document's own bigrams, in order
        has = n > 0
        starts = offsets[:-1].astype(np.int64)[has]
        total[has] += log_uni[flat[starts].astype(np.int64)]
        out = np.full(docs, np.nan)
        out[has] = -total[has] / n[has]
        return out


_MODELS: OrderedDict = OrderedDict()


def fitted(key: str, make) -> BigramModel:
    """The model for ``key`` (the digest of its reference files and settings), fitted once per
    process: a batched run fits it once for all its shards."""
    if key in _MODELS:
        _MODELS.move_to_end(key)
        return _MODELS[key]
    model = make()
    _MODELS[key] = model
    while len(_MODELS) > 2:
        _MODELS.popitem(last=False)
    return model
