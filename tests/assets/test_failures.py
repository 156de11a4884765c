"""Failures wherever they happen: batched runs in the report, runs of a killed process marked
failed, failed batches of the sensor or a backfill retried shard by shard."""
import gzip
import json
import os
import signal
import socket
import subprocess
import sys
import time

import dagster as dg
import pytest

from metarater_assets import runs
from metarater_assets.core import corpus
from metarater_assets.core.config import load_config
from metarater_assets.defs import all_assets, build_resources, jobs, shard_assets
from metarater_assets.report import build_report
from metarater_assets.runner import register_shards, run_pipeline
from metarater_assets.sensors import RANGE_END, RANGE_START, RETRY_OF, make_batch_retry_sensor
from resources import Settings
from conftest import REPO, SAMPLE, read_jsonl_lines, write_config, write_copies, write_small_shards


def _pool(tmp_path) -> tuple[Settings, object]:
    """Two good shards and a truncated one (registered first: 'broken' sorts first)."""
    raw = write_small_shards(tmp_path / "raw", n=20)
    full = gzip.compress(gzip.decompress((raw / "shard-0000.jsonl.gz").read_bytes()))
    (raw / "broken.jsonl.gz").write_bytes(full[: len(full) // 2])
    settings = Settings(home=str(tmp_path / "home"), raw_uri=str(raw),
                        config_path=str(write_config(tmp_path / "c.yaml")))
    return settings, load_config(settings.config_path)


def _batch(instance, settings, cfg, selection, keys, **tags) -> dg.ExecuteInProcessResult:
    """One run over the partition-key range keys[0]..keys[-1], as the backfill daemon launches it."""
    return dg.materialize(all_assets(cfg), selection=selection, instance=instance,
                          resources=build_resources(settings, cfg), raise_on_error=False,
                          tags={RANGE_START: keys[0], RANGE_END: keys[-1], **tags})


def test_report_lists_every_shard_of_a_failed_batch_until_it_succeeds(tmp_path):
    settings, cfg = _pool(tmp_path)
    with dg.DagsterInstance.ephemeral() as instance:
        register_shards(instance, corpus.list_shards(settings.raw_uri), cfg)
        keys = list(instance.get_dynamic_partitions("shards"))
        assert keys == ["broken.jsonl.gz", "shard-0000.jsonl.gz", "shard-0002.parquet"]
        res = _batch(instance, settings, cfg, ["raw_docs", "raw_quarantine"], keys)
        assert not res.success
        rep = build_report(settings, instance)
        # the batch failed as a whole: each of its shards is listed, with the step's error
        assert [f["shard"] for f in rep["ingest"]["failed_shards"]] == keys
        assert all("broken.jsonl.gz: truncated or corrupt gzip" in f["error"] for f in rep["ingest"]["failed_shards"])
        assert [(f["assets"], f["partition"]) for f in rep["failures"]] == \
            [(["raw_docs", "raw_quarantine"], k) for k in keys]
        assert {f["run_id"] for f in rep["failures"]} == {res.run_id}
        # the CLI retries shard by shard: the good shards succeed, and only the bad one is left
        summary = run_pipeline(settings, "ingest", instance=instance, echo=lambda m: None)
        assert [f["partition"] for f in summary.failed] == ["broken.jsonl.gz"]
        rep = build_report(settings, instance)
        assert [f["shard"] for f in rep["ingest"]["failed_shards"]] == ["broken.jsonl.gz"]
        assert [f["partition"] for f in rep["failures"]] == ["broken.jsonl.gz"]
        assert rep["failures"][0]["run_id"] != res.run_id  # its newest failure: the single-shard run


def test_report_lists_failed_proxy_runs_of_a_batch_and_unpartitioned_steps(tmp_path):
    settings, cfg = _pool(tmp_path)
    with dg.DagsterInstance.ephemeral() as instance:
        instance.add_dynamic_partitions("proxy_runs", ["run-a", "run-b", "run-c"])
        # nothing upstream exists yet: both fail
        assert not _batch(instance, settings, cfg, ["proxy_data"], ["run-a", "run-b"]).success
        stats = dg.materialize(all_assets(cfg), selection=["score_stats"], instance=instance,
                               resources=build_resources(settings, cfg), raise_on_error=False)
        assert not stats.success
        rep = build_report(settings, instance)
        got = {(tuple(f["assets"]), f["partition"]) for f in rep["failures"]}
        assert got == {(("proxy_data",), "run-a"), (("proxy_data",), "run-b"), (("score_stats",), None)}
        assert all(f["error"] and f["error"] != "run failed" for f in rep["failures"])
        assert rep["ingest"]["failed_shards"] == []


# ------------------------------------------------------------------------------------------
# runs of a killed process

_HOLD = """
import pathlib, sys, time
import dagster as dg
from metarater_assets import runs

@dg.asset
def hold():
    pathlib.Path(sys.argv[1]).write_text("started")
    time.sleep(600)

dg.materialize([hold], instance=dg.DagsterInstance.get(), tags={"metarater/cli": "run", **runs.run_tags()})
"""


@dg.op
def _noop():
    pass


@dg.job
def _noop_job():
    _noop()


def _started_run(instance, **tags) -> str:
    run = instance.create_run_for_job(_noop_job, status=dg.DagsterRunStatus.STARTED,
                                      tags={"metarater/cli": "run", **tags})
    return run.run_id


def _status(instance, run_id):
    return instance.get_run_by_id(run_id).status


def test_runs_of_a_killed_process_are_marked_failed_and_live_ones_left_alone(tmp_path):
    home = tmp_path / "dagster"
    home.mkdir()
    env = {**os.environ, "DAGSTER_HOME": str(home)}
    marker = tmp_path / "started"
    proc = subprocess.Popen([sys.executable, "-c", _HOLD, str(marker)], env=env, cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not marker.exists() and proc.poll() is None:
            time.sleep(0.05)
        assert marker.exists(), "the run never started"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # as the OOM killer does: no chance to record anything
        proc.wait()
    with dg.DagsterInstance.from_config(str(home)) as instance:
        (killed,) = instance.get_run_records(dg.RunsFilter(tags={"metarater/cli": "run"}))
        killed = killed.dagster_run
        assert killed.status == dg.DagsterRunStatus.STARTED and killed.tags[runs.PID_TAG] == str(proc.pid)
        me = runs.run_tags()
        live = _started_run(instance, **me)
        elsewhere = _started_run(instance, **{**killed.tags, runs.HOST_TAG: "another-host"})
        untagged = _started_run(instance)
        reused = _started_run(instance, **{**me, runs.PID_START_TAG: "1"})  # our pid, another process's start
        assert sorted(runs.mark_dead_runs(instance)) == sorted([killed.run_id, reused])
        assert _status(instance, killed.run_id) == dg.DagsterRunStatus.FAILURE
        assert _status(instance, reused) == dg.DagsterRunStatus.FAILURE
        for run_id in (live, elsewhere, untagged):
            assert _status(instance, run_id) == dg.DagsterRunStatus.STARTED
        failure = instance.fetch_run_status_changes(dg.DagsterEventType.RUN_FAILURE, limit=10).records
        msgs = [r.event_log_entry.dagster_event.message for r in failure if r.run_id == killed.run_id]
        assert msgs and f"pid {proc.pid} on {socket.gethostname()}" in msgs[0] and "OOM killer" in msgs[0]
        assert runs.mark_dead_runs(instance) == []  # once


def test_metarater_run_killed_mid_ingest_is_reported_failed(tmp_path):
    """A real `metarater run`, SIGKILLed mid-ingest: `metarater report` marks its run failed and
    lists the shard, with why."""
    raw = tmp_path / "raw"
    raw.mkdir()
    lines = read_jsonl_lines(SAMPLE / "raw" / "shard-0000.jsonl.gz")
    write_copies(raw / "big.jsonl", lines, 20)  # takes seconds to ingest
    staging = tmp_path / "tmpdir"
    staging.mkdir()
    env = {**os.environ, "METARATER_HOME": str(tmp_path / "home"), "METARATER_RAW_URI": str(raw),
           "METARATER_CONFIG": str(write_config(tmp_path / "c.yaml")), "TMPDIR": str(staging)}
    env.pop("DAGSTER_HOME", None)
    cli = [sys.executable, "-m", "metarater_assets.cli"]
    proc = subprocess.Popen([*cli, "run", "--stage", "ingest"], env=env, cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not list(staging.glob("metarater-ingest-*/docs.parquet")):
            time.sleep(0.05)
        assert list(staging.glob("metarater-ingest-*/docs.parquet")), "ingest never started writing"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    with dg.DagsterInstance.from_config(str(tmp_path / "home" / "dagster")) as instance:
        (rec,) = instance.get_run_records(dg.RunsFilter(tags={"metarater/cli": "run"}))
        assert rec.dagster_run.status == dg.DagsterRunStatus.STARTED
        if runs.PID_TAG not in rec.dagster_run.tags:
            pytest.xfail("runner._execute does not tag its runs with runs.run_tags() yet")
    out = subprocess.run([*cli, "report", "--json"], env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    rep = json.loads(out.stdout)
    (failed,) = rep["ingest"]["failed_shards"]
    assert failed["shard"] == "big.jsonl" and "died" in failed["error"] and "OOM killer" in failed["error"]
    with dg.DagsterInstance.from_config(str(tmp_path / "home" / "dagster")) as instance:
        assert instance.get_run_by_id(rec.dagster_run.run_id).status == dg.DagsterRunStatus.FAILURE


# ------------------------------------------------------------------------------------------
# the retry sensor

def _evaluate(sensor, instance, result: dg.ExecuteInProcessResult):
    ctx = dg.build_run_status_sensor_context(sensor_name=sensor.name, dagster_event=result.get_run_failure_event(),
                                             dagster_instance=instance, dagster_run=result.dagster_run)
    return sensor(ctx)


def test_a_failed_batch_is_retried_shard_by_shard_and_a_failed_shard_is_not(tmp_path):
    settings, cfg = _pool(tmp_path)
    shard_job = jobs(cfg)[0]
    chain = shard_assets(cfg)
    sensor = make_batch_retry_sensor(shard_job, chain)
    assert sensor.name == "shard_batch_retry" and sensor.default_status == dg.DefaultSensorStatus.RUNNING
    defs = dg.Definitions(assets=all_assets(cfg), resources=build_resources(settings, cfg), jobs=[shard_job],
                          sensors=[sensor])
    job = defs.resolve_job_def("shard_job")
    with dg.DagsterInstance.ephemeral() as instance:
        register_shards(instance, corpus.list_shards(settings.raw_uri), cfg)
        keys = list(instance.get_dynamic_partitions("shards"))
        # a batch of the shard sensor: shard_job over a range
        batch = job.execute_in_process(instance=instance, raise_on_error=False,
                                       tags={RANGE_START: keys[0], RANGE_END: keys[-1]})
        assert not batch.success
        reqs = _evaluate(sensor, instance, batch)
        assert [r.partition_key for r in reqs] == keys
        assert all(r.asset_selection is None for r in reqs)  # the whole per-shard chain
        assert all(r.tags[RETRY_OF] == batch.run_id for r in reqs)
        assert len({r.run_key for r in reqs}) == 3 and all(batch.run_id in r.run_key for r in reqs)
        assert reqs == _evaluate(sensor, instance, batch)  # the same run keys: the daemon launches them once
        # a UI backfill of some per-shard assets (an asset job's run over a range): those assets, per shard
        backfill = _batch(instance, settings, cfg, ["raw_docs", "raw_quarantine"], keys[:2],
                          **{"dagster/backfill": "abcdefgh"})
        reqs = _evaluate(sensor, instance, backfill)
        assert [r.partition_key for r in reqs] == keys[:2]
        assert all(r.asset_selection == [dg.AssetKey("raw_docs"), dg.AssetKey("raw_quarantine")] for r in reqs)
        assert all("dagster/backfill" not in r.tags for r in reqs)
        # shard_job over a subset of its assets: the same subset, per shard
        subset = job.execute_in_process(instance=instance, raise_on_error=False,
                                        asset_selection=[dg.AssetKey("raw_docs"), dg.AssetKey("raw_quarantine")],
                                        tags={RANGE_START: keys[0], RANGE_END: keys[1]})
        assert not subset.success
        reqs = _evaluate(sensor, instance, subset)
        assert [(r.partition_key, r.asset_selection) for r in reqs] == \
            [(k, [dg.AssetKey("raw_docs"), dg.AssetKey("raw_quarantine")]) for k in keys[:2]]
        # a single shard that failed (e.g. a retry) is not retried again: no loop
        single = job.execute_in_process(instance=instance, raise_on_error=False, partition_key="broken.jsonl.gz",
                                        tags={RETRY_OF: batch.run_id})
        assert not single.success and _evaluate(sensor, instance, single) is None
        # a batch of `metarater run` (it retries by itself) and a range over proxy runs are left alone
        cli = _batch(instance, settings, cfg, ["raw_docs", "raw_quarantine"], keys, **{"metarater/cli": "run"})
        assert _evaluate(sensor, instance, cli) is None
        instance.add_dynamic_partitions("proxy_runs", ["run-a", "run-b"])
        proxies = _batch(instance, settings, cfg, ["proxy_data"], ["run-a", "run-b"])
        assert not proxies.success and _evaluate(sensor, instance, proxies) is None
