"""The used-by line for real: `metarater ui` (dagster dev: webserver + daemon) as a user starts
it, driven through its GraphQL API.

1. Sensor-triggered refresh: on a scored pool, switch the shard sensor on (the automation sensor is
   on by default), drop a new shard into the raw folder, and wait until the daemon has scored it
   and refreshed the pool statistics and the curated manifest, which then counts its documents.
2. A backfill as the UI launches it (`launchPartitionBackfill`) over every shard of the ingest
   asset, completed by the backfill daemon in runs of compute.shards_per_run partitions.

Every process is started in its own session and stopped by process group, also on failure.
"""
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import dagster as dg
import pytest

from conftest import TEST_DATA, free_port, stop_group, write_config, write_small_shards

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def ui(tmp_path):
    """Start `metarater ui` on a prepared home; yields (graphql(query, variables), env, tmp)."""
    procs = []

    def start(raw: Path, cfg: Path):
        env = {**os.environ, "METARATER_HOME": str(tmp_path / "home"), "METARATER_RAW_URI": str(raw),
               "METARATER_CONFIG": str(cfg), "DAGSTER_HOME": str(tmp_path / "home" / "dagster"),
               "METARATER_SENSOR_INTERVAL": "3"}
        port = free_port()
        log = open(tmp_path / "dagster-dev.log", "w")
        proc = subprocess.Popen([sys.executable, "-m", "metarater_assets.cli", "ui", "--port", str(port)], env=env,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=REPO)
        procs.append((proc, log))
        base = f"http://127.0.0.1:{port}"
        deadline = time.time() + 240
        while True:
            try:
                urllib.request.urlopen(f"{base}/server_info", timeout=2)
                break
            except OSError:
                if time.time() > deadline or proc.poll() is not None:
                    raise RuntimeError("dagster dev did not come up:\n" + (tmp_path / "dagster-dev.log").read_text()[-3000:])
                time.sleep(1)

        def graphql(query: str, variables: dict | None = None) -> dict:
            req = urllib.request.Request(f"{base}/graphql", data=json.dumps({"query": query, "variables": variables or {}}).encode(),
                                         headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=120) as r:
                out = json.loads(r.read())
            assert "errors" not in out, out
            return out["data"]

        _wait(lambda: _location_loaded(graphql), 180, "the code location did not load")
        return graphql, env

    yield start, tmp_path
    for proc, log in procs:
        try:
            stop_group(proc)
        finally:
            log.close()


def _location_loaded(graphql) -> bool:
    d = graphql("{ workspaceOrError { ... on Workspace { locationEntries { name loadStatus } } } }")
    entries = d["workspaceOrError"]["locationEntries"]
    return bool(entries) and all(e["loadStatus"] == "LOADED" for e in entries)


def _selector(graphql, sensor: str) -> dict:
    d = graphql("{ repositoriesOrError { ... on RepositoryConnection { nodes { name location { name } } } } }")
    repo = d["repositoriesOrError"]["nodes"][0]
    return {"repositoryName": repo["name"], "repositoryLocationName": repo["location"]["name"], "sensorName": sensor}


def _wait(fn, timeout: float, what: str, every: float = 2.0):
    end = time.time() + timeout
    while time.time() < end:
        v = fn()
        if v:
            return v
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f}s: {what}")


def _prepare(tmp_path: Path, n: int = 40, **cfg_over):
    """A scored, curated pool in tmp/home (what `metarater run` leaves), its raw folder and config."""
    raw = write_small_shards(tmp_path / "raw", n=n)
    cfg = write_config(tmp_path / "config.yaml", **cfg_over)
    env = {**os.environ, "METARATER_HOME": str(tmp_path / "home"), "METARATER_RAW_URI": str(raw),
           "METARATER_CONFIG": str(cfg)}
    env.pop("DAGSTER_HOME", None)
    return raw, cfg, env


