"""SIGKILL in the middle of ingest leaves nothing that looks complete; a rerun finishes and
equals an uninterrupted read (a real subprocess, really killed)."""
import os
import signal
import subprocess
import sys
import time

import pyarrow.parquet as pq

from metarater_assets.core import corpus
from conftest import SAMPLE, read_jsonl_lines, write_config, write_copies


def test_sigkill_during_ingest_then_rerun(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    lines = read_jsonl_lines(SAMPLE / "raw" / "shard-0000.jsonl.gz")
    write_copies(raw / "big.jsonl", lines, 20)  # ~25 MB: takes seconds to ingest
    staging = tmp_path / "tmpdir"
    staging.mkdir()
    env = {**os.environ, "METARATER_HOME": str(tmp_path / "home"), "METARATER_RAW_URI": str(raw),
           "METARATER_CONFIG": str(write_config(tmp_path / "c.yaml")), "TMPDIR": str(staging)}
    env.pop("DAGSTER_HOME", None)
    cmd = [sys.executable, "-m", "metarater_assets.cli", "run", "--stage", "ingest"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline and not list(staging.glob("metarater-ingest-*/docs.parquet")):
        time.sleep(0.05)
    assert list(staging.glob("metarater-ingest-*/docs.parquet")), "ingest never started writing"
    time.sleep(0.3)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    out = tmp_path / "home" / "storage" / "raw_docs"
    assert not (out / "big.jsonl.parquet").exists()  # nothing that looks complete
    # rerun: finishes, and equals an uninterrupted read
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert pq.read_table(out / "big.jsonl.parquet").equals(corpus.read_shard(str(raw / "big.jsonl")).docs)


def _footer_identity(path) -> bytes | None:
    try:
        return (pq.read_schema(path).metadata or {}).get(b"metarater.identity")
    except (FileNotFoundError, OSError):
        return None


def test_sigkill_after_the_first_commit_of_a_batch_of_changed_files(tmp_path, monkeypatch):
    """Both files of a batch change; the run is killed after the first shard's new raw_docs is
    committed, before the second's. The rerun redoes exactly what is stale, and every per-shard
    output then equals a fresh home's on the same files (before the identity ledger, the first
    shard's new fingerprint was recorded before the batch committed, so its scores were never
    recomputed and paired new text with old scores)."""
    raw = tmp_path / "raw"
    raw.mkdir()
    lines = read_jsonl_lines(SAMPLE / "raw" / "shard-0000.jsonl.gz")
    write_copies(raw / "a.jsonl", lines[:40], 1, "v1")
    write_copies(raw / "b.jsonl", lines, 4, "v1")  # ~5 MB: long enough to ingest to be killed inside
    cfg = write_config(tmp_path / "c.yaml")
    env = {**os.environ, "METARATER_HOME": str(tmp_path / "home"), "METARATER_RAW_URI": str(raw),
           "METARATER_CONFIG": str(cfg)}
    env.pop("DAGSTER_HOME", None)
    cmd = [sys.executable, "-m", "metarater_assets.cli", "run", "--stage", "scores"]
    import dagster as dg

    from metarater_assets.runner import run_pipeline
    from resources import Settings

    def run(home, refit=False, ephemeral=False):  # `metarater run --stage scores`, in this process
        s = Settings(home=str(home), raw_uri=str(raw), config_path=str(cfg))
        monkeypatch.delenv("DAGSTER_HOME", raising=False)
        s.ensure_dagster_home()
        with (dg.DagsterInstance.ephemeral() if ephemeral else dg.DagsterInstance.get()) as instance:
            summary = run_pipeline(s, "scores", instance=instance, echo=lambda m: None, refit=refit)
        assert not summary.failed and not summary.blocked, summary

    run(tmp_path / "home")
    docs = tmp_path / "home" / "storage" / "raw_docs"
    before = {n: _footer_identity(docs / f"{n}.parquet") for n in ("a.jsonl", "b.jsonl")}
    write_copies(raw / "a.jsonl", lines[40:90], 1, "v2")
    write_copies(raw / "b.jsonl", lines[::-1], 4, "v2")
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline and _footer_identity(docs / "a.jsonl.parquet") == before["a.jsonl"]:
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert _footer_identity(docs / "a.jsonl.parquet") != before["a.jsonl"], "the first commit never happened"
    assert _footer_identity(docs / "b.jsonl.parquet") == before["b.jsonl"], "killed too late: b was committed too"
    # the files changed: --refit refits the DSIR raw distribution too, as a fresh home fits it
    run(tmp_path / "home", refit=True)
    run(tmp_path / "fresh", ephemeral=True)
    for asset in ("raw_docs", "raw_quarantine", "rpv2_scores", "dsir_counts", "dsir_scores"):
        for n in ("a.jsonl", "b.jsonl"):
            got = pq.read_table(tmp_path / "home" / "storage" / asset / f"{n}.parquet")
            want = pq.read_table(tmp_path / "fresh" / "storage" / asset / f"{n}.parquet")
            assert got.equals(want), f"{asset}[{n}] differs from a fresh run's"
            assert got.num_rows == want.num_rows and (got.num_rows > 0 or asset == "raw_quarantine")
