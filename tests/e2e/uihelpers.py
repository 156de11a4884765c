"""`metarater ui` (dagster dev: webserver + daemon) as a user starts it, driven through its GraphQL
API: the fixture and helpers of test_daemon.py (test_ui_browser.py starts its server with
``start_ui``). Every process is started in its own
session and stopped by process group, also on failure."""
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import dagster as dg
import pytest

from conftest import free_port, stop_group, write_config, write_small_shards

REPO = Path(__file__).resolve().parents[2]


def start_ui(env: dict, tmp_path: Path, timeout: float = 240):
    """`metarater ui` as a user starts it, in its own session (stop it with ``stop_group``), its
    output in tmp/dagster-dev.log; returns (process, log file, base URL) once it answers."""
    port = free_port()
    log = open(tmp_path / "dagster-dev.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "metarater_assets.cli", "ui", "--port", str(port)], env=env,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=REPO)
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + timeout
    while True:
        try:
            urllib.request.urlopen(f"{base}/server_info", timeout=2)
            return proc, log, base
        except OSError:
            if time.time() > deadline or proc.poll() is not None:
                stop_group(proc, grace=5)
                log.close()
                raise RuntimeError("dagster dev did not come up:\n" + (tmp_path / "dagster-dev.log").read_text()[-3000:])
            time.sleep(1)


@pytest.fixture
def ui(tmp_path):
    """Start `metarater ui` on a prepared home; yields (graphql(query, variables), env, tmp)."""
    procs = []

    def start(raw: Path, cfg: Path):
        env = {**os.environ, "METARATER_HOME": str(tmp_path / "home"), "METARATER_RAW_URI": str(raw),
               "METARATER_CONFIG": str(cfg), "DAGSTER_HOME": str(tmp_path / "home" / "dagster"),
               "METARATER_SENSOR_INTERVAL": "3"}
        proc, log, base = start_ui(env, tmp_path)
        procs.append((proc, log))

        def graphql(query: str, variables: dict | None = None) -> dict:
            req = urllib.request.Request(f"{base}/graphql", data=json.dumps({"query": query, "variables": variables or {}}).encode(),
                                         headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=120) as r:
                out = json.loads(r.read())
            assert "errors" not in out, out
            return out["data"]

        wait_for(lambda: location_loaded(graphql), 180, "the code location did not load")
        return graphql, env

    yield start, tmp_path
    for proc, log in procs:
        try:
            stop_group(proc)
        finally:
            log.close()


def location_loaded(graphql) -> bool:
    d = graphql("{ workspaceOrError { ... on Workspace { locationEntries { name loadStatus } } } }")
    entries = d["workspaceOrError"]["locationEntries"]
    return bool(entries) and all(e["loadStatus"] == "LOADED" for e in entries)


def selector(graphql, sensor: str) -> dict:
    d = graphql("{ repositoriesOrError { ... on RepositoryConnection { nodes { name location { name } } } } }")
    repo = d["repositoriesOrError"]["nodes"][0]
    return {"repositoryName": repo["name"], "repositoryLocationName": repo["location"]["name"], "sensorName": sensor}


def wait_for(fn, timeout: float, what: str, every: float = 2.0):
    end = time.time() + timeout
    while time.time() < end:
        v = fn()
        if v:
            return v
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f}s: {what}")


def prepare(tmp_path: Path, n: int = 40, **cfg_over):
    """A scored, curated pool in tmp/home (what `metarater run` leaves), its raw folder and config."""
    raw = write_small_shards(tmp_path / "raw", n=n)
    cfg = write_config(tmp_path / "config.yaml", **cfg_over)
    env = {**os.environ, "METARATER_HOME": str(tmp_path / "home"), "METARATER_RAW_URI": str(raw),
           "METARATER_CONFIG": str(cfg)}
    env.pop("DAGSTER_HOME", None)
    return raw, cfg, env


def timeline(dagster_home: str) -> str:
    with dg.DagsterInstance.from_config(dagster_home) as inst:
        recs = inst.get_run_records()
    t0 = min(r.create_timestamp.timestamp() for r in recs)
    return "\n".join(f"{r.create_timestamp.timestamp() - t0:7.1f} {((r.end_time or 0) - (r.start_time or 0)):6.1f}s "
                     f"{r.dagster_run.status.value:8s} {r.dagster_run.tags.get('dagster/partition', '')} "
                     f"{sorted(k.to_user_string() for k in (r.dagster_run.asset_selection or []))[:4]}"
                     for r in sorted(recs, key=lambda r: r.create_timestamp))
