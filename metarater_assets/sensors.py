"""Sensors: new or changed files in METARATER_RAW_URI become shard partitions and ingest runs."""

import json

import dagster as dg

from .core import corpus
from .partitions import shards


def plan_new_shards(raw_uri: str, cursor: str | None, registered: set[str]):
    """(new keys, changed keys, new cursor) for the files under ``raw_uri``.

    The cursor maps partition key -> fingerprint (size + mtime/etag) of the file last seen.
    """
    seen: dict[str, str] = json.loads(cursor) if cursor else {}
    files = corpus.list_shards(raw_uri)
    new, changed = [], []
    for f in files:
        if f.key not in registered and f.key not in new:
            new.append(f.key)
        elif f.key in seen and seen[f.key] != f.fingerprint:
            changed.append(f.key)
        seen[f.key] = f.fingerprint
    return new, changed, json.dumps(seen, sort_keys=True)


def make_shard_sensor(raw_uri_getter, job):
    @dg.sensor(job=job, minimum_interval_seconds=30, default_status=dg.DefaultSensorStatus.STOPPED,
               description="Registers each new data file under METARATER_RAW_URI as a shard "
                           "partition and requests ingest + scoring for new or changed files.")
    def shard_sensor(context: dg.SensorEvaluationContext):
        registered = set(context.instance.get_dynamic_partitions(shards.name))
        try:
            new, changed, cursor = plan_new_shards(raw_uri_getter(), context.cursor, registered)
        except corpus.ShardError as e:
            return dg.SkipReason(str(e))
        if not new and not changed:
            context.update_cursor(cursor)
            return dg.SkipReason("no new or changed shard files")
        context.update_cursor(cursor)
        runs = [dg.RunRequest(partition_key=k, run_key=f"{k}:{json.loads(cursor)[k]}",
                              tags={"metarater/reason": "new" if k in new else "changed"})
                for k in new + changed]
        return dg.SensorResult(run_requests=runs,
                               dynamic_partitions_requests=[shards.build_add_request(new)] if new else [])

    return shard_sensor
