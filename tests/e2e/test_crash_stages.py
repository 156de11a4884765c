"""SIGKILL during scoring, proxy training and curation (a real `metarater run` subprocess, really
killed): nothing is left that looks complete, and re-running finishes with exactly the result of
an uninterrupted run.

Scoring and curation are killed at their worst moment, between writing an output's bytes and
committing it (``METARATER_CRASH_BEFORE_COMMIT``, a fault-injection point in the atomic writer);
proxy training is killed from outside as soon as a run has saved its first checkpoint.
"""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from conftest import write_config, write_small_shards

CMD = [sys.executable, "-m", "metarater_assets.cli", "run", "--stage"]


def _env(tmp: Path, raw: Path, cfg: Path, **extra) -> dict:
    env = {**os.environ, "METARATER_HOME": str(tmp / "home"), "METARATER_RAW_URI": str(raw),
           "METARATER_CONFIG": str(cfg), **extra}
    env.pop("DAGSTER_HOME", None)
    env.pop("METARATER_CRASH_BEFORE_COMMIT", None) if "METARATER_CRASH_BEFORE_COMMIT" not in extra else None
    return env


def _run(stage: str, env: dict, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(CMD + [stage], env=env, capture_output=True, text=True, timeout=timeout)


def _ok(stage: str, env: dict) -> None:
    """Run a stage and fail with its output when it fails."""
    out = _run(stage, env)
    assert out.returncode == 0, f"metarater run --stage {stage} exited {out.returncode}:\n{out.stdout[-4000:]}\n{out.stderr[-4000:]}"


def _complete(folder: Path, suffix: str) -> list[Path]:
    return sorted(p for p in folder.glob(f"*{suffix}") if ".tmp-" not in p.name) if folder.exists() else []


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("crash")
    raw = write_small_shards(tmp / "raw", n=50)
    # transformer proxies (checkpointed) but few of them: the point is the kill, not the science
    cfg = write_config(tmp / "config.yaml",
                       proxies={"n": 4, "kind": "transformer", "preset": "test", "token_budget": 64 * 4 * 40,
                                "single_score_runs": False})
    ref = tmp / "ref"
    ref.mkdir()
    done = _run("curated", _env(ref, raw, cfg))
    assert done.returncode == 0, done.stderr[-3000:]
    return tmp, raw, cfg, ref / "home"


def test_sigkill_in_scoring_proxies_and_curation_then_rerun_equals_uninterrupted(setup):
    tmp, raw, cfg, ref = setup
    work = tmp / "work"
    work.mkdir()
    home = work / "home"
    env = _env(work, raw, cfg)
    _ok("ingest", env)

    # 1. scoring: killed after writing a score table's bytes, before the commit
    crashed = _run("scores", _env(work, raw, cfg, METARATER_CRASH_BEFORE_COMMIT="/rpv2_scores/"))
    assert crashed.returncode == -signal.SIGKILL
    assert _complete(home / "storage" / "rpv2_scores", ".parquet") == []
    assert list((home / "storage" / "rpv2_scores").glob("*.tmp-*"))  # it really died mid-commit
    _ok("scores", env)
    for p in _complete(ref / "storage" / "rpv2_scores", ".parquet"):
        assert pq.read_table(home / "storage" / "rpv2_scores" / p.name).equals(pq.read_table(p))

    # 2. proxy training: killed from outside once a run has checkpointed
    proc = subprocess.Popen(CMD + ["proxies"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    runs = home / "artifacts" / "proxy_runs"
    deadline = time.time() + 300
    while time.time() < deadline and not list(runs.glob("*/*/last.ckpt")):  # <run key>/<identity>/
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    killed = [p.parent.parent.name for p in runs.glob("*/*/last.ckpt")]
    assert killed, "no proxy checkpoint appeared before the deadline"
    outputs = home / "storage" / "proxy_run"
    assert not any((outputs / f"{k}.json").exists() for k in killed)  # no result for an unfinished run
    _ok("proxies", env)
    ref_runs = {p.name: json.loads(p.read_text()) for p in _complete(ref / "storage" / "proxy_run", ".json")}
    got_runs = {p.name: json.loads(p.read_text()) for p in _complete(outputs, ".json")}
    assert set(got_runs) == set(ref_runs) and len(got_runs) == 4
    resumed = [r for r in got_runs.values() if r["train"].get("resumed_from_step", 0) > 0]
    assert resumed, "the killed run should have resumed from its checkpoint"
    for name, r in ref_runs.items():
        assert got_runs[name]["target_loss"] == pytest.approx(r["target_loss"], abs=1e-6), name

    # 3. curation: killed after a curated shard's bytes are written, before the commit
    _ok("regressor", env)
    crashed = _run("curated", _env(work, raw, cfg, METARATER_CRASH_BEFORE_COMMIT="/curated/"))
    assert crashed.returncode == -signal.SIGKILL, crashed.stdout[-4000:] + crashed.stderr[-4000:]
    assert _complete(home / "curated", ".parquet") == [] and not (home / "curated" / "_manifest.json").exists()
    _ok("curated", env)
    ref_files = _complete(ref / "curated", ".parquet")
    assert [p.name for p in _complete(home / "curated", ".parquet")] == [p.name for p in ref_files]
    for p in ref_files:
        assert pq.read_table(home / "curated" / p.name).equals(pq.read_table(p))
    a = json.loads((home / "curated" / "_manifest.json").read_text())
    b = json.loads((ref / "curated" / "_manifest.json").read_text())
    for k in ("weights", "threshold", "docs", "tokens", "per_shard", "proxy_runs", "predicted_loss"):
        assert a[k] == b[k], k
