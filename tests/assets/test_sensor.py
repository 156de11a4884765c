import gzip
import json
import shutil
import time

import dagster as dg
import pyarrow.parquet as pq

from metarater_assets.core import packs
from metarater_assets.core.config import load_config
from metarater_assets.defs import all_assets, build_resources
from metarater_assets.sensors import RANGE_END, RANGE_START, make_shard_sensor
from resources import Settings
from conftest import SAMPLE, read_jsonl_lines, write_config, write_small_shards


def _job():
    from metarater_assets.defs import jobs
    from metarater_assets.core.config import load_config
    from conftest import REPO

    return jobs(load_config(str(REPO / "configs" / "demo.yaml")))[0]


def _tick(sensor, instance, cursor):
    ctx = dg.build_sensor_context(instance=instance, cursor=cursor)
    result = sensor(ctx)
    return result, ctx.cursor


def _apply(instance, result):
    for req in result.dynamic_partitions_requests:
        instance.add_dynamic_partitions(req.partitions_def_name, list(req.partition_keys))


def test_second_tick_registers_only_new_files(tmp_path):
    raw = write_small_shards(tmp_path / "raw", n=5)
    sensor = make_shard_sensor(lambda: str(raw), _job(), shards_per_run=8)
    with dg.instance_for_test() as instance:
        r1, cursor = _tick(sensor, instance, None)
        # two new files: one batched run over the range of their partitions
        assert len(r1.run_requests) == 1
        tags = r1.run_requests[0].tags
        assert (tags[RANGE_START], tags[RANGE_END]) == ("shard-0000.jsonl.gz", "shard-0002.parquet")
        _apply(instance, r1)
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


def test_five_thousand_files_register_in_capped_ticks(tmp_path):
    """5,000 files in one folder: a tick lists once, looks partitions up in sets and parses its
    cursor once; at most max_new are registered per tick (the rest on the next ticks), in batched
    runs. (The 60 s bound is Dagster's sensor timeout, a hard limit, not a benchmark.)"""
    raw = tmp_path / "raw"
    raw.mkdir()
    for i in range(5000):
        (raw / f"part-{i:05d}.jsonl").write_text('{"text": "x"}\n')
    sensor = make_shard_sensor(lambda: str(raw), _job(), shards_per_run=256, max_new=2000)
    with dg.instance_for_test() as instance:
        cursor, registered, ticks = None, 0, []
        while True:
            t0 = time.perf_counter()
            result, cursor = _tick(sensor, instance, cursor)
            ticks.append(time.perf_counter() - t0)
            if isinstance(result, dg.SkipReason):
                break
            new = list(result.dynamic_partitions_requests[0].partition_keys)
            assert len(new) <= 2000
            ranges = [(r.tags[RANGE_START], r.tags[RANGE_END]) for r in result.run_requests]
            assert len(ranges) == -(-len(new) // 256)  # ceil: one run per 256 shards
            _apply(instance, result)
            registered += len(new)
        assert registered == 5000 and len(ticks) == 4  # 2000 + 2000 + 1000, then nothing new
        print("tick seconds:", [round(t, 2) for t in ticks])
        assert max(ticks) < 60
        assert len(cursor) < 200_000  # the cursor of 5,000 fingerprints, compressed


def test_a_tick_packs_small_files_and_the_requested_run_reads_the_recorded_members(tmp_path):
    """With ingest.pack_bytes the sensor registers packs: their member lists go out as observations
    (Dagster records them before adding the partitions), and the run it requests finds its files
    through them; a changed member reruns its pack."""
    lines = sorted(read_jsonl_lines(SAMPLE / "raw" / "shard-0000.jsonl.gz"), key=len)[:60]
    raw = tmp_path / "raw"
    raw.mkdir()
    for i in range(12):
        with gzip.open(raw / f"t{i:02d}.jsonl.gz", "wt", encoding="utf-8") as f:
            f.writelines(lines[i * 5:(i + 1) * 5])
    sizes = [p.stat().st_size for p in sorted(raw.iterdir())]
    pack_bytes = sum(sizes[:3])  # the first pack closes at its third file
    job = _job()
    sensor = make_shard_sensor(lambda: str(raw), job, shards_per_run=8, pack_bytes=pack_bytes)
    with dg.instance_for_test() as instance:
        r1, cursor = _tick(sensor, instance, None)
        new = list(r1.dynamic_partitions_requests[0].partition_keys)
        assert packs.is_pack_key(new[0]) and new[0].startswith("pack-t00.jsonl.gz-3f-")
        assert all(packs.is_pack_key(k) for k in new[:-1]) and len(new) < 12
        events = {e.partition: [m["key"] for m in e.metadata["pack_members"].value] for e in r1.asset_events}
        assert set(events) == {k for k in new if packs.is_pack_key(k)}
        assert sorted(m for ms in events.values() for m in ms) + [k for k in new if k not in events] == \
            [f"t{i:02d}.jsonl.gz" for i in range(12)]
        assert [(r.tags[RANGE_START], r.tags[RANGE_END]) for r in r1.run_requests] == [(new[0], new[-1])]
        for e in r1.asset_events:  # what the daemon does with the result, in its order
            instance.report_runless_asset_event(e)
        _apply(instance, r1)
        # the requested run: shard_job over the pack's partition reads the recorded members
        cfg = write_config(tmp_path / "c.yaml")
        settings = Settings(home=str(tmp_path / "home"), raw_uri=str(raw), config_path=str(cfg))
        c = load_config(str(cfg))
        res = dg.materialize(all_assets(c), selection=["raw_docs", "raw_quarantine"], partition_key=new[0],
                             instance=instance, resources=build_resources(settings, c))
        assert res.success
        docs = pq.read_table(tmp_path / "home" / "storage" / "raw_docs" / f"{new[0]}.parquet")
        assert docs.num_rows == 15 and docs.column("text").to_pylist() == [
            json.loads(l)["text"] for l in lines[:15]]
        r2, cursor = _tick(sensor, instance, cursor)
        assert isinstance(r2, dg.SkipReason)
        time.sleep(0.01)
        with gzip.open(raw / "t01.jsonl.gz", "at", encoding="utf-8") as f:
            f.write(lines[59])
        r3, cursor = _tick(sensor, instance, cursor)
        assert [r.partition_key for r in r3.run_requests] == [new[0]]
        assert r3.run_requests[0].tags["metarater/reason"] == "changed" and not r3.asset_events
