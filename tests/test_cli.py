import json
from pathlib import Path

import pytest
import subprocess
import sys

import pyarrow.parquet as pq

from metarater_assets.cli import main
from metarater_assets.core.signals import SIGNAL_NAMES
from conftest import SAMPLE


def test_score_command_writes_all_scores(env_home, tmp_path, capsys):
    out = tmp_path / "scores.parquet"
    rc = main(["score", "--raters", "rpv2,dsir", "--in", str(SAMPLE / "raw" / "shard-0004.jsonl"),
               "--out", str(out)])
    assert rc == 0
    t = pq.read_table(out)
    assert t.num_rows == 400
    assert t.column_names == ["doc_id", *SIGNAL_NAMES, "dsir_books", "dsir_wiki", "dsir_math"]
    assert "scored 400 docs" in capsys.readouterr().out


def test_score_writes_the_format_its_out_names_and_refuses_an_unknown_one(env_home, tmp_path, capsys):
    """--out scores.jsonl / .jsonl.gz / .jsonl.zst are JSON lines (plain, gzip, zstd), one object per
    document; an extension it does not know is refused before any scoring."""
    import gzip

    import zstandard

    inp = str(SAMPLE / "raw" / "shard-0004.jsonl")
    readers = {"s.jsonl": lambda p: open(p, "rb").read(), "s.jsonl.gz": lambda p: gzip.open(p, "rb").read(),
               "s.jsonl.zst": lambda p: zstandard.ZstdDecompressor().stream_reader(open(p, "rb")).read()}
    for name, read in readers.items():
        assert main(["score", "--raters", "rpv2", "--in", inp, "--out", str(tmp_path / name)]) == 0
        rows = [json.loads(line) for line in read(tmp_path / name).decode("utf-8").splitlines()]
        assert len(rows) == 400 and list(rows[0]) == ["doc_id", *SIGNAL_NAMES], name
        assert rows[0]["doc_id"] and isinstance(rows[0]["rps_doc_word_count"], int)
    capsys.readouterr()
    assert main(["score", "--raters", "rpv2", "--in", inp, "--out", str(tmp_path / "s.csv")]) == 2
    err = capsys.readouterr().err
    assert "unknown output format" in err and ".jsonl.gz" in err and not (tmp_path / "s.csv").exists()


def test_score_command_rejects_unknown_rater(env_home, tmp_path, capsys):
    rc = main(["score", "--raters", "nope", "--in", str(SAMPLE / "raw" / "shard-0004.jsonl"),
               "--out", str(tmp_path / "x.parquet")])
    assert rc == 2 and "unknown rater" in capsys.readouterr().err


def test_bad_config_is_a_clear_error_not_a_traceback(env_home, tmp_path, monkeypatch):
    bad = tmp_path / "bad.yaml"
    bad.write_text("raters: [rpv2, telepathy]\n")
    monkeypatch.setenv("METARATER_CONFIG", str(bad))
    out = subprocess.run([sys.executable, "-m", "metarater_assets.cli", "run", "--stage", "ingest"],
                         capture_output=True, text=True)
    assert out.returncode == 2
    assert "unknown rater(s) ['telepathy']" in out.stderr and "Traceback" not in out.stderr


