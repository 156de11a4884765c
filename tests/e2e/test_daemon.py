"""The used-by line for real: `metarater ui` (dagster dev: webserver + daemon) as a user starts
it, driven through its GraphQL API (fixture and helpers: tests/e2e/uihelpers.py).

Sensor-triggered refresh: on a scored pool, switch the shard sensor on (the automation sensor is on
by default), drop new shards into the raw folder, and wait until the daemon has scored them and
refreshed the pool statistics and the curated manifest, which then counts their documents.
(A backfill through the same server, launched from the browser: test_ui_browser.py.)
"""
import json
import os
import shutil
import subprocess
import sys
import time

import dagster as dg

from conftest import TEST_DATA, stop_group
from uihelpers import REPO, prepare, selector, timeline, ui, wait_for  # noqa: F401 (ui: the fixture)


def test_a_burst_of_new_shards_reaches_the_manifest_through_the_running_daemon(ui):
    """The README's path with the real daemon: two shards dropped at once, one sensor run each
    (shards_per_run 1); the pool-level refresh waits for the burst and runs once, not per shard."""
    start, tmp = ui
    raw, cfg, env = prepare(tmp, proxies={"n": 4, "single_score_runs": False}, evaluation={"seeds": [0]},
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
                {"s": selector(graphql, "shard_sensor")})
    assert d["startSensor"]["sensorState"]["status"] == "RUNNING", d
    auto = graphql("query($s: SensorSelector!) { sensorOrError(sensorSelector: $s) { ... on Sensor { sensorState { status } } } }",
                   {"s": selector(graphql, "metarater_automation")})
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
    m = wait_for(refreshed, 420, "the daemon did not bring the new shards into the curated manifest", every=3)
    print(f"manifest refreshed {time.time() - t_drop:.0f}s after the drop\n" + timeline(env["DAGSTER_HOME"]))
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
        # the automation sensor launched the refresh's runs itself: no backfill waited on the
        # backfill daemon's 30 s tick (Dagster's default, emit_backfills)
        assert inst.get_backfills() == []
        # nothing was refit: proxies and the regressor keep their single materialisation
        for key in ("regressor", "tokenizer", "dsir_model"):
            assert len(inst.fetch_materializations(dg.AssetKey(key), limit=5).records) == 1, key
