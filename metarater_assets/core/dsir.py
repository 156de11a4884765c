"""DSIR hashed n-gram importance (Xie et al., 2023), as Meta-rater uses it.

Features: lower-cased WordPunct tokens (``\\w+|[^\\w\\s]+``), their unigrams and bigrams, hashed
into ``buckets`` buckets (10,000 by default) with xxh3-64, an unsalted hash, so results never
depend on the interpreter (Python's own ``hash`` is salted). A bigram's hash combines its two
unigram hashes with a fixed odd multiplier, so every token is hashed once.

Distributions: bucket counts, **add-one (Laplace) smoothed** -- the choice of the DSIR paper and its
``data-selection`` package. Add-one keeps every bucket's probability positive (a bucket never seen
in a small target sample must not give ``-inf``) and, with 10,000 buckets against millions of
feature occurrences in the pool, moves the pool distribution by a negligible amount; for the much
smaller target samples it is the prior that keeps rare buckets from dominating.

Score: ``log p_target(x) - log p_raw(x)`` under the bag-of-n-grams model, **divided by the number of
n-gram features of the document** (a per-feature log-likelihood ratio). The raw sum grows with
document length, so after the pool min-max normalisation the few longest documents would take
the whole [0, 5] range; the per-feature mean keeps the score about *what* a document contains.
Empty documents (no features) score 0.0 (no evidence either way).

The raw (pool) counts are a sum of per-shard counts, so a new shard adds its counts without
re-reading any other shard.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import textkernels

#: 2: a document's score is the sum of its own features alone (``np.add.reduceat``), no longer a
#: difference of a running sum over the batch, so it is the same bits whatever batch it is scored in
DSIR_VERSION = "2"
DEFAULT_BUCKETS = 10_000
_MIX = np.uint64(0x9E3779B97F4A7C15)


def doc_buckets(texts, buckets: int = DEFAULT_BUCKETS) -> tuple[np.ndarray, np.ndarray]:
    """Bucket ids of all features of all documents (a list of str or an Arrow string column), and
    per-document offsets (len n+1). Per document: its unigram buckets, then its bigram buckets.
    Computed by the compiled kernel ``textkernels.dsir_buckets`` (xxh3-64 of each token's UTF-8)."""
    return textkernels.dsir_buckets(texts, buckets, _MIX)


def count_buckets(texts, buckets: int = DEFAULT_BUCKETS) -> np.ndarray:
    """Feature counts per bucket over a set of documents (int64, length ``buckets``)."""
    flat, _ = doc_buckets(texts, buckets)
    return np.bincount(flat, minlength=buckets).astype(np.int64)


def log_probs(counts: np.ndarray) -> np.ndarray:
    """Add-one smoothed log probabilities of a bucket count vector."""
    c = counts.astype(np.float64) + 1.0
    return np.log(c) - np.log(c.sum())


@dataclass(frozen=True)
class DsirModel:
    """Per-bucket log-ratio weights, one vector per target."""

    buckets: int
    weights: dict[str, np.ndarray]  # target name -> log p_target - log p_raw, per bucket

    @classmethod
    def fit(cls, raw_counts: np.ndarray, target_counts: dict[str, np.ndarray]) -> "DsirModel":
        lp_raw = log_probs(raw_counts)
        return cls(
            buckets=len(raw_counts),
            weights={name: log_probs(c) - lp_raw for name, c in target_counts.items()},
        )

    def score(self, texts) -> dict[str, np.ndarray]:
        """Per-feature mean log-likelihood ratio of each document under each target."""
        flat, offsets = doc_buckets(texts, self.buckets)
        n_feat = np.diff(offsets)
        out: dict[str, np.ndarray] = {}
        has = n_feat > 0
        starts = offsets[:-1][has]  # segments between non-empty documents' starts: each one's features
        for name, w in self.weights.items():
            sums = np.zeros(len(n_feat))
            if len(starts):
                sums[has] = np.add.reduceat(w[flat], starts)
            out[name] = np.divide(sums, n_feat, out=np.zeros(len(n_feat)), where=has)
        return out
