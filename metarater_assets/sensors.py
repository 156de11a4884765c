"""Sensors, and what each one triggers (README "Automation" has the same table):

* ``shard_sensor`` (off by default; switch it on to watch ``METARATER_RAW_URI``): each tick lists
  the raw folder once (a fresh listing: object-store listing caches are dropped), registers new
  files as ``shards`` partitions (small files packed with ``ingest.pack_bytes``; at most
  ``max_new`` files per tick, the rest carried to the next tick by the cursor) and requests
  ``shard_job`` for them in batched runs of up to ``compute.shards_per_run`` shards (a
  partition-key range each), plus a run for each shard with a changed file.
* ``metarater_automation`` (running by default): Dagster's declarative automation. After new
  shards are indexed it refreshes the pool statistics, the curated selection, every curated shard
  and the manifest (``AutomationCondition`` on each asset, see ``defs._automation``).
"""
from __future__ import annotations

import base64
import json
import os
import zlib
from typing import Collection

import dagster as dg

from . import registry
from .core import corpus
from .partitions import shards
from .runs import run_assets

AUTOMATION_SENSOR = "metarater_automation"
RETRY_SENSOR = "shard_batch_retry"
#: on a retry run: the id of the failed batched run it retries
RETRY_OF = "metarater/retry_of"


def interval() -> int:
    """Seconds between sensor ticks (``METARATER_SENSOR_INTERVAL``, default 30)."""
    return int(os.environ.get("METARATER_SENSOR_INTERVAL", "30"))
MAX_NEW_PER_TICK = 2000
RANGE_START = "dagster/asset_partition_range_start"
RANGE_END = "dagster/asset_partition_range_end"


def _load_cursor(cursor: str | None) -> dict:
    if not cursor:
        return {"seen": {}, "pending": []}
    raw = json.loads(zlib.decompress(base64.b64decode(cursor)).decode()) if not cursor.startswith("{") else json.loads(cursor)
    return raw if "seen" in raw else {"seen": raw, "pending": []}


def _dump_cursor(state: dict) -> str:
    return base64.b64encode(zlib.compress(json.dumps(state, sort_keys=True).encode(), 6)).decode()


def plan_new_shards(raw_uri: str, cursor: str | None, order: list[str], members: dict[str, list[dict]],
                    max_new: int = MAX_NEW_PER_TICK, pack_bytes: int = 0, pack_max_files: int = 1000):
    """(registration, changed partitions, new cursor) for one tick.

    The registration (``registry.plan``) holds the new partitions for at most ``max_new`` new files
    (packed with ``pack_bytes``); the cursor (parsed once, zlib-compressed JSON) maps each file seen
    to its fingerprint (size + mtime/etag), so a changed file is found by a set lookup and its
    partition rerun, and carries the new files beyond ``max_new`` to the next tick.
    """
    state = _load_cursor(cursor)
    seen: dict[str, str] = state["seen"]
    files = corpus.list_shards(raw_uri, fresh=True)
    reg = registry.plan(files, order, members, pack_bytes, pack_max_files, max_new)
    owner, present, fresh = reg.owner(), reg.present, set(reg.new)
    hit = {owner[f.key] for f in files if f.key in seen and seen[f.key] != f.fingerprint and f.key in owner}
    changed = [p for p in reg.order if p in hit and p in present and p not in fresh]
    later = set(reg.pending)
    for f in files:
        if f.key not in later:  # the rest are seen next tick
            seen[f.key] = f.fingerprint
    return reg, changed, _dump_cursor({"seen": seen, "pending": sorted(later)})


def _ranges(keys: list[str], order: list[str], size: int) -> list[tuple[str, str, list[str]]]:
    """Consecutive runs of ``keys`` in partition order, at most ``size`` each: (start, end, keys)."""
    pos = {k: i for i, k in enumerate(order)}
    ks = sorted(keys, key=pos.__getitem__)
    out, cur = [], []
    for k in ks:
        if cur and (pos[k] != pos[cur[-1]] + 1 or len(cur) >= size):
            out.append((cur[0], cur[-1], cur))
            cur = []
        cur.append(k)
    if cur:
        out.append((cur[0], cur[-1], cur))
    return out


