"""`make bench` (shard-memory part): peak RSS of every step on a one-shard pool of 20,000 and of
200,000 documents, side by side (#28: a step's memory must not grow with its shard's size).

The shard replicates the shared corpus's documents with fresh ids (``r<k>-<id>``) into one
.jsonl.zst file; the chain (RPv2 + DSIR raters, n-gram proxies) runs to the curated corpus, each step
as its own `metarater run --only ...` process, its peak RSS the largest process of the step (wait4).
Per-shard steps read and write a shard in row batches (``core.storage.SHARD_BATCH_ROWS``), pool
passes in batches of ``core.scan.batch_rows``; the check: every step at 200k within 1.3x of 20k.

    python bench/shard_memory.py [--sizes 20000,200000]
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import corpus_root, machine, write_section  # noqa: E402
from scale import config, run_steps  # noqa: E402

#: per-shard steps (the rest are pool-level)
PER_SHARD = {"raw_docs", "rpv2_scores", "dsir_counts", "dsir_scores", "doc_tokens", "shard_index",
             "curated_corpus"}


def build_shard(dest: Path, docs: int) -> int:
    """One .jsonl.zst shard of ``docs`` documents: the corpus's documents, repeated with fresh ids."""
    import zstandard

    from metarater_assets.core import corpus

    root = corpus_root()
    files = corpus.list_shards(str(root / "raw")) + corpus.list_shards(str(root / "incoming"))
    base = []
    for f in files:
        t = corpus.read_shard(f.uri, f.name).docs
        base += [(i, x, s) for i, x, s in zip(t.column("doc_id").to_pylist(), t.column("text").to_pylist(),
                                               t.column("source").to_pylist())]
    dest.mkdir(parents=True)
    n = 0
    with open(dest / "big-00000.jsonl.zst", "wb") as fh, zstandard.ZstdCompressor(level=3).stream_writer(fh) as z:
        while n < docs:
            i, x, s = base[n % len(base)]
            z.write((json.dumps({"id": f"r{n // len(base)}-{i}", "text": x, "meta": {"source": s}}) + "\n").encode())
            n += 1
    return n


def measure(docs: int) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix=f"metarater-shardmem-{docs}-"))
    try:
        build_shard(tmp / "raw", docs)
        cfg_path = config(tmp, 1)
        cfg = yaml.safe_load(cfg_path.read_text())
        cfg["compute"]["shards_per_run"] = 1
        cfg_path.write_text(yaml.safe_dump(cfg))
        steps = run_steps(tmp, cfg_path, "curated", f"{docs:,} docs")
        for st in steps:
            st["per_shard"] = any(a in PER_SHARD for a in st["assets"])
        text_mb = sum(p.stat().st_size for p in (tmp / "home" / "storage" / "raw_docs").iterdir()) / 1e6
        return {"docs": docs, "steps": steps, "raw_docs_mb": text_mb}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def report(results: list[dict]) -> str:
    a, b = results[0], results[-1]
    lines = [f"| step | {a['docs']:,} docs: wall s | peak RSS MB | {b['docs']:,} docs: wall s | peak RSS MB | RSS ratio |",
             "|---|---|---|---|---|---|"]
    worst = ("-", 0.0)
    for sa, sb in zip(a["steps"], b["steps"]):
        ratio = sb["rss_mb"] / sa["rss_mb"]
        name = "+".join(sa["assets"]) + ("" if sa["per_shard"] else " *(pool)*")
        lines.append(f"| {name} | {sa['wall']:.1f} | {sa['rss_mb']:,.0f} | {sb['wall']:.1f} | {sb['rss_mb']:,.0f} "
                     f"| {ratio:.2f}x |")
        if ratio > worst[1]:
            worst = (name, ratio)
    verdict = "within" if worst[1] <= 1.3 else "NOT within"
    return "\n".join([
        f"Machine: {machine()}; one worker process, one shard per run, SQLite Dagster instance. One shard of "
        f"{a['docs']:,} and of {b['docs']:,} documents ({b['docs'] // a['docs']}x; raw_docs {a['raw_docs_mb']:.0f} MB "
        f"and {b['raw_docs_mb']:.0f} MB of zstd Parquet).", "", *lines, "",
        f"Worst peak-RSS ratio {worst[1]:.2f}x ({worst[0]}): {verdict} the 1.3x target."])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="20000,200000")
    args = ap.parse_args()
    results = []
    for n in [int(x) for x in args.sizes.split(",")]:
        print(f"== one shard of {n:,} documents", flush=True)
        results.append(measure(n))
    text = report(results)
    print(text)
    write_section("shard-memory", "## Memory per shard: one shard of 20k and of 200k documents (`bench/shard_memory.py`)\n\n"
                  + text)


if __name__ == "__main__":
    main()
