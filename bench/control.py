"""`make bench` (control-plane part): the cost of many shards.

The same 20,000 documents of the shared corpus as 10 files of 2,000 and as 1,000 files of 20,
through `metarater run --stage scores` (ingest, RPv2, DSIR; cheap raters, as a user's CLI run), then
a no-op rerun at 1,000 files; once with a partition per file (the default) and once with small
files packed into partitions (`ingest.pack_bytes`). Prints the wall times, their ratio and the
overhead per extra file, and writes its section of bench/RESULTS.md.

    python bench/control.py [--workers 2] [--docs 20000] [--instances sqlite,postgres] [--pack 2MB]
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import REPO, PostgresServer, corpus_root, machine, write_section  # noqa: E402


def docs(n: int) -> list[str]:
    from metarater_assets.core import corpus

    root = corpus_root()
    files = corpus.list_shards(str(root / "raw"))
    if (root / "incoming").is_dir():
        files += corpus.list_shards(str(root / "incoming"))
    out = []
    for f in files:
        t = corpus.read_shard(f.uri, f.name).docs
        out += [json.dumps({"id": i, "text": x, "meta": {"source": s}}) + "\n" for i, x, s in
                zip(t.column("doc_id").to_pylist(), t.column("text").to_pylist(), t.column("source").to_pylist())]
        if len(out) >= n:
            break
    return out[:n]


def write_pool(dest: Path, lines: list[str], shards: int) -> None:
    dest.mkdir(parents=True)
    per = len(lines) // shards
    for i in range(shards):
        (dest / f"part-{i:05d}.jsonl").write_text("".join(lines[i * per:(i + 1) * per]))


def config(dest: Path, workers: int, pack: str | None = None) -> Path:
    root = corpus_root()
    cfg = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())
    cfg["raters"] = ["rpv2", "dsir"]
    cfg.pop("prrc", None)
    cfg.pop("confirm", None)
    cfg["model_raters"] = {"registry": str(REPO / "configs" / "raters.yaml"), "scores": []}
    cfg["dsir"]["targets"] = {n: str(root / "targets" / f"{n}.jsonl.gz") for n in ("books", "wiki", "math")}
    cfg["validation"]["sets"] = {"validation": str(root / "validation.jsonl.gz"), "reference": str(root / "reference.jsonl.gz")}
    cfg["compute"] = {"accelerator": "cpu", "precision": "32-true", "workers": workers, "shards_per_run": 100}
    if pack:
        cfg["ingest"] = {"pack_bytes": pack}
    p = dest / f"control-{'packed' if pack else 'per-file'}.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def run(home: Path, raw: Path, cfg: Path, pg_url: str | None = None) -> tuple[float, str]:
    if pg_url and not (home / "dagster" / "dagster.yaml").exists():  # the CLI keeps an existing dagster.yaml
        (home / "dagster").mkdir(parents=True)
        (home / "dagster" / "dagster.yaml").write_text(
            f"storage:\n  postgres:\n    postgres_url: \"{pg_url}\"\ntelemetry:\n  enabled: false\n")
    env = {**os.environ, "METARATER_HOME": str(home), "METARATER_RAW_URI": str(raw), "METARATER_CONFIG": str(cfg)}
    env.pop("DAGSTER_HOME", None)
    t = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "metarater_assets.cli", "run", "--stage", "scores"], env=env,
                         capture_output=True, text=True, cwd=REPO)
    wall = time.perf_counter() - t
    if out.returncode != 0 or "FAIL" in out.stdout:
        raise RuntimeError(out.stdout[-3000:] + out.stderr[-3000:])
    return wall, out.stdout


def event_cost(home: Path, pg_url: str | None, n: int = 200) -> float:
    """Milliseconds to record one asset materialisation (a partition of a dynamic partitions
    asset) on the instance, through Dagster's public API, as each per-shard asset partition does."""
    code = f"""
import os, time, dagster as dg
from resources.settings import sqlite_commit_mode
sqlite_commit_mode()
inst = dg.DagsterInstance.get()
inst.add_dynamic_partitions("s", [f"p{{i}}" for i in range({n})])
for i in range(10):
    inst.report_runless_asset_event(dg.AssetMaterialization("warm", partition=f"p{{i}}"))
t = time.perf_counter()
for i in range({n}):
    inst.report_runless_asset_event(dg.AssetMaterialization("a", partition=f"p{{i}}", metadata={{"rows": i}}))
print(1000 * (time.perf_counter() - t) / {n})
"""
    d = home / "dagster"
    d.mkdir(parents=True)
    (d / "dagster.yaml").write_text(
        (f"storage:\n  postgres:\n    postgres_url: \"{pg_url}\"\n" if pg_url else "") + "telemetry:\n  enabled: false\n")
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, "DAGSTER_HOME": str(d)}, cwd=REPO,
                         capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def partitions(out: str) -> int:
    m = re.search(r"registered (\d+) new shard", out)
    if not m:
        raise RuntimeError("the run registered no shards:\n" + out[-2000:])
    return int(m.group(1))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--docs", type=int, default=20000)
    ap.add_argument("--instances", default="sqlite,postgres", help="comma-separated: sqlite, postgres")
    ap.add_argument("--pack", default="2MB", help="ingest.pack_bytes of the packed rows")
    args = ap.parse_args()
    lines = docs(args.docs)
    n = len(lines)
    tmp = Path(tempfile.mkdtemp(prefix="metarater-control-"))
    rows, events = [], {}
    try:
        layouts = {"a partition per file": config(tmp, args.workers),
                   f"packed, ingest.pack_bytes {args.pack}": config(tmp, args.workers, args.pack)}
        for shards in (10, 1000):
            write_pool(tmp / f"raw-{shards}", lines, shards)
        for inst in args.instances.split(","):
            with contextlib.ExitStack() as stack:
                pg = stack.enter_context(PostgresServer()) if inst == "postgres" else None
                events[inst] = event_cost(tmp / f"events-{inst}", pg.database("events") if pg else None)
                print(f"  {inst}: one materialisation event: {events[inst]:.1f} ms", flush=True)
                for li, (layout, cfg) in enumerate(layouts.items()):
                    res, parts = {}, {}
                    for shards in (10, 1000):
                        url = pg.database(f"control{li}x{shards}") if pg else None
                        res[shards], out = run(tmp / f"home-{inst}-{li}-{shards}", tmp / f"raw-{shards}", cfg, url)
                        parts[shards] = partitions(out)
                        print(f"  {inst}, {layout}: {shards} files x {n // shards} docs ({parts[shards]} partitions): "
                              f"{res[shards]:.1f} s", flush=True)
                    noop, out = run(tmp / f"home-{inst}-{li}-1000", tmp / "raw-1000", cfg, url)
                    print(f"  {inst}, {layout}: no-op rerun at 1,000 files: {noop:.1f} s", flush=True)
                    assert "0 asset partition(s) materialised" in out, out[-2000:]
                    rows.append((inst, layout, res, parts, noop))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    table = ["| Dagster instance | partitions | 10 files x {:,} docs, s | 1,000 files x {} docs, s | ratio (target <= 1.5) | "
             "extra wall time per extra file, ms | no-op rerun at 1,000 files, s (target < 30) |".format(n // 10, n // 1000),
             "|---|---|---|---|---|---|---|"]
    for inst, layout, res, parts, noop in rows:
        table.append(f"| {inst} | {layout}: {parts[10]:,} / {parts[1000]:,} | {res[10]:.1f} | {res[1000]:.1f} | "
                     f"{res[1000] / res[10]:.2f} | {1000 * (res[1000] - res[10]) / 990:.0f} | {noop:.1f} |")
    text = "\n".join([
        "## Control plane: many small files vs few large ones (`bench/control.py`)",
        "", "`python bench/control.py` (run by `make bench`).", "",
        f"Machine: {machine()}; `metarater run --stage scores` (ingest, RPv2, DSIR) with {args.workers} worker "
        f"process(es), 100 partitions per run; the same {n:,} documents as 10 files and as 1,000 files, on a "
        "SQLite Dagster instance (the default) and on PostgreSQL (a local throwaway server, as a shared "
        "deployment would use). With a partition per file, every file costs 5 per-shard asset materialisations "
        "(ingest's two, RPv2, DSIR counts and scores), each a few Dagster event writes; packed, the 1,000 small "
        f"files are read as partitions of at least {args.pack} (the 2.7 MB files of the 10-file pool stay "
        "partitions of their own).", "", *table, "",
        "One asset materialisation event recorded on the instance (`report_runless_asset_event`, 200 partitions, "
        "one process): " + ", ".join(f"{k} {v:.1f} ms" for k, v in events.items()) + "."])
    print(text)
    write_section("control", text)


if __name__ == "__main__":
    main()
