"""Backfills in batches: cheap per-shard assets accept a run over a range of shard partitions.

With ``BackfillPolicy.multi_run(max_partitions_per_run=8)`` a UI backfill over N shards launches
about N/8 runs instead of N. In such a run Dagster hands the asset ``{partition: input}`` for each
per-shard input, and the IO manager (``resources/storage.py``) writes ``{partition: output}`` back
one file per partition, each atomically; a single-partition run sees plain values as before.
"""

from typing import Any, Callable

import dagster as dg

#: cheap per-shard assets: up to 8 shards per backfill run
SHARD_BACKFILL = dg.BackfillPolicy.multi_run(max_partitions_per_run=8)


def is_batched(context: dg.AssetExecutionContext) -> bool:
    return context.has_partition_key_range and len(context.partition_keys) > 1


def per_partition(context: dg.AssetExecutionContext, value: Any) -> dict[str, Any]:
    """``{partition key: value}`` whether the run covers one shard or a range of them."""
    if is_batched(context):
        if not isinstance(value, dict) or set(value) != set(context.partition_keys):
            raise dg.Failure(f"a batched run over {len(context.partition_keys)} shards needs every shard's "
                             f"input; got {sorted(value) if isinstance(value, dict) else type(value).__name__}")
        return value
    return {context.partition_key: value}


def result(context: dg.AssetExecutionContext, parts: dict[str, Any]) -> Any:
    """The value to return: the one table, or ``{partition: table}`` in a batched run."""
    return parts if is_batched(context) else next(iter(parts.values()))


def combine_checks(checks: dict[str, dg.AssetCheckResult]) -> dg.AssetCheckResult:
    """One check result for a batched run: passed only if every shard passed; each failing
    shard's problems in the metadata under its key."""
    first = next(iter(checks.values()))
    if len(checks) == 1:
        return first
    failed = {k: c for k, c in checks.items() if not c.passed}
    md: dict[str, Any] = {"shards": len(checks), "failed_shards": ", ".join(sorted(failed)) or "none"}
    for k, c in failed.items():
        for name, v in (c.metadata or {}).items():
            md[f"{k}: {name}"] = v
    return dg.AssetCheckResult(check_name=first.check_name, passed=not failed, metadata=md)


def map_shards(context: dg.AssetExecutionContext, fn: Callable[..., Any], **inputs: Any) -> dict[str, Any]:
    """``fn(**per-shard inputs)`` for each shard of the run (non-shard inputs passed through)."""
    keys = context.partition_keys if is_batched(context) else [context.partition_key]
    split = {n: per_partition(context, v) for n, v in inputs.items() if v is not None}
    return {k: fn(**{n: v[k] for n, v in split.items()}) for k in keys}
