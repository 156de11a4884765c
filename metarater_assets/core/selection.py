"""The weight vectors of a selection: sampled (flat Dirichlet), keyed and validated.

Normalisation, combined scores and the global cut over the pool live in ``core/pool.py`` (and
``core/scan.py`` for the streaming passes over the pool files): each formula once.
"""
from __future__ import annotations

import hashlib
import json
from typing import Mapping, Sequence

import numpy as np

SELECTION_VERSION = "1"


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
