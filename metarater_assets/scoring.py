"""Stage 'scores': per-shard RedPajama-V2 signals and DSIR importance, plus pool statistics."""

import time

import numpy as np
import pyarrow as pa

import dagster as dg

from .core import corpus, dsir, rater_training, raters, signals, stats
from .batched import SHARD_BACKFILL, combine_checks, map_shards, result
from .partitions import shards
from .plots import png_metadata
from resources import ComputeResource, MetaraterConfig

SCORE_GROUP = "scores"


def _score_table(doc_ids, cols: dict[str, list], ints=frozenset()) -> pa.Table:
    arrays = {"doc_id": pa.array(doc_ids, pa.string())}
    for name, v in cols.items():
        arrays[name] = pa.array(v, pa.int64() if name in ints else pa.float64())
    return pa.table(arrays)


def _check(doc_ids, table: pa.Table, names, nullable) -> dg.AssetCheckResult:
    cols = {n: table.column(n).to_pylist() for n in names}
    problems = stats.score_table_problems(doc_ids, table.column("doc_id").to_pylist(), cols, nullable)
    return dg.AssetCheckResult(check_name="scores_complete", passed=not problems,
                               metadata={"docs": len(doc_ids), **{k: str(v) for k, v in problems.items()}})


def _check_spec(asset: str) -> dg.AssetCheckSpec:
    return dg.AssetCheckSpec("scores_complete", asset=asset, blocking=True,
                             description="every ingested document scored; no NaN/inf; nulls only "
                                         "where the score's definition allows them")


@dg.asset(partitions_def=shards, io_manager_key="parquet_io_manager", group_name=SCORE_GROUP,
          code_version=f"rpv2-{signals.SIGNALS_VERSION}", check_specs=[_check_spec("rpv2_scores")],
          backfill_policy=SHARD_BACKFILL,
          description="The 11 RedPajama-V2 natural-language signals per document of one shard.")
def rpv2_scores(context: dg.AssetExecutionContext, raw_docs):
    def one(raw_docs: pa.Table):
        ids = raw_docs.column("doc_id").to_pylist()
        table = _score_table(ids, signals.compute_signals(raw_docs.column("text").to_pylist()),
                             signals.INTEGER_SIGNALS)
        return table, _check(ids, table, signals.SIGNAL_NAMES, signals.NULLABLE)

    yield from _emit(context, map_shards(context, one, raw_docs))


def _emit(context, done: dict):
    """Output (one table, or {shard: table} in a batched backfill run) + the combined check."""
    yield dg.Output(result(context, {k: t for k, (t, _) in done.items()}),
                    metadata={"docs": sum(t.num_rows for t, _ in done.values()), "shards": len(done)})
    yield combine_checks({k: c for k, (_, c) in done.items()})


@dg.asset(partitions_def=shards, io_manager_key="parquet_io_manager", group_name=SCORE_GROUP,
          code_version=f"dsir-counts-{dsir.DSIR_VERSION}", backfill_policy=SHARD_BACKFILL,
          description="Hashed unigram+bigram feature counts of one shard (summed into the pool "
                      "distribution, so a new shard never re-reads the others).")
def dsir_counts(context: dg.AssetExecutionContext, raw_docs, settings: MetaraterConfig):
    cfg = settings.load()

    def one(raw_docs: pa.Table) -> pa.Table:
        counts = dsir.count_buckets(raw_docs.column("text").to_pylist(), cfg.dsir.buckets)
        return pa.table({"count": pa.array(counts, pa.int64())})

    return result(context, map_shards(context, one, raw_docs))


@dg.asset(io_manager_key="parquet_io_manager", group_name=SCORE_GROUP,
          code_version=f"dsir-model-{dsir.DSIR_VERSION}",
          ins={"dsir_counts": dg.AssetIn(partition_mapping=dg.AllPartitionMapping(), metadata={"allow_missing_partitions": True})},
          description="DSIR log-ratio weights per bucket: log p_target - log p_raw for each target "
                      "(books, wiki, math); p_raw from the pool's summed shard counts. Refit on "
                      "request, not on every new shard (see README).")
