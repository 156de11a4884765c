"""Per-shard assets run over batches of shards.

Every per-shard asset carries ``BackfillPolicy.multi_run(compute.shards_per_run)``: a UI backfill
over N shards launches about N / shards_per_run runs, the sensor and ``metarater run`` launch the
same batches (a run over a partition-key range). Inside a run the asset walks its shards one at a
time, reading each shard's inputs from its files and writing each output file atomically before
the next shard, so memory is one shard whatever the batch size; a model is loaded once per run.
"""
from __future__ import annotations

import time
from typing import Any, Callable, Iterable

import dagster as dg


def policy(shards_per_run: int) -> dg.BackfillPolicy:
    return dg.BackfillPolicy.multi_run(max_partitions_per_run=int(shards_per_run))


def shard_keys(context) -> list[str]:
    """The shard partitions of this run (one, or a range of a batched run), in pool order."""
    if context.has_partition_key_range:
        return list(context.partition_keys)
    return [context.partition_key]


def for_each_shard(context, fn: Callable[[str], Any]) -> dict[str, Any]:
    """``{shard: fn(shard)}`` over the run's shards, logging progress; a shard that raises stops
    the run (the CLI then retries the batch's shards one by one, so only the bad one fails)."""
    keys = shard_keys(context)
    out = {}
    t0 = time.perf_counter()
    step = max(1, len(keys) // 4)
    for i, k in enumerate(keys):
        out[k] = fn(k)
        if len(keys) > 1 and ((i + 1) % step == 0 or i + 1 == len(keys)):
            context.log.info(f"{i + 1}/{len(keys)} shards ({time.perf_counter() - t0:.1f}s)")
    return out


def combine_checks(checks: dict[str, dg.AssetCheckResult]) -> dg.AssetCheckResult:
    """One check result for a batched run: passed only if every shard passed; each failing
    shard's problems in the metadata under its key."""
    first = next(iter(checks.values()))
    if len(checks) == 1:
        return first
    failed = {k: c for k, c in checks.items() if not c.passed}
    md: dict[str, Any] = {"shards": len(checks), "failed_shards": ", ".join(sorted(failed)) or "none"}
    for k, c in list(failed.items())[:20]:
        for name, v in (c.metadata or {}).items():
            md[f"{k}: {name}"] = v
    return dg.AssetCheckResult(asset_key=first.asset_key, check_name=first.check_name, passed=not failed,
                               metadata=md)


def total(values: Iterable[dict], key: str) -> int:
    return int(sum(v.get(key, 0) for v in values))
