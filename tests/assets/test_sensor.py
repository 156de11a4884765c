import shutil
import time

import dagster as dg

from metarater_assets.defs import shard_job
from metarater_assets.sensors import make_shard_sensor
from conftest import SAMPLE, write_small_shards


def _tick(sensor, instance, cursor):
    ctx = dg.build_sensor_context(instance=instance, cursor=cursor)
    result = sensor(ctx)
    return result, ctx.cursor


def _apply(instance, result):
    for req in result.dynamic_partitions_requests:
        instance.add_dynamic_partitions(req.partitions_def_name, list(req.partition_keys))


def test_second_tick_registers_only_new_files(tmp_path):
    raw = write_small_shards(tmp_path / "raw", n=5)
    sensor = make_shard_sensor(lambda: str(raw), shard_job)
    with dg.instance_for_test() as instance:
        r1, cursor = _tick(sensor, instance, None)
        assert sorted(r.partition_key for r in r1.run_requests) == ["shard-0000.jsonl.gz", "shard-0002.parquet"]
        _apply(instance, r1)
        # nothing new: skip
        r2, cursor = _tick(sensor, instance, cursor)
        assert isinstance(r2, dg.SkipReason)
        # a new file, a dot-file and a partial upload arrive
        shutil.copy(SAMPLE / "raw" / "shard-0004.jsonl", raw / "shard 0004 (copy).jsonl")
        (raw / ".hidden.jsonl").write_text("{}")
        (raw / "upload.jsonl.part").write_text("{}")
        r3, cursor = _tick(sensor, instance, cursor)
        keys = [r.partition_key for r in r3.run_requests]
        assert len(keys) == 1 and keys[0].startswith("shard_0004_copy_.jsonl-")
        assert list(r3.dynamic_partitions_requests[0].partition_keys) == keys
        _apply(instance, r3)
        assert len(instance.get_dynamic_partitions("shards")) == 3
        # a changed file is detected by its fingerprint (size / mtime)
        time.sleep(0.01)
        with open(raw / "shard-0002.parquet", "ab") as f:
            f.write(b"\0")
        r4, cursor = _tick(sensor, instance, cursor)
        assert [r.partition_key for r in r4.run_requests] == ["shard-0002.parquet"]
        assert r4.run_requests[0].tags["metarater/reason"] == "changed"
        assert not r4.dynamic_partitions_requests
