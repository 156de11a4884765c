"""Stage 'pool': one index file per shard (every raw score, tokens, a sampling hash) with its
summary, and the pool statistics merged from those summaries.

``shard_index[shard]`` joins a shard's score files and token counts into one file (the only
per-shard file a pool-level pass opens) and stores the shard's ``ShardSummary`` (exact counts,
extremes and moments per score, KLL sketches, per-source counts) in its Parquet footer.
``score_stats`` merges the summaries (footers only), takes a seeded hash sample for the Spearman
heatmap and fixes the pool: the shards it covers, their totals and the normalisation every later
step reads.
"""

import hashlib
import itertools
import json

import numpy as np
import pyarrow as pa

import dagster as dg

from . import identity
from .batched import combine_checks, for_each_shard
from .core import pool as cp, scan, stats, storage as st
from .partitions import shards
from .plots import png_metadata
from .scoring import score_asset
from .tokens import DIGEST_KEY
from resources import MetaraterConfig

GROUP = "pool"
SUMMARY_KEY = b"metarater.summary"
#: shard_index row groups: a pool pass reads a shard a row group's columns at a time
INDEX_ROW_GROUP = 65536


def score_sources(cfg) -> list[tuple[str, list[str]]]:
    """(per-shard asset, its score columns) for every active score, in score-name order."""
    from .core.config import RATERS

    out = []
    for r in cfg.raters:
        if r == "rpv2":
            out.append(("rpv2_scores", list(RATERS["rpv2"])))
        elif r == "dsir":
            out.append(("dsir_scores", list(RATERS["dsir"])))
        elif r == "perplexity":
            out.append(("perplexity_scores", list(RATERS["perplexity"])))
        elif r == "precomputed":
            out.append(("precomputed_scores", list(cfg.precomputed_scores)))
    out += [(score_asset(n), [n]) for n in cfg.model_scores]
    return out


def index_schema(cfg) -> pa.Schema:
    return pa.schema([("doc_id", pa.string()), ("raw_row", pa.int64()), ("source", pa.string()),
                      ("n_tokens", pa.int64()), ("doc_hash", pa.uint64()),
                      *((n, pa.float64()) for _, names in score_sources(cfg) for n in names)])


def _digest_batch(h, table: pa.Table) -> None:
    """Feed one batch's values (not its buffers: a sliced batch shares them) to the digest."""
    for c in table.columns:
        if pa.types.is_string(c.type):
            v = c.to_pylist()
            h.update(np.array([len(x.encode()) if x is not None else -1 for x in v], dtype=np.int64).tobytes())
            h.update("".join(x for x in v if x is not None).encode())
        else:
            h.update(c.to_numpy(zero_copy_only=False).tobytes())


def build_shard_index(settings: MetaraterConfig, cfg, key: str, tracer: identity.Tracer,
                      out) -> tuple[cp.ShardSummary, list[str], str]:
    """Stream one shard's index into ``out`` (a ``ParquetStream``) batch by batch from its files,
    every input file checked against its record; returns (summary, problems, content digest: the
    index and the shard's token ids)."""
    files = settings.files
    sources = score_sources(cfg)
    streams = [tracer.batches(files, "raw_docs", key, ["doc_id", "source", "raw_row"]),
               tracer.batches(files, "doc_tokens", key, ["doc_id", "n_tokens"]),
               *(tracer.batches(files, asset, key, ["doc_id", *names]) for asset, names in sources)]
    labels = ["raw_docs", "doc_tokens", *(a for a, _ in sources)]
    problems: set[str] = set()
    h = hashlib.sha1(files_digest(files.uri("doc_tokens", key)) or b"")
    summary = cp.ShardSummaryBuilder(cfg.score_names)
    schema = index_schema(cfg)
    for docs, tok, *scores in itertools.zip_longest(*streams):
        # a batch is written only when every file has it, with the same documents in the same order
        bad = [lab for lab, t in zip(labels[1:], [tok, *scores])
               if docs is None or t is None or not t.column("doc_id").equals(docs.column("doc_id"))]
        if bad:
            problems.update(f"{lab} not aligned with raw_docs" for lab in bad)
            continue
        cols = {"doc_id": docs.column("doc_id"), "raw_row": docs.column("raw_row"), "source": docs.column("source"),
                "n_tokens": tok.column("n_tokens"),
                "doc_hash": pa.array(cp.doc_hashes(key, docs.column("doc_id").to_pylist()), pa.uint64())}
        for (_, names), t in zip(sources, scores):
            cols.update((n, t.column(n)) for n in names)
        table = pa.table(cols, schema=schema)  # casts each column to the index's type
        _digest_batch(h, table)
        summary.add({n: table.column(n).to_numpy(zero_copy_only=False) for n in cfg.score_names},
                    table.column("n_tokens").to_numpy(), table.column("source").to_pylist())
        out.write(table)
    return summary.finish(), sorted(problems), h.hexdigest()


