"""Pool statistics of the scores: summaries, Spearman correlations and plots (PNG bytes)."""
from __future__ import annotations

import io
from typing import Mapping

import numpy as np
from scipy.stats import spearmanr

QUANTILES = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)


def summarise(columns: Mapping[str, np.ndarray]) -> list[dict]:
    rows = []
    for name, v in columns.items():
        v = np.asarray(v, dtype=np.float64)
        f = v[np.isfinite(v)]
        row = {"score": name, "count": int(f.size), "nulls": int(v.size - f.size)}
        if f.size:
            row.update(min=float(f.min()), max=float(f.max()), mean=float(f.mean()),
                       std=float(f.std()))
            row.update({f"q{int(q * 100):02d}": float(x) for q, x in zip(QUANTILES, np.quantile(f, QUANTILES))})
        rows.append(row)
    return rows


def spearman_matrix(columns: Mapping[str, np.ndarray]) -> tuple[list[str], np.ndarray]:
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


def _png(fig, tight: bool = True) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80, bbox_inches="tight" if tight else None)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return buf.getvalue()


def histograms_png(columns: Mapping[str, np.ndarray]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(columns)
    cols = 4
    rows = max(1, (len(names) + cols - 1) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 2.6 * rows))
    for ax, name in zip(np.ravel(axes), names):
        v = np.asarray(columns[name], float)
        counts, edges = np.histogram(v[np.isfinite(v)], bins=40)
        ax.stairs(counts, edges, fill=True, color="#4c72b0")  # one artist, not 40 patches
        ax.set_title(name, fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in np.ravel(axes)[len(names):]:
        ax.axis("off")
    fig.subplots_adjust(hspace=0.5, wspace=0.3)
    return _png(fig, tight=False)


def heatmap_png(names: list[str], M: np.ndarray, title: str = "Spearman correlation") -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1 + 0.55 * len(names), 0.8 + 0.5 * len(names)))
    im = ax.imshow(M, vmin=-1, vmax=1, cmap="RdBu_r")
    ax.set_xticks(range(len(names)), [n.replace("rps_", "") for n in names], rotation=90, fontsize=7)
    ax.set_yticks(range(len(names)), [n.replace("rps_", "") for n in names], fontsize=7)
    for i in range(len(names)):
        for j in range(len(names)):
            if np.isfinite(M[i, j]):
                ax.text(j, i, f"{M[i, j]:.2f}", ha="center", va="center", fontsize=5)
    fig.colorbar(im, ax=ax, fraction=0.046)
    ax.set_title(title)
    return _png(fig)


def bar_png(labels: list[str], values: list[float], title: str) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 0.35 * len(labels) + 1))
    ax.barh(range(len(labels)), values, color="#55a868")
    ax.set_yticks(range(len(labels)), labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_title(title)
    fig.tight_layout()
    return _png(fig)


def scatter_png(x, y, xlabel: str, ylabel: str, title: str) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.scatter(x, y, s=12)
    lo, hi = float(min(min(x), min(y))), float(max(max(x), max(y)))
    ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    return _png(fig)


def curves_png(curves: Mapping[str, tuple[list[float], list[float]]], title: str, ylabel: str) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for label, (x, y) in curves.items():
        ax.plot(x, y, label=label)
    ax.set_xlabel("training tokens")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=7)
    return _png(fig)


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
