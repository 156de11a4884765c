"""Stage 'ingest': one raw shard file -> normalised documents + quarantine rows."""

import collections

import dagster as dg

from .core import corpus
from .partitions import shards
from resources import MetaraterConfig

INGEST_VERSION = "1"


@dg.multi_asset(
    outs={
        "raw_docs": dg.AssetOut(
            description="Normalised documents of one shard: doc_id, text, source, meta, raw_row.",
            io_manager_key="parquet_io_manager", code_version=INGEST_VERSION, group_name="ingest",
        ),
        "raw_quarantine": dg.AssetOut(
            description="Rows of the shard that could not be used: raw_row, reason, preview.",
            io_manager_key="parquet_io_manager", code_version=INGEST_VERSION, group_name="ingest",
        ),
    },
    partitions_def=shards,
    check_specs=[dg.AssetCheckSpec("rows_balance", asset="raw_docs", blocking=True,
                                   description="rows_in == rows_ok + rows_quarantined")],
    retry_policy=dg.RetryPolicy(max_retries=2, delay=2),
)
def raw_shard(context: dg.AssetExecutionContext, settings: MetaraterConfig):
    """Read one shard file through fsspec (JSONL, JSONL.gz, JSONL.zst, Parquet)."""
    key = context.partition_key
    try:
        shard = corpus.find_shard(settings.raw_uri, key)
        context.log.info(f"reading {shard.uri}")
        res = corpus.read_shard(shard.uri, shard.name)
    except corpus.ShardError as e:  # the file itself is bad: retrying cannot help
        raise dg.Failure(description=f"ShardError: {e}", allow_retries=False) from e
    reasons = collections.Counter(res.quarantine.column("reason").to_pylist())
    meta = {"file": shard.uri, "fingerprint": shard.fingerprint, "rows_in": res.rows_in,
            "rows_ok": res.rows_ok, "rows_quarantined": res.rows_quarantined,
            "quarantine_reasons": dict(reasons)}
    context.log.info(f"{key}: {res.rows_ok} ok, {res.rows_quarantined} quarantined {dict(reasons)}")
    yield dg.Output(res.docs, "raw_docs", metadata=meta,
                    data_version=dg.DataVersion(shard.fingerprint))
    yield dg.Output(res.quarantine, "raw_quarantine", metadata={"rows": res.rows_quarantined,
                                                                "reasons": dict(reasons)})
    balanced = res.rows_in == res.rows_ok + res.rows_quarantined
    yield dg.AssetCheckResult(check_name="rows_balance", asset_key="raw_docs", passed=balanced,
                              metadata={"rows_in": res.rows_in, "rows_ok": res.rows_ok,
                                        "rows_quarantined": res.rows_quarantined})
