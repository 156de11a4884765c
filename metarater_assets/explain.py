"""`metarater explain DOC_ID`: a document's scores, weighted contributions and the verdict."""
from __future__ import annotations

import numpy as np
import pyarrow.compute as pc

from .core import selection, storage as st
from resources import Settings


def explain(settings: Settings, doc_id: str) -> str:
    base = settings.storage_uri
    for need in ("pool_index.parquet", "curated_selection.parquet", "optimal_weights.json"):
        if not st.exists(f"{base}/{need}"):
            return f"{doc_id}: not found (no {need} yet: run `metarater run --stage curated`)"
    pool = st.read_parquet(f"{base}/pool_index.parquet")
    sel = st.read_parquet(f"{base}/curated_selection.parquet")
    opt = st.read_json(f"{base}/optimal_weights.json")
    hits = np.flatnonzero(np.asarray(pc.equal(pool.column("doc_id"), doc_id)))
    if not len(hits):
        return f"{doc_id}: not found in the pool ({pool.num_rows} documents)"
    names = list(opt["names"])
    cols = {n: pool.column(n).to_numpy(zero_copy_only=False) for n in names}
    normed = selection.normalise(cols, selection.minmax_stats(cols), names)
    meta = sel.schema.metadata or {}
    threshold = float(meta.get(b"threshold", b"nan"))
    w = np.array([opt["weights"][n] for n in names])
    out = []
    for i in hits:
        kept = bool(sel.column("kept")[i].as_py())
        comb = float(sel.column("combined_score")[i].as_py())
        out.append(f"{doc_id}  shard={pool.column('shard')[i].as_py()} row={pool.column('raw_row')[i].as_py()} "
                   f"source={pool.column('source')[i].as_py()} tokens={pool.column('n_tokens')[i].as_py()}")
        out.append(f"{'score':50s} {'raw':>12s} {'norm[0,5]':>10s} {'weight':>8s} {'contrib':>8s}")
        contrib = normed[i] * w
        for j in np.argsort(-contrib):
            raw = cols[names[j]][i]
            out.append(f"{names[j]:50s} {raw:12.5g} {normed[i, j]:10.4f} {w[j]:8.4f} {contrib[j]:8.4f}")
        verdict = "KEPT" if kept else "DROPPED"
        out.append(f"combined score {comb:.4f} vs threshold {threshold:.4f} -> {verdict} "
                   f"(fraction {meta.get(b'fraction', b'?').decode()} of {meta.get(b'fraction_of', b'?').decode()}, "
                   f"weights from {meta.get(b'weights_from', b'?').decode()})")
        out.append(f"weights: {opt['model']} regressor (CV Spearman {opt['cv_spearman']:.3f}) fitted on "
                   f"{len(opt['proxy_runs'])} proxy runs; predicted loss {opt['predicted_loss']:.4f} "
                   f"(90% CI {opt['ci90'][0]:.4f}..{opt['ci90'][1]:.4f})")
        out.append("proxy runs: " + ", ".join(opt["proxy_runs"][:8]) + (" ..." if len(opt["proxy_runs"]) > 8 else ""))
    return "\n".join(out)
