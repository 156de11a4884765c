"""`make bench` (scale part): the whole chain on pools of 1x, 4x and 16x the shared corpus.

Each pool replicates the shared corpus's documents with fresh ids (``r<k>-<id>``) into shards of
1,250 documents (1x: 16 shards, 4x: 64, 16x: 256 shards / ~320k documents) and runs every step of
the chain (n-gram proxies, cheap raters: RPv2 + DSIR) as its own `metarater run --only ...` process,
measuring its wall time and peak RSS (the largest process of the step, from wait4). Writes its
section of bench/RESULTS.md: the table per step and pool size, the checks (pool-level peak RSS at 16x within
1.5x of 1x; wall time per document not growing) and a projection to 590M documents in 60,000
shards from the measured per-document costs and bytes.

    python bench/scale.py [--sizes 1,4,16] [--workers 2]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import REPO, corpus_root, machine, write_section  # noqa: E402

DOCS_PER_SHARD = 1250
#: pool-level steps (their memory must not grow with the pool)
POOL_STEPS = {"dsir_model", "tokenizer", "score_stats", "validation_tokens", "proxy_plan", "proxy_data",
              "regressor", "optimal_weights", "curated_selection", "curated_manifest", "evaluation"}


def build_pool(dest: Path, times: int, docs_per_shard: int = DOCS_PER_SHARD) -> tuple[int, int]:
    """``times`` copies of the corpus's documents with fresh ids, in .jsonl.zst shards of
    ``docs_per_shard``; returns (documents, bytes of text)."""
    import zstandard

    from metarater_assets.core import corpus

    root = corpus_root()
    files = corpus.list_shards(str(root / "raw"))
    if (root / "incoming").is_dir():
        files += corpus.list_shards(str(root / "incoming"))
    docs = []
    for f in files:
        t = corpus.read_shard(f.uri, f.name).docs
        docs += [{"id": i, "text": x, "meta": {"source": s}} for i, x, s in
                 zip(t.column("doc_id").to_pylist(), t.column("text").to_pylist(), t.column("source").to_pylist())]
    dest.mkdir(parents=True)
    n, shard, buf = 0, 0, []

    def flush():
        nonlocal shard, buf
        with open(dest / f"pool-{shard:05d}.jsonl.zst", "wb") as fh, zstandard.ZstdCompressor(level=3).stream_writer(fh) as z:
            z.write("".join(buf).encode())
        shard += 1
        buf = []

    text_bytes = 0
    for k in range(times):
        for d in docs:
            buf.append(json.dumps({**d, "id": f"r{k}-{d['id']}"}) + "\n")
            n += 1
            text_bytes += len(d["text"].encode("utf-8"))
            if len(buf) == docs_per_shard:
                flush()
    if buf:
        flush()
    return n, text_bytes


def config(dest: Path, workers: int) -> Path:
    root = corpus_root()
    cfg = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())
    cfg["raters"] = ["rpv2", "dsir"]
    cfg.pop("prrc", None)
    cfg["model_raters"] = {"registry": str(REPO / "configs" / "raters.yaml"), "scores": []}
    cfg["dsir"]["targets"] = {n: str(root / "targets" / f"{n}.jsonl.gz") for n in ("books", "wiki", "math")}
    cfg["validation"]["sets"] = {"validation": str(root / "validation.jsonl.gz"), "reference": str(root / "reference.jsonl.gz")}
    cfg["tokenizer"]["sample_docs"] = 20000  # a fixed sample: the tokenizer's cost does not grow with the pool
    cfg["proxies"].update(kind="ngram", n=32)
    cfg.pop("confirm", None)
    cfg["evaluation"].update(preset="test", token_budget=16384, seeds=[0])
    cfg["compute"] = {"accelerator": "cpu", "precision": "32-true", "workers": workers, "shards_per_run": 64}
    p = dest / "scale.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def run_step(assets: list[str], env: dict) -> tuple[float, float, str]:
    """(wall seconds, peak RSS MB of the largest process, output) of `metarater run --only ...`."""
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "metarater_assets.cli", "run", "--stage", "evaluation",
                             "--only", ",".join(assets)], env=env, cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0 or "FAIL" in out:
        raise RuntimeError(f"step {assets} failed:\n{out[-3000:]}")
    return wall, usage.ru_maxrss / 1024, out


def run_steps(tmp: Path, cfg: Path, stage: str, label: str) -> list[dict]:
    """Every step up to ``stage`` on the pool in ``tmp/raw`` (home ``tmp/home``), each as its own
    `metarater run --only` process: [{assets, wall, rss_mb}]."""
    from metarater_assets.core.config import load_config
    from metarater_assets.defs import steps_for

    env = {**os.environ, "METARATER_HOME": str(tmp / "home"), "METARATER_RAW_URI": str(tmp / "raw"),
           "METARATER_CONFIG": str(cfg), "METARATER_LOG_LEVEL": "CRITICAL"}
    env.pop("DAGSTER_HOME", None)
    steps = []
    for assets, _ in steps_for(load_config(str(cfg)), stage):
        wall, rss, _ = run_step(assets, env)
        steps.append({"assets": assets, "wall": wall, "rss_mb": rss})
        print(f"  {label} {'+'.join(assets)}: {wall:.1f}s, {rss:,.0f} MB", flush=True)
    return steps


def du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


def measure(times: int, workers: int, keep: Path | None) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix=f"metarater-scale-{times}x-"))
    try:
        docs, text_bytes = build_pool(tmp / "raw", times)
        cfg = config(tmp, workers)
        steps = run_steps(tmp, cfg, "evaluation", f"{times}x")
        for st in steps:
            st["pool_level"] = any(a in POOL_STEPS for a in st["assets"])
        storage = {p.name: du(p) for p in (tmp / "home" / "storage").iterdir() if p.is_dir()}
        storage["artifacts"] = du(tmp / "home" / "artifacts")
        stats = json.loads((tmp / "home" / "storage" / "score_stats.json").read_text())
        return {"times": times, "docs": docs, "text_bytes": text_bytes, "shards": stats["shards"],
                "tokens": stats["tokens"], "steps": steps, "storage": storage}
    finally:
        if keep is None:
            shutil.rmtree(tmp, ignore_errors=True)


def report(results: list[dict], workers: int) -> str:
    sizes = [r["times"] for r in results]
    head = "| step | " + " | ".join(f"{s}x wall s (ms/1k docs) | {s}x peak RSS MB" for s in sizes) + " |"
    lines = [head, "|" + "---|" * (1 + 2 * len(sizes))]
    checks = []
    for i, st in enumerate(results[0]["steps"]):
        cells = []
        for r in results:
            s = r["steps"][i]
            cells.append(f"{s['wall']:.1f} ({1e6 * s['wall'] / r['docs']:.0f})")
            cells.append(f"{s['rss_mb']:,.0f}")
        name = "+".join(st["assets"]) + (" *(pool)*" if st["pool_level"] else "")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
        if st["pool_level"] and len(results) > 1:
            ratio = results[-1]["steps"][i]["rss_mb"] / results[0]["steps"][i]["rss_mb"]
            checks.append((name, ratio))
    tot = [sum(s["wall"] for s in r["steps"]) for r in results]
    lines.append("| **total** | " + " | ".join(f"{t:.0f} ({1e6 * t / r['docs']:.0f}) | - " for t, r in zip(tot, results)) + "|")
    pools = ", ".join(f"{r['times']}x: {r['docs']:,} docs, {r['shards']} shards, {r['tokens'] / 1e6:.1f}M tokens" for r in results)
    worst = max(checks, key=lambda c: c[1]) if checks else ("-", 1.0)
    per_doc = [t / r["docs"] for t, r in zip(tot, results)]
    text = [f"Machine: {machine()}; {workers} worker process(es), 64 shards per run, SQLite Dagster instance.",
            f"Pools: {pools}.", "", *lines, "",
            f"Peak RSS of the pool-level steps, {sizes[-1]}x / {sizes[0]}x: worst {worst[1]:.2f}x ({worst[0]}); "
            f"{'within' if worst[1] <= 1.5 else 'NOT within'} 1.5x.",
            "Wall time per document, total: " + " -> ".join(f"{1e6 * x:.0f} ms/1k docs" for x in per_doc)
            + (" (not growing)" if per_doc[-1] <= per_doc[0] * 1.1 else " (GROWING)") + "."]
    text += ["", projection(results[-1], workers)]
    return "\n".join(text)


#: SlimPajama-627B, the projection's target: documents, shards, text bytes and tokens per document
TARGET = {"docs": 590e6, "shards": 60000, "bytes_per_doc": 4500, "tokens_per_doc": 1060}
#: per-shard steps (their cost follows the text, projected by bytes); the rest by documents
PER_SHARD = {"raw_docs", "rpv2_scores", "dsir_counts", "dsir_scores", "doc_tokens", "shard_index", "curated_corpus"}


def projection(r: dict, workers: int) -> str:
    """590M documents in 60,000 shards (SlimPajama-627B), from the largest measured pool: the
    per-shard steps by bytes of text (their cost is reading, splitting and hashing text), the
    pool-level ones by documents (they read a few numbers per document)."""
    N, S = TARGET["docs"], TARGET["shards"]
    docs, nbytes = r["docs"], r["text_bytes"]
    b_doc, t_doc = nbytes / docs, r["tokens"] / docs
    scale_bytes = N * TARGET["bytes_per_doc"] / nbytes
    rows = ["| step | projected by | CPU-hours at 590M docs |", "|---|---|---|"]
    per_shard_total = 0.0
    for s in r["steps"]:
        by_bytes = any(a in PER_SHARD for a in s["assets"])
        hours = s["wall"] * workers * (scale_bytes if by_bytes else N / docs) / 3600
        per_shard_total += hours if by_bytes else 0.0
        rows.append(f"| {'+'.join(s['assets'])} | {'bytes' if by_bytes else 'documents'} | {hours:,.1f} |")
    bytes_per_doc = {k: v / docs for k, v in r["storage"].items()}
    storage = ", ".join(f"{k} {v * N / 1e12:.2f} TB" for k, v in sorted(bytes_per_doc.items(), key=lambda kv: -kv[1]) if v * N > 1e9)
    total = sum(bytes_per_doc.values()) * N / 1e12
    return "\n".join([
        f"Projection to SlimPajama-627B: {N / 1e6:.0f}M documents of about {TARGET['bytes_per_doc']:,} bytes and "
        f"{TARGET['tokens_per_doc']:,} tokens in {S:,} shards (the measured pool: {b_doc:,.0f} bytes and {t_doc:,.0f} "
        f"tokens per document, so {TARGET['bytes_per_doc'] / b_doc:.1f}x the text per document). Per-shard steps are "
        "projected by bytes of text, pool-level steps by documents. Per-shard steps run in batches of 64 shards and "
        "stream each shard in row batches, so a step's memory is one row batch plus a model, neither the shard nor "
        "the pool (bench/shard_memory.py); pool-level steps hold per-shard summaries (O(shards)), histograms "
        "(O(vectors x bins)) and one boundary bin, never the pool. These CPU-hours exclude the model raters and "
        "transformer proxies (GPU work) and assume the measured rates hold:", "",
        *rows, "", f"Per-shard steps: about {per_shard_total:,.0f} CPU-hours in all.", "",
        f"Storage (from the measured bytes per document, not rescaled to the longer documents): {storage}; "
        f"{total:.1f} TB in all."])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="1,4,16")
    ap.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--keep", action="store_true", help="keep the pools' homes (for inspection)")
    args = ap.parse_args()
    results = []
    for s in [int(x) for x in args.sizes.split(",")]:
        print(f"== pool {s}x", flush=True)
        results.append(measure(s, args.workers, HERE / "out" if args.keep else None))
    text = report(results, args.workers)
    print(text)
    write_section("scale", "## Scale: the whole chain at 1x, 4x and 16x the shared corpus (`bench/scale.py`)\n\n"
                  + text)


if __name__ == "__main__":
    main()