def test_report_json_after_ingest(env_home, capsys):
    assert main(["run", "--stage", "ingest"]) == 0
    capsys.readouterr()
    assert main(["report", "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["ingest"]["shards"] == 2 and rep["ingest"]["rows_ok"] == 300


def test_score_dsir_uses_the_pools_model_when_there_is_one(env_home, tmp_path, capsys):
    out = tmp_path / "s.parquet"
    inp = str(SAMPLE / "raw" / "shard-0004.jsonl")
    assert main(["score", "--raters", "dsir", "--in", inp, "--out", str(out)]) == 0
    assert "the raw distribution is this file's own" in capsys.readouterr().out
    alone = pq.read_table(out).column("dsir_wiki").to_numpy()
    assert main(["run", "--stage", "scores"]) == 0
    capsys.readouterr()
    assert main(["score", "--raters", "dsir", "--in", inp, "--out", str(out)]) == 0
    assert "the pool's fitted dsir_model" in capsys.readouterr().out
    pooled = pq.read_table(out).column("dsir_wiki").to_numpy()
    # the pool's model: the same scores the pool's own dsir_scores would give this text
    from metarater_assets.core import corpus
    from metarater_assets.scoring import load_dsir_model

    texts = corpus.read_shard(inp).docs.column("text").to_pylist()
    import numpy as np

    np.testing.assert_allclose(pooled, load_dsir_model(env_home.storage_uri).score(texts)["wiki"])
    assert not np.allclose(pooled, alone)


def test_score_precomputed_writes_the_25_mapped_scores(env_home, tmp_path, capsys):
    from conftest import REPO

    out = tmp_path / "p.parquet"
    rc = main(["score", "--raters", "precomputed", "--config", str(REPO / "configs" / "slimpajama-meta-rater.yaml"),
               "--in", str(REPO / "data" / "released-sample" / "raw" / "example_train_1.parquet"), "--out", str(out)])
    assert rc == 0 and "25 score(s) read from the file's columns" in capsys.readouterr().out
    t = pq.read_table(out)
    assert t.num_rows == 100 and len(t.column_names) == 26 and t.column_names[0] == "doc_id"
    assert {"qurating_educational_value", "wanjuan_fluency", "professionalism"} <= set(t.column_names)


def test_a_bad_shard_is_named_once_without_a_trace(env_home, tmp_path):
    """The CLI names a bad shard on one line, no trace; the trace stays in the failed run's event log."""
    import gzip

    raw = Path(env_home.raw_uri)
    good = gzip.decompress((raw / "shard-0000.jsonl.gz").read_bytes())
    (raw / "broken.jsonl.gz").write_bytes(gzip.compress(good)[:2000])
    (raw / "notext.parquet").write_bytes(_parquet_without_text())
    out = subprocess.run([sys.executable, "-m", "metarater_assets.cli", "run", "--stage", "ingest"],
                         capture_output=True, text=True, timeout=600)
    text = out.stdout + out.stderr
    assert out.returncode == 1, text  # the others went on, and the command says something failed
    assert "Traceback" not in text and "File \"" not in text
    # once on its FAIL line, once in the closing summary
    assert text.count("broken.jsonl.gz: truncated or corrupt gzip stream") == 2
    assert text.count("Parquet shard has no 'text' column") == 2
    assert "failed: raw_docs, raw_quarantine [broken.jsonl.gz]" in text
    # the closing summary: the good shards went on, each failure with its assets and error
    assert "done: 4 asset partition(s) materialised" in out.stdout and ", 2 failed" in out.stdout
    summary = out.stdout.split("done: ", 1)[1].splitlines()
    line = "  failed: raw_docs, raw_quarantine [broken.jsonl.gz]: ShardError: broken.jsonl.gz: truncated or corrupt gzip"
    assert [s_ for s_ in summary if s_.startswith(line)], summary
    assert summary[-1].startswith("2 failure(s)")
    # the trace is kept where it belongs: in the failed run's event log
    import dagster as dg

    instance = dg.DagsterInstance.get()  # the DAGSTER_HOME the CLI used (METARATER_HOME/dagster)
    failed = instance.get_run_records(dg.RunsFilter(statuses=[dg.DagsterRunStatus.FAILURE],
                                                    tags={"dagster/partition": "broken.jsonl.gz"}))
    assert len(failed) == 1
    run_id = failed[0].dagster_run.run_id
    records = instance.fetch_run_status_changes(dg.DagsterEventType.RUN_FAILURE, limit=100).records
    (event,) = [r.event_log_entry.dagster_event for r in records if r.run_id == run_id]
    chain, err = [], event.job_failure_data.error
    while err is not None:
        chain.append(err)
        err = err.cause
    shard_error = [e for e in chain if e.cls_name == "ShardError"]
    assert shard_error and "broken.jsonl.gz: truncated or corrupt gzip stream" in shard_error[0].message
    frames = "".join(line for e in chain for line in e.stack)
    assert 'core/corpus.py", line' in frames and "in _scan" in frames  # the whole stack, down to where it failed
    assert "EOFError" in [e.cls_name for e in chain]  # and what caused it


def _parquet_without_text() -> bytes:
    import io

    import pyarrow as pa

    buf = io.BytesIO()
    pq.write_table(pa.table({"body": ["x"]}), buf)
    return buf.getvalue()


def test_ui_started_in_the_background_stops_on_sigterm_and_on_sigint_with_its_children(env_home, tmp_path):
    """`metarater ui &` from a shell (which ignores SIGINT in background jobs): SIGTERM stops one,
    SIGINT the other, each with every process dagster dev started (two UIs at once)."""
    import os
    import signal
    import time
    import urllib.request

    from conftest import descendants, free_port

    started = []
    for name in ("SIGTERM", "SIGINT"):
        port = free_port()
        pidfile = tmp_path / f"{name}.pid"
        # each UI its own home and instance (DAGSTER_HOME unset: $METARATER_HOME/dagster), both fresh,
        # so each `metarater ui` creates its instance's tables before dagster dev's webserver and daemon
        # start (they raced on a fresh SQLite instance: "table jobs already exists")
        shell = subprocess.Popen(["bash", "-c", f"unset DAGSTER_HOME; METARATER_HOME={tmp_path / name}-home "
                                                f"{sys.executable} -m metarater_assets.cli ui --port {port} "
                                                f"> {tmp_path / name}.log 2>&1 & echo $! > {pidfile}; wait"],
                                 start_new_session=True)
        started.append((name, port, pidfile, shell))
    try:
        deadline = time.time() + 240
        procs = {}
        for name, port, pidfile, _ in started:
            while not pidfile.exists() or not pidfile.read_text().strip():
                time.sleep(0.2)
            while True:
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=2)
                    break
                except OSError:
                    assert time.time() < deadline, (tmp_path / f"{name}.log").read_text()[-3000:]
                    time.sleep(1)
            pid = int(pidfile.read_text())
            procs[name] = (pid, descendants(pid))
            assert procs[name][1], "dagster dev started no processes"
        for name, (pid, _) in procs.items():
            os.kill(pid, getattr(signal, name))
        end = time.time() + 60
        while time.time() < end and any(_alive(p) or any(map(_alive, kids)) for p, kids in procs.values()):
            time.sleep(0.5)
        for name, (pid, kids) in procs.items():
            assert not _alive(pid), f"metarater ui ignored {name}"
            assert not [c for c in kids if _alive(c)], f"dagster dev's processes outlived {name}"
    finally:  # also on failure: every process each UI started, not just the shell's group
        for name, _, pidfile, shell in started:
            text = pidfile.read_text().strip() if pidfile.exists() else ""
            kids = descendants(int(text)) if text else []
            if text and _alive(int(text)):
                os.kill(int(text), signal.SIGTERM)
            end = time.time() + 30
            while time.time() < end and any(map(_alive, kids)):
                time.sleep(0.5)
            for k in kids:
                if _alive(k):
                    os.kill(k, signal.SIGKILL)
            os.killpg(shell.pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False