def test_a_burst_of_new_shards_reaches_the_manifest_through_the_running_daemon(ui):
    """The README's path with the real daemon: two shards dropped at once, one sensor run each
    (shards_per_run 1); the pool-level refresh waits for the burst and runs once, not per shard."""
    start, tmp = ui
    raw, cfg, env = _prepare(tmp, proxies={"n": 4, "single_score_runs": False}, evaluation={"seeds": [0]},
                             compute={"shards_per_run": 1})
    run = subprocess.Popen([sys.executable, "-m", "metarater_assets.cli", "run", "--stage", "curated"], env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO,
                           start_new_session=True)  # its worker processes are stopped with it on failure
    try:
        text, _ = run.communicate(timeout=900)
    finally:
        if run.poll() is None:
            stop_group(run, grace=5)
    assert run.returncode == 0, text[-3000:]
    manifest_path = tmp / "home" / "curated" / "_manifest.json"
    before = json.loads(manifest_path.read_text())
    assert "shard-0008.jsonl.gz" not in before["per_shard"]
    graphql, env = start(raw, cfg)
    ui_log = (tmp / "dagster-dev.log").read_text()  # metarater ui names the sensors and their defaults
    assert "shard_sensor          OFF by default" in ui_log and "metarater_automation  ON by default" in ui_log
    # the README's step: switch the shard sensor on (the automation sensor runs by default)
    d = graphql("mutation($s: SensorSelector!) { startSensor(sensorSelector: $s) { __typename "
                "... on Sensor { sensorState { status } } ... on PythonError { message } } }",
                {"s": _selector(graphql, "shard_sensor")})
    assert d["startSensor"]["sensorState"]["status"] == "RUNNING", d
    auto = graphql("query($s: SensorSelector!) { sensorOrError(sensorSelector: $s) { ... on Sensor { sensorState { status } } } }",
                   {"s": _selector(graphql, "metarater_automation")})
    assert auto["sensorOrError"]["sensorState"]["status"] == "RUNNING"
    burst = ["shard-0008.jsonl.gz", "shard-0009.jsonl.gz"]
    (tmp / "incoming").mkdir()
    for name in burst:  # staged beside the pool, then moved in (an upload's final rename)
        shutil.copy(TEST_DATA / "shard-0008.jsonl.gz", tmp / "incoming" / name)
    for name in burst:
        os.replace(tmp / "incoming" / name, raw / name)

    def refreshed():
        if not manifest_path.exists():
            return None
        m = json.loads(manifest_path.read_text())
        return m if all(m.get("per_shard", {}).get(b, {}).get("pool_docs") == 60 for b in burst) else None

    t_drop = time.time()
    m = _wait(refreshed, 420, "the daemon did not bring the new shards into the curated manifest", every=3)
    print(f"manifest refreshed {time.time() - t_drop:.0f}s after the drop\n" + _timeline(env["DAGSTER_HOME"]))
    assert m["pool_docs"] == before["pool_docs"] + 60 * len(burst)
    stats = json.loads((tmp / "home" / "storage" / "score_stats.json").read_text())
    assert set(burst) <= set(stats["keys"])
    for b in burst:
        assert (tmp / "home" / "curated" / b.replace(".jsonl.gz", ".parquet")).exists()
    with dg.DagsterInstance.from_config(env["DAGSTER_HOME"]) as inst:
        runs = inst.get_runs()
        sensor_runs = [r for r in runs if r.tags.get("dagster/sensor_name") == "shard_sensor"]
        assert len(sensor_runs) == len(burst) and all(r.status == dg.DagsterRunStatus.SUCCESS for r in sensor_runs)
        # debounced: the burst refreshed the pool statistics and the selection once (plus the
        # materialisation `metarater run` made before the daemon started)
        for key in ("score_stats", "curated_selection"):
            assert len(inst.fetch_materializations(dg.AssetKey(key), limit=10).records) == 2, key
        # nothing was refit: proxies and the regressor keep their single materialisation
        for key in ("regressor", "tokenizer", "dsir_model"):
            assert len(inst.fetch_materializations(dg.AssetKey(key), limit=5).records) == 1, key


def test_a_backfill_launched_through_graphql_runs_in_batches(ui):
    start, tmp = ui
    raw, cfg, env = _prepare(tmp, n=12, compute={"shards_per_run": 4})
    for i in range(8):  # ten shards in all
        (raw / f"extra-{i}.jsonl").write_text("".join(json.dumps({"id": f"e{i}-{j}", "text": f"Extra document {j} of {i}."}) + "\n"
                                                    for j in range(3)))
    dagster_home = tmp / "home" / "dagster"
    dagster_home.mkdir(parents=True)
    from resources.settings import _DAGSTER_YAML

    (dagster_home / "dagster.yaml").write_text(_DAGSTER_YAML)
    keys = sorted(p.name for p in raw.iterdir())  # what the sensor registers (plain names are the keys)
    with dg.DagsterInstance.from_config(str(dagster_home)) as inst:
        inst.add_dynamic_partitions("shards", keys)
    graphql, env = start(raw, cfg)
    q = ("mutation($p: LaunchBackfillParams!) { launchPartitionBackfill(backfillParams: $p) { __typename "
         "... on LaunchBackfillSuccess { backfillId } ... on PythonError { message } } }")
    d = graphql(q, {"p": {"partitionNames": keys, "assetSelection": [{"path": ["raw_docs"]}, {"path": ["raw_quarantine"]}]}})
    assert d["launchPartitionBackfill"]["__typename"] == "LaunchBackfillSuccess", d
    bid = d["launchPartitionBackfill"]["backfillId"]

    def finished():
        r = graphql("query($id: String!) { partitionBackfillOrError(backfillId: $id) { ... on PartitionBackfill { status } } }",
                    {"id": bid})
        return r["partitionBackfillOrError"]["status"] in ("COMPLETED", "COMPLETED_SUCCESS", "FAILED", "CANCELED",
                                                            "COMPLETED_FAILED") and r
    status = _wait(finished, 420, "the backfill daemon did not complete the backfill")
    assert status["partitionBackfillOrError"]["status"] in ("COMPLETED", "COMPLETED_SUCCESS")
    with dg.DagsterInstance.from_config(str(dagster_home)) as inst:
        runs = inst.get_runs(filters=dg.RunsFilter(tags={"dagster/backfill": bid}))
        assert len(runs) == 3  # ten shards in batches of four: the asset's BackfillPolicy
        assert all(r.status == dg.DagsterRunStatus.SUCCESS for r in runs)
        for key in ("raw_docs", "raw_quarantine"):
            recs = inst.fetch_materializations(dg.AssetKey(key), limit=100).records
            assert sorted(r.partition_key for r in recs) == keys, key  # every shard, once
    for k in keys:
        assert (tmp / "home" / "storage" / "raw_docs" / f"{k}.parquet").exists()


def _timeline(dagster_home: str) -> str:
    with dg.DagsterInstance.from_config(dagster_home) as inst:
        recs = inst.get_run_records()
    t0 = min(r.create_timestamp.timestamp() for r in recs)
    return "\n".join(f"{r.create_timestamp.timestamp() - t0:7.1f} {((r.end_time or 0) - (r.start_time or 0)):6.1f}s "
                     f"{r.dagster_run.status.value:8s} {r.dagster_run.tags.get('dagster/partition', '')} "
                     f"{sorted(k.to_user_string() for k in (r.dagster_run.asset_selection or []))[:4]}"
                     for r in sorted(recs, key=lambda r: r.create_timestamp))
