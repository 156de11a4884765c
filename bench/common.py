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
