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


def map_shards(context: dg.AssetExecutionContext, fn: Callable[[Any], Any], shard_input: Any) -> dict[str, Any]:
    """``{shard: fn(that shard's input)}`` for each shard of the run: ``shard_input`` is the value of
    a per-shard input (``{partition: value}`` in a batched run)."""
    if not is_batched(context):
        return {context.partition_key: fn(shard_input)}
    if not isinstance(shard_input, dict) or set(shard_input) != set(context.partition_keys):
        raise dg.Failure(f"a batched run over {len(context.partition_keys)} shards needs every shard's input; "
                         f"got {sorted(shard_input) if isinstance(shard_input, dict) else type(shard_input).__name__}")
    return {k: fn(shard_input[k]) for k in context.partition_keys}