def dsir_model(context: dg.AssetExecutionContext, dsir_counts: dict[str, pa.Table],
               settings: MetaraterConfig) -> pa.Table:
    cfg = settings.load()
    raw = sum(np.asarray(t.column("count")) for t in dsir_counts.values())
    targets = {}
    for name, uri in cfg.dsir.targets.items():
        docs = corpus.read_documents(uri)
        targets[name] = dsir.count_buckets(docs.column("text").to_pylist(), cfg.dsir.buckets)
        context.log.info(f"target {name}: {docs.num_rows} docs, {int(targets[name].sum())} features")
    model = dsir.DsirModel.fit(raw, targets)
    context.add_output_metadata({"pool_shards": len(dsir_counts), "pool_features": int(raw.sum()),
                                 "targets": ", ".join(targets)})
    return pa.table({f"dsir_{n}": pa.array(w) for n, w in model.weights.items()})


def load_dsir_model(table: pa.Table) -> dsir.DsirModel:
    weights = {n.removeprefix("dsir_"): np.asarray(table.column(n)) for n in table.column_names}
    return dsir.DsirModel(buckets=table.num_rows, weights=weights)


@dg.asset(partitions_def=shards, io_manager_key="parquet_io_manager", group_name=SCORE_GROUP,
          code_version=f"dsir-{dsir.DSIR_VERSION}", check_specs=[_check_spec("dsir_scores")],
          backfill_policy=SHARD_BACKFILL,
          description="DSIR importance per document: dsir_books, dsir_wiki, dsir_math.")
def dsir_scores(context: dg.AssetExecutionContext, raw_docs, dsir_model: pa.Table):
    model = load_dsir_model(dsir_model)

    def one(raw_docs: pa.Table):
        ids = raw_docs.column("doc_id").to_pylist()
        scored = model.score(raw_docs.column("text").to_pylist())
        table = _score_table(ids, {f"dsir_{n}": v for n, v in scored.items()})
        return table, _check(ids, table, [f"dsir_{n}" for n in scored], frozenset())

    yield from _emit(context, map_shards(context, one, raw_docs))


@dg.asset(partitions_def=shards, io_manager_key="parquet_io_manager", group_name=SCORE_GROUP,
          code_version=f"model-{raters.RATERS_VERSION}", check_specs=[_check_spec("model_scores")],
          pool="metarater_gpu",
          description="Model-rater scores (PRRC, QuRating, FineWeb-Edu, WanjuanCC, or any HF "
                      "sequence classifier in the registry) for one shard; one column per active "
                      "score in model_raters.scores (none: doc_id only).")
def model_scores(context: dg.AssetExecutionContext, raw_docs: pa.Table, prrc_rater: dict,
                 settings: MetaraterConfig, compute: ComputeResource):
    cfg = settings.load()
    specs = cfg.rater_specs()
    if cfg.trained_scores:
        if not prrc_rater.get("enabled"):
            raise dg.Failure("the PRRC rater is not trained yet: materialise prrc_rater first", allow_retries=False)
        trained = rater_training.specs_for(prrc_rater["models"], max_tokens=int(prrc_rater.get("max_tokens", 512)))
        specs.update({n: trained[n] for n in cfg.trained_scores})
    comp = compute.resolve()
    device = "cuda" if comp.accelerator == "gpu" else "cpu"
    dtype = "bf16" if comp.precision.startswith("bf16") else None
    ids = raw_docs.column("doc_id").to_pylist()
    texts = raw_docs.column("text").to_pylist()
    cols = {}
    for group in raters.group_by_model(specs):
        try:
            rater = raters.HFRater(group[0], device=device, dtype=dtype)
            t = time.perf_counter()
            out = rater.score_heads(texts, [s.head for s in group], progress=_quarters(context, group[0].model))
        except raters.RaterLoadError as e:
            raise dg.Failure(str(e), allow_retries=False) from e
        for j, s in enumerate(group):
            cols[s.score] = out[:, j].tolist()
        context.log.info(f"{', '.join(s.score for s in group)} ({group[0].model}): "
                         f"{len(texts) / (time.perf_counter() - t):.1f} docs/s on {device}")
    cols = {n: cols[n] for n in cfg.model_scores}
    table = _score_table(ids, cols)
    yield dg.Output(table, metadata={"docs": len(ids), "scores": ", ".join(cols) or "none"})
    yield _check(ids, table, list(cols), frozenset())


