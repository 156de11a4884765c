"""Stage 'ingest': one raw shard file -> normalised documents + quarantine rows."""

import os
import tempfile

import dagster as dg

from .core import corpus
from .core.storage import StagedFile
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
    """Stream one shard file through fsspec (JSONL, JSONL.gz, JSONL.zst, Parquet) into Parquet."""
    key = context.partition_key
    with tempfile.TemporaryDirectory(prefix="metarater-ingest-") as tmp:
        docs_path, q_path = os.path.join(tmp, "docs.parquet"), os.path.join(tmp, "quarantine.parquet")
        try:
            shard = corpus.find_shard(settings.raw_uri, key)
            context.log.info(f"reading {shard.uri}")
            res = corpus.ingest_shard(shard.uri, shard.name, docs_path, q_path)
        except corpus.ShardError as e:  # the file itself is bad: retrying cannot help
            raise dg.Failure(description=f"ShardError: {e}", allow_retries=False) from e
        meta = {"file": shard.uri, "fingerprint": shard.fingerprint, "rows_in": res.rows_in,
                "rows_ok": res.rows_ok, "rows_quarantined": res.rows_quarantined,
                "quarantine_reasons": res.reasons}
        context.log.info(f"{key}: {res.rows_ok} ok, {res.rows_quarantined} quarantined {res.reasons}")
        # the IO manager moves each streamed file into place as the output is yielded
        yield dg.Output(StagedFile(docs_path, res.rows_ok), "raw_docs", metadata=meta,
                        data_version=dg.DataVersion(shard.fingerprint))
        yield dg.Output(StagedFile(q_path, res.rows_quarantined), "raw_quarantine",
                        metadata={"rows": res.rows_quarantined, "reasons": res.reasons})
    balanced = res.rows_in == res.rows_ok + res.rows_quarantined
    yield dg.AssetCheckResult(check_name="rows_balance", asset_key="raw_docs", passed=balanced,
                              metadata={"rows_in": res.rows_in, "rows_ok": res.rows_ok,
                                        "rows_quarantined": res.rows_quarantined})