def files_digest(uri: str) -> bytes | None:
    """The content digest a per-shard file carries in its footer."""
    return st.file_metadata(uri).get(DIGEST_KEY)


def make_shard_index(cfg, policy):
    deps = ["raw_docs", "doc_tokens"] + ([a for a, _ in score_sources(cfg)] if cfg else [])
    names = list(cfg.score_names) if cfg else []

    @dg.asset(partitions_def=shards, group_name=GROUP, deps=deps, backfill_policy=policy,
              code_version=f"shard-index-{cp.POOL_VERSION}-{hashlib.sha1(json.dumps(names).encode()).hexdigest()[:8]}",
              check_specs=[dg.AssetCheckSpec("every_doc_every_score", asset="shard_index", blocking=True,
                                             description="every document of the shard has every active score "
                                                         "and its token count, all aligned")],
              description="One row per document of a shard: doc_id, raw_row, source, n_tokens, a 64-bit "
                          "sampling hash and every raw score; the shard's summary (counts, min/max, "
                          "moments, KLL sketches, sources) in the Parquet footer. The only per-shard file "
                          "a pool-level pass reads.")
    def shard_index(context: dg.AssetExecutionContext, settings: MetaraterConfig):
        cfg_ = settings.load()
        tracer = identity.for_run(context, settings, cfg_)

        def one(key):
            ident = tracer.identity("shard_index", key)
            with settings.files.stream("shard_index", key, index_schema(cfg_).with_metadata(identity.footer(ident)),
                                       row_group_size=INDEX_ROW_GROUP) as out:
                summary, problems, digest = build_shard_index(settings, cfg_, key, tracer, out)
                out.footer({SUMMARY_KEY: json.dumps(summary.to_dict()).encode(), DIGEST_KEY: digest.encode()})
            # a failed check is recorded with the shard: nothing downstream reads it until it is fixed
            context.log_event(tracer.observation("shard_index", key, ident, ok=not problems))
            return out.rows, dg.AssetCheckResult(
                asset_key="shard_index", check_name="every_doc_every_score", passed=not problems,
                metadata={"docs": out.rows, "problems": "; ".join(problems) or "none"})

        done = for_each_shard(context, one)
        yield dg.MaterializeResult(metadata={"docs": sum(n for n, _ in done.values()), "shards": len(done)})
        yield combine_checks({k: c for k, (_, c) in done.items()})

    return shard_index


def read_summary(uri: str) -> tuple[cp.ShardSummary, str, str | None]:
    """(summary, content digest, identity) from a shard index file's footer."""
    meta = st.file_metadata(uri)
    if SUMMARY_KEY not in meta or DIGEST_KEY not in meta:
        raise ValueError(f"{uri} has no summary in its footer: re-materialise shard_index")
    ident = meta.get(identity.FOOTER)
    return cp.ShardSummary.from_dict(json.loads(meta[SUMMARY_KEY])), meta[DIGEST_KEY].decode(), \
        ident.decode() if ident else None


QUANTILES = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)


@dg.asset(io_manager_key="json_io_manager", group_name=GROUP, code_version=f"score-stats-{cp.POOL_VERSION}",
          deps=[dg.AssetDep("shard_index", partition_mapping=dg.AllPartitionMapping())],
          description="The pool: which shards it holds, documents and tokens, per score count / nulls / "
                      "min / max / mean / std (exact, merged from the shards' summaries) and quantiles "
                      "(KLL), the normalisation every later step reads, histograms and the Spearman "
                      "correlation matrix (on a seeded hash sample) as plots.")
