"""Stage 'curated': global threshold with the optimal weights, curated shards and a manifest."""

import collections
import datetime as _dt

import numpy as np
import pyarrow as pa
import yaml

import dagster as dg

from .core import dsir, proxy_lm, regression, selection, signals
from .core import storage as st
from .partitions import shards
from .proxies import pool_matrix
from resources import MetaraterConfig

GROUP = "curated"
SCORE_VERSIONS = {"rpv2": signals.SIGNALS_VERSION, "dsir": dsir.DSIR_VERSION,
                  "selection": selection.SELECTION_VERSION, "proxy": proxy_lm.PROXY_VERSION,
                  "regression": regression.REGRESSION_VERSION}


def resolve_weights(cfg, optimal: dict) -> tuple[np.ndarray, list[str], str]:
    names = list(optimal["names"])
    wf = cfg.curation.get("weights_file")
    if wf:
        fs, p = st.fs_and_path(wf)
        if not fs.exists(p):
            raise dg.Failure(f"curation.weights_file {wf!r} does not exist")
        with fs.open(p, "r") as f:
            user = yaml.safe_load(f) or {}
        try:
            return selection.validate_weights(user, names), names, f"file:{wf}"
        except ValueError as e:
            raise dg.Failure(f"curation.weights_file {wf}: {e}") from None
    return np.array([optimal["weights"][n] for n in names]), names, "optimal_weights"


@dg.asset(io_manager_key="parquet_io_manager", group_name=GROUP, code_version="curated-selection-1",
          description="Combined score of every pool document under the optimal weights and the one "
                      "global threshold for curation.fraction (of tokens or documents).")
def curated_selection(context: dg.AssetExecutionContext, pool_index: pa.Table, optimal_weights: dict,
                      settings: MetaraterConfig) -> pa.Table:
    cfg = settings.load()
    w, names, origin = resolve_weights(cfg, optimal_weights)
    normed = pool_matrix(pool_index, names)
    comb = selection.combined_score(normed, w)
    tokens = pool_index.column("n_tokens").to_numpy()
    sel = selection.select_top(comb, tokens, fraction=cfg.curation["fraction"],
                               by=cfg.curation["fraction_of"], token_budget=cfg.curation.get("token_budget"))
    context.add_output_metadata({"threshold": sel.threshold, "kept_docs": sel.docs,
                                 "kept_tokens": sel.tokens, "pool_docs": len(comb),
                                 "pool_tokens": int(tokens.sum()), "weights_from": origin})
    return pa.table({"shard": pool_index.column("shard"), "doc_id": pool_index.column("doc_id"),
                     "raw_row": pool_index.column("raw_row"), "source": pool_index.column("source"),
                     "n_tokens": pool_index.column("n_tokens"), "combined_score": pa.array(comb),
                     "kept": pa.array(sel.mask)}).replace_schema_metadata(
        {"threshold": repr(sel.threshold), "fraction": repr(cfg.curation["fraction"]),
         "fraction_of": cfg.curation["fraction_of"], "weights_from": origin})


@dg.asset(partitions_def=shards, io_manager_key="curated_io_manager", group_name=GROUP,
          code_version="curated-corpus-1",
          description="The kept documents of one shard, written under the curated output URI: "
                      "doc_id, text, source, combined_score, raw_shard, raw_row.")
