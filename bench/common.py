"""Shared helpers for the benchmarks: the pool, its scores and tokens, machine description."""
from __future__ import annotations

import os
import platform
import statistics
import time
from pathlib import Path

import pyarrow as pa

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared" / "corpus"


def corpus_root() -> Path:
    """METARATER_BENCH_CORPUS, else the full shared corpus when it is beside the repo, else the
    bundled sample."""
    if os.environ.get("METARATER_BENCH_CORPUS"):
        return Path(os.environ["METARATER_BENCH_CORPUS"])
    return SHARED if (SHARED / "raw").is_dir() else REPO / "data" / "sample"


def machine() -> str:
    import torch

    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
            f"Python {platform.python_version()}, torch {torch.__version__}")


def code_commit() -> str:
    """The checked-out commit (short), "+changes" when the code differs from it: which code a
    figure was measured with."""
    import subprocess

    try:
        head = subprocess.check_output(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, text=True).strip()
        # the results file the benchmarks write is output, not code
        dirty = subprocess.call(["git", "diff", "--quiet", "HEAD", "--", "metarater_assets", "resources", "bench",
                                 "configs", ":(exclude)bench/RESULTS.md"], cwd=REPO)
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return head + ("+changes" if dirty else "")


def timed(fn, reps: int = 3):
    """(median, min, max) seconds of ``reps`` calls, and the last result."""
    times, out = [], None
    for _ in range(reps):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return (statistics.median(times), min(times), max(times)), out


def load_pool(root: Path | None = None, shards: int | None = None) -> pa.Table:
    from metarater_assets.core import corpus

    root = root or corpus_root()
    files = corpus.list_shards(str(root / "raw"))[:shards]
    return pa.concat_tables([corpus.read_shard(f.uri, f.name).docs for f in files])


RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def write_section(name: str, text: str, path: Path = RESULTS) -> None:
    """Replace (or append) the section ``name`` of bench/RESULTS.md, leaving the others as they
    are: `make bench` runs bench/run.py, bench/control.py and bench/scale.py, each owning one
    section. The file is written to a temporary name and moved into place."""
    begin, end = f"<!-- begin {name} -->", f"<!-- end {name} -->"
    block = f"{begin}\n{text.rstrip()}\n{end}\n"
    old = path.read_text() if path.exists() else "# Benchmarks\n\n`make bench` writes this file: one section per script.\n\n"
    if begin in old and end in old:
        new = old[:old.index(begin)] + block + old[old.index(end) + len(end) + 1:]
    else:
        new = old.rstrip() + "\n\n" + block
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text(new)
    tmp.replace(path)


def pg_bin(name: str) -> str | None:
    import shutil

    found = shutil.which(name)
    if found:
        return found
    for d in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (d / name).exists():
            return str(d / name)
    return None


class PostgresServer:
    """A throwaway PostgreSQL server on 127.0.0.1 (Debian's `postgresql` binaries, as the test
    suite's): ``with PostgresServer() as pg: url = pg.database("name")``."""

    def __enter__(self):
        import shutil
        import socket
        import subprocess
        import tempfile

        self.initdb, self.pg_ctl = pg_bin("initdb"), pg_bin("pg_ctl")
        if not self.initdb or not self.pg_ctl:
            raise RuntimeError("PostgreSQL server binaries not found: apt-get install postgresql")
        self.data = Path(tempfile.mkdtemp(prefix="metarater-bench-pg-"))
        self.run_as = []
        if os.geteuid() == 0:  # PostgreSQL refuses to run as root
            self.run_as = ["runuser", "-u", "postgres", "--"]
            shutil.chown(self.data, "postgres", "postgres")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        subprocess.run(self.run_as + [self.initdb, "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8"],
                       check=True, capture_output=True)
        subprocess.run(self.run_as + [self.pg_ctl, "-D", str(self.data), "-w", "-l", str(self.data / "log"), "-o",
                                      f"-p {self.port} -k {self.data} -c listen_addresses=127.0.0.1", "start"],
                       check=True, capture_output=True)
        return self

    def database(self, name: str) -> str:
        import subprocess

        subprocess.run(self.run_as + [pg_bin("createdb") or "createdb", "-h", "127.0.0.1", "-p", str(self.port),
                                      "-U", "postgres", name], check=True, capture_output=True)
        return f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/{name}"

    def __exit__(self, *exc):
        import shutil
        import subprocess

        subprocess.run(self.run_as + [self.pg_ctl, "-D", str(self.data), "-m", "fast", "stop"], capture_output=True)
        shutil.rmtree(self.data, ignore_errors=True)
