"""Figures (PNG bytes) for asset metadata: shown inline in the UI, a copy kept in storage."""
from __future__ import annotations

import base64
import io
from typing import Mapping

import numpy as np

import dagster as dg

from .core import storage as st


def png_metadata(png: bytes, uri: str, alt: str) -> dict:
    with st.atomic_open(uri, "wb") as f:
        f.write(png)
    b64 = base64.b64encode(png).decode()
    return {f"{alt} (plot)": dg.MetadataValue.md(f"![{alt}](data:image/png;base64,{b64})"),
            f"{alt} (file)": dg.MetadataValue.path(uri)}


def _png(fig, tight: bool = True) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80, bbox_inches="tight" if tight else None)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return buf.getvalue()


def histograms_png(hists: Mapping[str, tuple[np.ndarray, np.ndarray]]) -> bytes:
    """One panel per score from (counts, edges) histograms (merged from per-shard sketches)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(hists)
    cols = 4
    rows = max(1, (len(names) + cols - 1) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 2.6 * rows))
    for ax, name in zip(np.ravel(axes), names):
        counts, edges = hists[name]
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