def curated_corpus(context: dg.AssetExecutionContext, raw_docs: pa.Table,
                   curated_selection: pa.Table, settings: MetaraterConfig) -> pa.Table:
    key = context.partition_key
    import pyarrow.compute as pc

    mine = curated_selection.filter(pc.equal(curated_selection.column("shard"), key))
    if mine.num_rows != raw_docs.num_rows or mine.column("doc_id").to_pylist() != raw_docs.column("doc_id").to_pylist():
        raise dg.Failure(f"{key}: curated_selection does not match the shard's documents; "
                         "re-materialise pool_index and curated_selection")
    kept = np.asarray(mine.column("kept"))
    idx = pa.array(np.flatnonzero(kept))
    out = pa.table({"doc_id": raw_docs.column("doc_id").take(idx), "text": raw_docs.column("text").take(idx),
                    "source": raw_docs.column("source").take(idx),
                    "combined_score": mine.column("combined_score").take(idx),
                    "raw_shard": pa.array([key] * len(idx), pa.string()),
                    "raw_row": raw_docs.column("raw_row").take(idx)})
    md = {"kept_docs": out.num_rows, "shard_docs": raw_docs.num_rows}
    if settings.load().curation["format"] == "jsonl.zst":  # in addition to the Parquet file
        uri = f"{settings.curated_uri.rstrip('/')}/{key}.jsonl.zst"
        st.write_jsonl_zst(out, uri)
        md["jsonl_zst"] = dg.MetadataValue.path(uri)
    context.add_output_metadata(md)
    return out


@dg.asset(io_manager_key="curated_io_manager_json", group_name=GROUP, code_version="manifest-1",
          deps=["curated_corpus"],
          description="manifest.json next to the curated data: weights, regressor and proxy runs "
                      "behind them, score code versions, threshold, counts and tokens per shard "
                      "and per source, Dagster run id, time.")
def curated_manifest(context: dg.AssetExecutionContext, curated_selection: pa.Table,
                     optimal_weights: dict, regressor: dict, settings: MetaraterConfig) -> dict:
    cfg = settings.load()
    w, names, origin = resolve_weights(cfg, optimal_weights)
    sel = curated_selection.to_pydict()
    per_shard = collections.defaultdict(lambda: {"docs": 0, "tokens": 0, "pool_docs": 0, "pool_tokens": 0})
    per_source = collections.defaultdict(lambda: {"docs": 0, "tokens": 0, "pool_docs": 0, "pool_tokens": 0})
    for shard, src, n, kept in zip(sel["shard"], sel["source"], sel["n_tokens"], sel["kept"]):
        for d in (per_shard[shard], per_source[src]):
            d["pool_docs"] += 1
            d["pool_tokens"] += n
            if kept:
                d["docs"] += 1
                d["tokens"] += n
    meta = curated_selection.schema.metadata or {}
    kept_docs = sum(sel["kept"])
    manifest = {
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(),
        "dagster_run_id": context.run_id,
        "config": cfg.source,
        "weights": dict(zip(names, map(float, w))), "weights_from": origin,
        "regressor": {"model": regressor["best"], "cv": {m: {k: v for k, v in r.items() if k != "oof_pred"}
                                                         for m, r in regressor["cv"].items()},
                      "target": regressor["target"]},
        "proxy_runs": regressor["keys"],
        "predicted_loss": optimal_weights.get("predicted_loss"),
        "score_code_versions": SCORE_VERSIONS,
        "threshold": float(meta.get(b"threshold", b"nan")),
        "fraction": cfg.curation["fraction"], "fraction_of": cfg.curation["fraction_of"],
        "docs": int(kept_docs), "tokens": int(sum(n for n, k in zip(sel["n_tokens"], sel["kept"]) if k)),
        "pool_docs": len(sel["kept"]), "pool_tokens": int(sum(sel["n_tokens"])),
        "per_shard": {k: per_shard[k] for k in sorted(per_shard)},
        "per_source": {k: per_source[k] for k in sorted(per_source)},
        "files": [f"{settings.curated_uri.rstrip('/')}/{k}.parquet" for k in sorted(per_shard)],
        "format": cfg.curation["format"],
        **({"jsonl_zst_files": [f"{settings.curated_uri.rstrip('/')}/{k}.jsonl.zst" for k in sorted(per_shard)]}
           if cfg.curation["format"] == "jsonl.zst" else {}),
        "uri": settings.curated_uri,
    }
    context.add_output_metadata({"docs": manifest["docs"], "tokens": manifest["tokens"],
                                 "threshold": manifest["threshold"]})
    return manifest
