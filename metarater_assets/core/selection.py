"""From scores to one document score, and one global selection over the whole pool.

* Each score is min-max normalised over the pool and scaled to [0, 5] (Meta-rater's pipeline);
  a score that is constant over the pool carries no information and becomes 0. Null values
  (a signal the reference leaves undefined, e.g. entropy of a document with no words) become 0,
  the bottom of the scale.
* The combined score of a document is ``sum_i w_i * s_i``.
* A selection keeps the top of the pool by combined score, with one global threshold computed
  from pool-level arrays (never a per-shard top-k): either a fraction of documents, a fraction of
  tokens, or an absolute token budget. Ties are broken by pool order (shard, row), so a selection
  is deterministic.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

SELECTION_VERSION = "1"
SCALE = 5.0


def minmax_stats(columns: Mapping[str, np.ndarray]) -> dict[str, tuple[float, float]]:
    out = {}
    for name, v in columns.items():
        v = np.asarray(v, dtype=np.float64)
        finite = v[np.isfinite(v)]
        out[name] = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
    return out


def normalise(columns: Mapping[str, np.ndarray], stats: Mapping[str, tuple[float, float]],
              names: Sequence[str]) -> np.ndarray:
    """(n_docs, n_scores) matrix of pool-normalised scores in [0, 5]; nulls -> 0."""
    mats = []
    for name in names:
        v = np.asarray(columns[name], dtype=np.float64)
        lo, hi = stats[name]
        if hi > lo:
            z = (v - lo) / (hi - lo) * SCALE
        else:
            z = np.zeros_like(v)
        mats.append(np.clip(np.nan_to_num(z, nan=0.0, posinf=SCALE, neginf=0.0), 0.0, SCALE))
    return np.stack(mats, axis=1) if mats else np.zeros((0, 0))


def combined_score(normed: np.ndarray, weights: Sequence[float]) -> np.ndarray:
    w = np.asarray(weights, dtype=np.float64)
    if normed.shape[1] != len(w):
        raise ValueError(f"{len(w)} weights for {normed.shape[1]} scores")
    return normed @ w


@dataclass(frozen=True)
class Selection:
    mask: np.ndarray  # bool per pool document
    threshold: float  # combined score of the last kept document
    docs: int
    tokens: int


def select_top(combined: np.ndarray, tokens: np.ndarray, *, fraction: float | None = None,
               by: str = "tokens", token_budget: int | None = None) -> Selection:
    """Keep the top of the pool by ``combined`` score.

    ``fraction`` of documents (``by="docs"``) or of tokens (``by="tokens"``), or an absolute
    ``token_budget``; for token targets the document that reaches the target is kept.
    """
    n = len(combined)
    if n == 0:
        raise ValueError("empty pool")
    tokens = np.asarray(tokens, dtype=np.int64)
    order = np.lexsort((np.arange(n), -combined))  # score desc, then pool order
    if token_budget is not None:
        target = int(token_budget)
        by = "tokens"
    else:
        if fraction is None or not (0.0 < fraction <= 1.0):
            raise ValueError(f"fraction must be in (0, 1], got {fraction!r}")
        target = fraction * (tokens.sum() if by == "tokens" else n)
    if by == "docs":
        k = max(1, int(np.ceil(target - 1e-9)))
    elif by == "tokens":
        cum = np.cumsum(tokens[order])
        k = int(np.searchsorted(cum, target, side="left")) + 1
        k = min(max(k, 1), n)
    else:
        raise ValueError(f"by must be 'docs' or 'tokens', got {by!r}")
    mask = np.zeros(n, dtype=bool)
    mask[order[:k]] = True
    return Selection(mask=mask, threshold=float(combined[order[k - 1]]), docs=k,
                     tokens=int(tokens[order[:k]].sum()))


def sample_weights(n: int, k: int, seed: int) -> np.ndarray:
    """``n`` weight vectors from a flat Dirichlet (alpha = 1) over ``k`` scores."""
    if n < 1 or k < 1:
        raise ValueError(f"need n >= 1 and k >= 1 (got n={n}, k={k})")
    return np.random.default_rng(seed).dirichlet(np.ones(k), size=n)


def weights_key(names: Sequence[str], weights: Sequence[float], seed: int) -> str:
    """Stable partition key for (score names, weights, seed): the same vector twice is one key."""
    payload = json.dumps({"names": list(names), "w": [round(float(x), 12) for x in weights],
                          "seed": int(seed)}, sort_keys=True)
    return "w-" + hashlib.sha1(payload.encode()).hexdigest()[:16]


def validate_weights(weights: Mapping[str, float], names: Sequence[str], tol: float = 1e-6) -> np.ndarray:
    """A user-supplied weight dict as a vector over ``names``: known names, >= 0, sum 1."""
    unknown = sorted(set(weights) - set(names))
    if unknown:
        raise ValueError(f"weights for unknown scores {unknown}; active scores are {list(names)}")
    w = np.array([float(weights.get(n, 0.0)) for n in names])
    if (w < 0).any() or not np.isfinite(w).all():
        raise ValueError("weights must be finite and non-negative")
    if abs(w.sum() - 1.0) > tol:
        raise ValueError(f"weights must sum to 1 (they sum to {w.sum():.6g})")
    return w
