"""SIGKILL in the middle of ingest leaves nothing that looks complete; a rerun finishes and
equals an uninterrupted read (a real subprocess, really killed)."""
import json
import os
import signal
import subprocess
import sys
import time

import pyarrow.parquet as pq

from metarater_assets.core import corpus
from conftest import SAMPLE, read_jsonl_lines, write_config


def test_sigkill_during_ingest_then_rerun(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    lines = read_jsonl_lines(SAMPLE / "raw" / "shard-0000.jsonl.gz")
    with open(raw / "big.jsonl", "w", encoding="utf-8") as f:  # ~25 MB: takes seconds to ingest
        for i in range(20):
            for line in lines:
                obj = json.loads(line)
                obj["id"] = f"{obj['id']}-{i}"
                f.write(json.dumps(obj) + "\n")
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
