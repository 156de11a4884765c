"""Statistics of scores: Spearman correlations, score-table checks, Markdown tables."""
from __future__ import annotations

from typing import Mapping

import numpy as np

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


def score_table_problems(doc_ids: list[str], table_ids: list[str], columns: Mapping[str, list],
                         nullable: frozenset[str] | set[str]) -> dict[str, object]:
    """What is wrong with one shard's score table (empty dict = nothing)."""
    problems: dict[str, object] = {}
    if list(doc_ids) != list(table_ids):
        missing = len(set(doc_ids) - set(table_ids))
        problems["unscored_docs"] = missing
        problems["order_or_extra"] = len(table_ids) - len(doc_ids) + missing
    for name, values in columns.items():
        v = np.array([np.nan if x is None else x for x in values], dtype=np.float64)
        nulls = int(sum(x is None for x in values))
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
