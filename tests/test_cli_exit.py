"""`metarater run` exits non-zero when anything failed, closing with what failed and why."""
import gzip
import subprocess
import sys
from pathlib import Path

from conftest import REPO


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "metarater_assets.cli", *args], capture_output=True, text=True,
                          timeout=600, cwd=REPO)


def test_a_failed_shard_fails_the_run_with_a_summary(env_home):
    raw = Path(env_home.raw_uri)
    full = gzip.compress(gzip.decompress((raw / "shard-0000.jsonl.gz").read_bytes()))
    (raw / "broken.jsonl.gz").write_bytes(full[: len(full) // 2])
    out = _run("run", "--stage", "ingest")
    text = out.stdout + out.stderr
    assert out.returncode == 1, text
    assert "Traceback" not in text
    # the good shards went on; the closing summary names the bad one, its assets and the error
    assert "done: 4 asset partition(s) materialised" in out.stdout and ", 1 failed" in out.stdout
    summary = out.stdout.split("done: ", 1)[1].splitlines()
    line = "  failed: raw_docs, raw_quarantine [broken.jsonl.gz]: ShardError: broken.jsonl.gz: truncated or corrupt gzip"
    assert [s for s in summary if s.startswith(line)], summary
    assert summary[-1].startswith("1 failure(s)")


def test_a_clean_run_exits_zero(env_home):
    out = _run("run", "--stage", "ingest")
    assert out.returncode == 0, out.stdout + out.stderr
    assert ", 0 failed" in out.stdout and "failure(s)" not in out.stdout