def _quarters(context, name: str):
    """A progress callback that logs at each quarter of the documents."""
    last = [0]

    def progress(done: int, total: int) -> None:
        q = 4 * done // max(total, 1)
        if q > last[0]:
            last[0] = q
            context.log.info(f"{name}: {done}/{total} docs")

    return progress


def pool_columns(parts: dict[str, pa.Table]) -> tuple[list[str], dict[str, np.ndarray]]:
    """Concatenate per-shard score tables (sorted by shard key) into pool columns."""
    keys = sorted(parts)
    tables = [parts[k] for k in keys]
    names = [c for c in tables[0].column_names if c != "doc_id"] if tables else []
    cols = {}
    for n in names:
        arr = pa.chunked_array([t.column(n) for t in tables]).cast(pa.float64())
        cols[n] = arr.to_numpy(zero_copy_only=False)
    return keys, cols


@dg.asset(io_manager_key="parquet_io_manager", group_name=SCORE_GROUP,
          ins={"rpv2_scores": dg.AssetIn(partition_mapping=dg.AllPartitionMapping(), metadata={"allow_missing_partitions": True}),
               "dsir_scores": dg.AssetIn(partition_mapping=dg.AllPartitionMapping(), metadata={"allow_missing_partitions": True}),
               "model_scores": dg.AssetIn(partition_mapping=dg.AllPartitionMapping(), metadata={"allow_missing_partitions": True})},
          code_version="score-stats-1",
          description="Pool statistics per score (count, min, max, mean, std, quantiles) with "
                      "histograms and the Spearman correlation matrix as plots.")
def score_stats(context: dg.AssetExecutionContext, rpv2_scores: dict[str, pa.Table],
                dsir_scores: dict[str, pa.Table], model_scores: dict[str, pa.Table],
                settings: MetaraterConfig) -> pa.Table:
    _, cols = pool_columns(rpv2_scores)
    for part in (dsir_scores, model_scores):
        cols.update(pool_columns(part)[1])
    summary = stats.summarise(cols)
    names, M = stats.spearman_matrix(cols)
    art = settings.artifacts_uri
    md = {"docs": int(len(next(iter(cols.values())))), "scores": len(cols),
          "summary": dg.MetadataValue.md(_md_table(summary, ["score", "count", "nulls", "min", "max", "mean", "std", "q50"]))}
    md.update(png_metadata(stats.histograms_png(cols), f"{art}/score_stats/histograms.png", "histograms"))
    md.update(png_metadata(stats.heatmap_png(names, M), f"{art}/score_stats/spearman.png", "spearman"))
    context.add_output_metadata(md)
    table = pa.Table.from_pylist(summary)
    corr = {f"rho_{n}": pa.array(M[:, i]) for i, n in enumerate(names)}
    for n, arr in corr.items():
        table = table.append_column(n, arr)
    return table


def _md_table(rows: list[dict], cols: list[str]) -> str:
    def fmt(v):
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    head = "| " + " | ".join(cols) + " |\n|" + "---|" * len(cols) + "\n"
    return head + "\n".join("| " + " | ".join(fmt(r.get(c, "")) for c in cols) + " |" for r in rows)