def score_stats(context: dg.AssetExecutionContext, settings: MetaraterConfig):
    cfg = settings.load()
    names = list(cfg.score_names)
    tracer = identity.for_run(context, settings, cfg)
    # exactly the active shards (registered, listed now, not in ingest.exclude), every index current
    # and its check passed: a shard that failed stops the pool until it is fixed or excluded
    ident = tracer.identity("score_stats")
    keys, merged, digests = tracer.active("shards"), cp.ShardSummary(), []
    excluded = [{"shard": k, "why": "ingest.exclude"} for k in tracer.sources.excluded]
    for k in keys:
        uri = settings.files.uri("shard_index", k)
        s, d, found = read_summary(uri)
        tracer.check_file("shard_index", k, found, uri)
        digests.append(d)
        merged = merged.merge(s)
    if not keys:
        raise dg.Failure("no shard has a complete index yet: run `metarater run --stage pool`", allow_retries=False)
    norm = cp.Normalisation.from_summary(merged, names, {n: cfg.orientation_of(n) == "low" for n in names})
    files = scan.PoolFiles(tuple(keys), tuple(settings.files.uri("shard_index", k) for k in keys))
    sample = scan.hash_sample(files, names, cfg.stats_sample_docs, seed=0, total_docs=merged.docs)
    cols = {n: sample.column(n).to_numpy(zero_copy_only=False) for n in names}
    sp_names, M = stats.spearman_matrix(cols)
    rows = []
    for n in names:
        s = merged.scores[n]
        q = s.quantiles(QUANTILES)
        rows.append({"score": n, "count": s.count, "nulls": s.nulls, "min": s.min if s.count else None,
                     "max": s.max if s.count else None, "mean": s.mean, "std": s.std,
                     **{f"q{int(x * 100):02d}": v for x, v in zip(QUANTILES, q)}})
    out = {"docs": merged.docs, "tokens": merged.tokens, "shards": len(keys), "keys": keys, "excluded": excluded,
           "scores": rows, "normalisation": norm.to_dict(), "sources": merged.sources,
           "spearman": {"names": sp_names, "matrix": np.nan_to_num(M, nan=0.0).round(6).tolist(),
                        "sample_docs": sample.num_rows}}
    art = settings.artifacts_uri
    md = {"docs": merged.docs, "tokens": merged.tokens, "shards": len(keys), "excluded_shards": len(excluded),
          "summary": dg.MetadataValue.md(stats.md_table(rows, ["score", "count", "nulls", "min", "max", "mean",
                                                               "std", "q50"]))}
    from . import plots

    md.update(png_metadata(plots.histograms_png({n: merged.scores[n].histogram() for n in names}),
                           f"{art}/score_stats/histograms.png", "histograms"))
    md.update(png_metadata(plots.heatmap_png(sp_names, M), f"{art}/score_stats/spearman.png", "spearman"))
    # the pool's content (every shard's content digest) beside the identity, for the record
    out["content_digest"] = hashlib.sha1(json.dumps({"keys": keys, "digests": digests}, sort_keys=True).encode()).hexdigest()
    return identity.output(tracer, "score_stats", out, ident, md)


def pool_files(settings: MetaraterConfig, stats_out: dict, tokens: bool = False) -> scan.PoolFiles:
    """The pool ``score_stats`` fixed: its shards' index (and token) files, in pool order."""
    keys = tuple(stats_out["keys"])
    return scan.PoolFiles(keys, tuple(settings.files.uri("shard_index", k) for k in keys),
                          tuple(settings.files.uri("doc_tokens", k) for k in keys) if tokens else ())


def normalisation(stats_out: dict) -> cp.Normalisation:
    return cp.Normalisation.from_dict(stats_out["normalisation"])


def flipped(stats_out: dict, scores) -> dict:
    """``score_stats`` with ``scores`` flipped as well (``5 - s``) in its normalisation."""
    return {**stats_out, "normalisation": normalisation(stats_out).flipping(scores).to_dict()}


def oriented(settings: MetaraterConfig, cfg, stats_out: dict, tracer: identity.Tracer | None = None) -> dict:
    """``score_stats`` as every selection reads it: the scores with ``orientation: auto`` flipped where
    ``score_orientation`` decided ``low`` (nothing to do without auto scores)."""
    auto = cfg.auto_oriented
    if not auto:
        return stats_out
    uri = f"{settings.storage_uri}/score_orientation.json"
    if not st.exists(uri):
        raise dg.Failure(f"scores.orientation is auto for {list(auto)}, but score_orientation has not decided "
                         "them: materialise score_orientation (metarater run --stage proxies)", allow_retries=False)
    got = st.read_json(uri)
    if tracer is not None:
        tracer.check_json("score_orientation", got)
    decided = got["decided"]
    missing = [n for n in auto if n not in decided]
    if missing:
        raise dg.Failure(f"score_orientation has no decision for {missing}: re-materialise orientation_plan and "
                         "score_orientation", allow_retries=False)
    return flipped(stats_out, [n for n in auto if decided[n] == "low"])