def make_shard_sensor(raw_uri_getter, job, shards_per_run: int = 64, max_new: int = MAX_NEW_PER_TICK,
                      pack_bytes: int = 0, pack_max_files: int = 1000):
    @dg.sensor(job=job, minimum_interval_seconds=interval(), default_status=dg.DefaultSensorStatus.STOPPED,
               name="shard_sensor",
               description="Registers each new data file under METARATER_RAW_URI as a shard partition (small "
                           "files packed with ingest.pack_bytes) and requests shard_job (ingest, scores, tokens, "
                           "shard index) for new or changed shards, in batched runs of up to "
                           "compute.shards_per_run shards.")
    def shard_sensor(context: dg.SensorEvaluationContext):
        order = list(context.instance.get_dynamic_partitions(shards.name))
        try:
            reg, changed, cursor = plan_new_shards(raw_uri_getter(), context.cursor, order,
                                                   registry.pack_members(context.instance, order), max_new,
                                                   pack_bytes, pack_max_files)
        except corpus.ShardError as e:
            return dg.SkipReason(str(e))
        context.update_cursor(cursor)
        new = reg.new
        if not new and not changed:
            return dg.SkipReason("no new or changed shard files")
        fps = {k: reg.fingerprint(k) for k in new + changed}
        runs = []
        for reason, keys in (("new", new), ("changed", changed)):
            for start, end, ks in _ranges(keys, reg.order, shards_per_run):
                digest = zlib.crc32("|".join(f"{k}:{fps.get(k, '')}" for k in ks).encode())
                tags = {"metarater/reason": reason, "metarater/shards": str(len(ks))}
                if start == end:
                    runs.append(dg.RunRequest(partition_key=start, run_key=f"{reason}:{start}:{fps.get(start)}", tags=tags))
                else:
                    runs.append(dg.RunRequest(run_key=f"{reason}:{start}..{end}:{digest:08x}",
                                              tags={**tags, RANGE_START: start, RANGE_END: end}))
        # the packs' member lists are recorded before the partitions are added (Dagster's order)
        return dg.SensorResult(run_requests=runs, asset_events=reg.events,
                               dynamic_partitions_requests=[shards.build_add_request(new)] if new else [])

    return shard_sensor


def make_automation_sensor():
    return dg.AutomationConditionSensorDefinition(
        AUTOMATION_SENSOR, target=dg.AssetSelection.all(), default_status=dg.DefaultSensorStatus.RUNNING,
        minimum_interval_seconds=interval(),
        # the tick launches its runs itself (batched by each asset's backfill policy): as a backfill
        # (Dagster's default) each refresh step also waited for the backfill daemon's 30 s tick
        emit_backfills=False,
        description="Declarative automation, running by default: refreshes the pool statistics, the "
                    "curated selection, the curated shards and the manifest after new shards are "
                    "indexed (and per-shard scores after a pool-level refit). Pool-level fits never "
                    "run by themselves.")


def retry_requests(instance: dg.DagsterInstance, run: dg.DagsterRun,
                   chain: Collection[str] | None = None) -> list[dg.RunRequest]:
    """One single-shard run request per shard of a failed run over a range of ``shards``; [] for a
    single-partition run, a range over another partition set, or a run of ``metarater run`` (which
    retries its batches itself).

    ``chain`` holds the job's assets: a failed run over a subset of them (a backfill of some
    per-shard assets, or a subset of the job) reruns that subset; a run over none of them (e.g.
    curated_corpus) is not the job's to retry. Each request's run key is the failed run's id and
    the shard, so the daemon launches it once whatever the ticks."""
    tags = run.tags
    start, end = tags.get(RANGE_START), tags.get(RANGE_END)
    if start is None or end is None or tags.get("metarater/cli") == "run":
        return []
    order = list(instance.get_dynamic_partitions(shards.name))
    pos = {k: i for i, k in enumerate(order)}
    if start not in pos or end not in pos:
        return []  # a range over proxy runs, or over shards since removed
    selection = None
    if chain is not None:
        mine = run_assets(instance, run)
        keys = [k for k in chain if k in mine]
        if not keys:
            return []  # e.g. a backfill of curated_corpus: not the job's assets
        if len(keys) < len(chain):
            selection = [dg.AssetKey(k) for k in keys]
    return [dg.RunRequest(partition_key=k, run_key=f"retry:{run.run_id}:{k}", asset_selection=selection,
                          tags={RETRY_OF: run.run_id, "metarater/reason": "retry", "metarater/shards": "1"})
            for k in order[pos[start]:pos[end] + 1]]


def make_batch_retry_sensor(shard_job, chain: Collection[str] | None = None):
    """``shard_batch_retry``: a failed batched run of ``shard_job``, or of an asset backfill over
    shards, comes back as one ``shard_job`` run per shard (``retry_requests``). ``chain``: the
    job's assets (``defs.shard_assets(cfg)``), to rerun only what the failed run was to
    materialise; without it each shard reruns the whole job."""
    @dg.run_failure_sensor(
        name=RETRY_SENSOR, request_job=shard_job, minimum_interval_seconds=interval(),
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Retries a failed run over a range of shards (a shard_sensor batch, or a UI backfill of "
                    "per-shard assets) shard by shard: one single-shard shard_job run each, so one bad file "
                    "fails alone. Single-shard runs are not retried.")
    def shard_batch_retry(context: dg.RunFailureSensorContext):
        requests = retry_requests(context.instance, context.dagster_run, chain)
        if not requests:
            return None  # None, not a SkipReason: the sensor goes on to the next failed run in this tick
        context.log.info(f"retrying run {context.dagster_run.run_id} shard by shard: {len(requests)} run(s)")
        return requests

    return shard_batch_retry
