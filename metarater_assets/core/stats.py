"""Statistics of scores: Spearman correlations, score-table checks, Markdown tables."""
from __future__ import annotations

from typing import Mapping

import numpy as np
import pyarrow as pa

def spearman_matrix(columns: Mapping[str, np.ndarray]) -> tuple[list[str], np.ndarray]:
    from scipy.stats import spearmanr

    names = list(columns)
    M = np.column_stack([np.nan_to_num(np.asarray(columns[n], float), nan=np.nan) for n in names])
    k = len(names)
    out = np.eye(k)
    for i in range(k):
        for j in range(i + 1, k):
            ok = np.isfinite(M[:, i]) & np.isfinite(M[:, j])
            a, b = M[ok, i], M[ok, j]
            r = float(spearmanr(a, b).statistic) if ok.sum() > 2 and a.std() > 0 and b.std() > 0 else float("nan")
            out[i, j] = out[j, i] = r
    return names, out


def _arrow(values, typ) -> pa.ChunkedArray:
    if isinstance(values, pa.ChunkedArray):
        return values
    return pa.chunked_array([values if isinstance(values, pa.Array) else pa.array(list(values), typ)], typ)


def score_table_problems(doc_ids, table_ids, columns: Mapping[str, object],
                         nullable: frozenset[str] | set[str]) -> dict[str, object]:
    """What is wrong with one shard's score table (empty dict = nothing). Ids and columns are
    lists or Arrow arrays."""
    problems: dict[str, object] = {}
    doc_ids, table_ids = _arrow(doc_ids, pa.string()), _arrow(table_ids, pa.string())
    if not doc_ids.equals(table_ids):
        missing = len(set(doc_ids.to_pylist()) - set(table_ids.to_pylist()))
        problems["unscored_docs"] = missing
        problems["order_or_extra"] = len(table_ids) - len(doc_ids) + missing
    for name, values in columns.items():
        col = _arrow(values, pa.float64())
        nulls = col.null_count
        v = col.cast(pa.float64()).to_numpy()  # nulls read as nan
        bad = int((~np.isfinite(v)).sum()) - nulls
        if bad:
            problems[f"{name}: nan_or_inf"] = bad
        if nulls and name not in nullable:
            problems[f"{name}: unexpected_nulls"] = nulls
    return problems


def md_table(rows: list[dict], cols: list[str]) -> str:
    """A Markdown table of ``rows`` (the UI shows it in asset metadata)."""
    def fmt(v):
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    head = "| " + " | ".join(cols) + " |\n|" + "---|" * len(cols) + "\n"
    return head + "\n".join("| " + " | ".join(fmt(r.get(c, "")) for c in cols) + " |" for r in rows)


def paired_comparison(curated, other, *, n_boot: int = 10_000, seed: int = 0, alpha: float = 0.05,
                      sds: float = 2.0) -> dict:
    """Curated against another arm, paired by seed: the per-seed differences ``other - curated``
    (positive when curated has the lower loss), their mean and sample standard deviation, a
    percentile bootstrap interval of the mean (seeds resampled with replacement), and the verdict:
    ``better`` / ``worse`` when the mean is more than ``sds`` standard deviations of the
    differences away from zero and the interval excludes zero, else ``no difference shown``."""
    a = np.asarray(curated, float)
    b = np.asarray(other, float)
    if a.shape != b.shape or a.ndim != 1 or len(a) == 0:
        raise ValueError(f"paired comparison needs one loss per seed in both arms, got {a.shape} and {b.shape}")
    d = b - a
    n = len(d)
    mean = float(d.mean())
    sd = float(d.std(ddof=1)) if n > 1 else float("nan")
    rng = np.random.default_rng(seed)
    boots = d[rng.integers(0, n, size=(n_boot, n))].mean(axis=1)
    lo, hi = (float(x) for x in np.quantile(boots, [alpha / 2, 1 - alpha / 2]))
    in_sds = mean / sd if n > 1 and sd > 0 else (float("inf") * np.sign(mean) if n > 1 and mean else float("nan"))
    if n < 2:
        verdict = "no difference shown"  # one seed: no spread to judge a difference against
    elif mean > 0 and in_sds > sds and lo > 0:
        verdict = "better"
    elif mean < 0 and -in_sds > sds and hi < 0:
        verdict = "worse"
    else:
        verdict = "no difference shown"
    return {"diffs": d.tolist(), "mean": mean, "sd": sd, "in_sds": float(in_sds), "ci": [lo, hi],
            "ci_level": 1 - alpha, "seeds": n, "verdict": verdict}
