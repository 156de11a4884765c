"""`metarater explain DOC_ID`: a document's scores, weighted contributions and the verdict.

Reads the curated selection (small) and one shard's index file: the document's shard is given
with ``--shard`` or found by scanning the pool's id column (one column of each shard index)."""
from __future__ import annotations

import numpy as np

from .core import packs, pool as cp, scan, storage as st
from resources import Settings, ShardFiles


def explain(settings: Settings, doc_id: str, shard: str | None = None) -> str:
    base = settings.storage_uri
    for need in ("score_stats.json", "curated_selection.json", "optimal_weights.json"):
        if not st.exists(f"{base}/{need}"):
            return f"{doc_id}: not found (no {need} yet: run `metarater run --stage curated`)"
    stats = st.read_json(f"{base}/score_stats.json")
    sel = st.read_json(f"{base}/curated_selection.json")
    opt = st.read_json(f"{base}/optimal_weights.json")
    files = ShardFiles(base)
    if shard is not None:
        import pyarrow.compute as pc

        ids = files.read("shard_index", shard, ["doc_id"]).column("doc_id")
        hits = [(shard, int(r)) for r in np.flatnonzero(np.asarray(pc.equal(ids, doc_id)))]
    else:
        pf = scan.PoolFiles(tuple(stats["keys"]), tuple(files.uri("shard_index", k) for k in stats["keys"]))
        hits = scan.find_doc(pf, doc_id)
    if not hits:
        return f"{doc_id}: not found in the pool ({stats['docs']} documents in {stats['shards']} shards)"
    norm = cp.Normalisation.from_dict(sel["normalisation"])
    names = list(norm.names)
    w = np.asarray(sel["weights"])
    cut = cp.Cut.from_dict(sel["cut"])
    out = []
    for key, row in hits:
        t = files.read("shard_index", key).slice(row, 1)
        raw = {n: t.column(n).to_numpy(zero_copy_only=False) for n in names}
        normed = norm.matrix(raw)[0]
        units = cp.combined_units(norm.units(raw), cp.weight_units(w))
        # the verdict of the whole shard's row (the tie break needs the row's position)
        whole = files.read("shard_index", key, names)
        c_all = cp.combined_units(norm.units({n: whole.column(n).to_numpy(zero_copy_only=False) for n in names}),
                                  cp.weight_units(w))
        kept = bool(cut.keep(key, c_all)[row])
        raw_row = t.column("raw_row")[0].as_py()
        members = packs.pack_members_of(files.schema("raw_docs", key))
        where = f"row={raw_row}"
        if members:  # a pack of small files: the document's own file and row
            (member,), (file_row,) = packs.locate(members, [raw_row])
            where = f"file={member['name']} row={file_row}"
        out.append(f"{doc_id}  shard={key} {where} source={t.column('source')[0].as_py()} "
                   f"tokens={t.column('n_tokens')[0].as_py()}")
        out.append(f"{'score':50s} {'raw':>12s} {'norm[0,5]':>10s} {'weight':>8s} {'contrib':>8s}")
        contrib = normed * w
        for j in np.argsort(-contrib):
            v = raw[names[j]][0]
            out.append(f"{names[j]:50s} {v:12.5g} {normed[j]:10.4f} {w[j]:8.4f} {contrib[j]:8.4f}")
        verdict = "KEPT" if kept else "DROPPED"
        rule = (f"token budget {sel['token_budget']}" if sel.get("token_budget")
                else f"fraction {sel['fraction']} of {sel['fraction_of']}")
        out.append(f"combined score {cp.to_score(units)[0]:.4f} vs threshold {cut.threshold_score:.4f} -> {verdict} "
                   f"({rule}, weights from {sel['weights_from']})")
        ho = opt.get("heldout_spearman")
        out.append(f"weights: {opt['model']} regressor (CV Spearman {opt['cv_spearman']:.3f}"
                   + (f", held-out {ho:.3f}" if ho is not None else "") + f") fitted on "
                   f"{len(opt['proxy_runs'])} proxy runs; predicted loss {opt['predicted_loss']:.4f} "
                   f"(90% CI {opt['ci90'][0]:.4f}..{opt['ci90'][1]:.4f})")
        out.append("proxy runs: " + ", ".join(opt["proxy_runs"][:8]) + (" ..." if len(opt["proxy_runs"]) > 8 else ""))
    return "\n".join(out)
