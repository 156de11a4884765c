"""The per-shard text path by bytes and tokens, per core, beside its floors and its peers.

    python bench/text_path.py [--times 4] [--shard-docs 10000] [--keep DIR]

Everything runs on one core (this process and its children pinned to CPU 0, ``tokenizers`` on one
thread). The pool is the shared corpus, ``--times`` copies with fresh ids, in .jsonl.zst shards of
10,000 documents (bench/scale.py's pool builder; users' pools hold about 10^4 documents a shard). Each per-shard step is one `metarater run --only` process
with one worker; its CPU time (user + sys, its own and its children's) less a no-op run's (the
start-up: imports, Dagster's instance, the staleness scan) is the step's cost.

Floors, on the same shards and text: reading, decompressing and writing them as Parquet (pyarrow),
and the ``tokenizers`` library encoding the text alone with the pipeline's own tokenizer. Peers:
the RPv2 reference port (bench/rpv2_reference.py), datatrove's Gopher + C4 filters and the
`data-selection` package's DSIR (both in bench/.peers, made by bench/setup_peers.sh). Last,
`metarater score` from outside on one core, start-up excluded (a one-document run's time).
Writes the ``text_path`` section of bench/RESULTS.md.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ["RAYON_NUM_THREADS"] = "1"  # tokenizers' thread pool: one core
os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.sched_setaffinity(0, {0})  # children inherit it

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import REPO, corpus_root, machine, write_section  # noqa: E402
from scale import build_pool, config  # noqa: E402

PEER_PY = HERE / ".peers" / "bin" / "python"
PER_SHARD = [("ingest", ["raw_docs", "raw_quarantine"]), ("RPv2 signals", ["rpv2_scores"]),
             ("DSIR counts", ["dsir_counts"]), (None, ["dsir_model", "tokenizer"]),
             ("DSIR scores", ["dsir_scores"]), ("tokens", ["doc_tokens"]), ("shard index", ["shard_index"])]


def cpu_run(args: list[str], env: dict) -> tuple[float, float, str]:
    """(CPU seconds of the process and its waited-for children, wall seconds, output)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(args, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{' '.join(args)} failed:\n{out[-3000:]}")
    return usage.ru_utime + usage.ru_stime, time.perf_counter() - t0, out


def step(assets: list[str], env: dict) -> float:
    cpu, _, out = cpu_run([sys.executable, "-m", "metarater_assets.cli", "run", "--stage", "pool", "--only",
                           ",".join(assets)], env)
    if "FAIL" in out:
        raise RuntimeError(out[-3000:])
    return cpu


def path_env(raw: Path, home: Path, cfg: Path) -> dict:
    env = {**os.environ, "METARATER_HOME": str(home), "METARATER_RAW_URI": str(raw),
           "METARATER_CONFIG": str(cfg), "METARATER_LOG_LEVEL": "CRITICAL"}
    env.pop("DAGSTER_HOME", None)
    return env


def path_cpu(raw: Path, home: Path, cfg: Path, label: str) -> tuple[dict, dict[str, float]]:
    """CPU seconds of each per-shard step on the pool in ``raw``."""
    env = path_env(raw, home, cfg)
    cpu = {}
    for name, assets in PER_SHARD:
        c = step(assets, env)
        print(f"  {label} {'+'.join(assets)}: {c:.1f} CPU s", flush=True)
        if name:
            cpu[name] = c
    return env, cpu


def floor_read_write(raw: Path, tmp: Path) -> float:
    """Read + decompress each shard (pyarrow's JSON reader over a zstd stream) and write it as
    Parquet (zstd, as the pipeline writes): CPU seconds."""
    import pyarrow as pa
    import pyarrow.json as pj
    import pyarrow.parquet as pq

    t0 = time.process_time()
    for f in sorted(raw.iterdir()):
        with pa.input_stream(str(f), compression="zstd") as s:
            table = pj.read_json(s)
        pq.write_table(table, tmp / (f.name + ".parquet"), compression="zstd")
    return time.process_time() - t0


def tokenizer_file(home: Path) -> Path:
    info = json.loads((home / "storage" / "tokenizer.json").read_text())
    return Path(info["uri"]) / "tokenizer.json"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--times", type=int, default=4, help="copies of the shared corpus in the pool")
    ap.add_argument("--shard-docs", type=int, default=10_000,
                    help="documents per shard (users' pools: 10^8-10^9 documents in 10^4-10^5 shards)")
    ap.add_argument("--keep", help="keep the pool and home here")
    args = ap.parse_args()
    tmp = Path(args.keep or tempfile.mkdtemp(prefix="metarater-textpath-"))
    tmp.mkdir(parents=True, exist_ok=True)
    try:
        if not (tmp / "raw").exists():  # else --keep DIR of an earlier run: its pool
            build_pool(tmp / "raw", args.times, args.shard_docs)
        import pyarrow as pa
        import pyarrow.compute as pc

        from metarater_assets.core import corpus

        files = sorted((tmp / "raw").iterdir())
        shard_texts = [corpus.read_shard(str(f), f.name).docs.column("text").combine_chunks() for f in files]
        shard_mb = [pc.sum(pc.binary_length(t)).as_py() / 1e6 for t in shard_texts]  # UTF-8 bytes of text
        docs, mb, small_mb = sum(map(len, shard_texts)), sum(shard_mb), shard_mb[0]
        cfg = config(tmp, workers=1)
        print(f"pool: {docs:,} documents, {mb:.1f} MB of text, {len(files)} shards", flush=True)
        small = tmp / "raw-small"  # the same run on one shard: its cost is the run's fixed part
        small.mkdir(exist_ok=True)
        first = files[0]
        shutil.copy(first, small / first.name)
        saved = tmp / "step_cpu.json"
        if saved.exists():  # --keep DIR of an earlier run: its steps' measurements, floors and peers anew
            env, (cpu_full, cpu_small) = path_env(tmp / "raw", tmp / "home", cfg), json.loads(saved.read_text())
        else:
            env, cpu_full = path_cpu(tmp / "raw", tmp / "home", cfg, "full")
            _, cpu_small = path_cpu(small, tmp / "home-small", cfg, "one shard")
            _, again = path_cpu(small, tmp / "home-small-2", cfg, "one shard, again")
            cpu_small = {k: min(v, again[k]) for k, v in cpu_small.items()}  # the fixed part: the quieter run
            saved.write_text(json.dumps([cpu_full, cpu_small]))
        gc.collect()
        gc.freeze()  # the timings below see only what they allocate, not this process's heap
        cost = {k: max(cpu_full[k] - cpu_small[k], 1e-9) * mb / (mb - small_mb) for k in cpu_full}

        from metarater_assets.core import dsir, signals
        from rpv2_reference import reference_signals

        col = pa.concat_arrays(shard_texts)
        texts = col.to_pylist()
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(tokenizer_file(tmp / "home")))
        t0 = time.process_time()
        tokens = 0
        for i in range(0, len(texts), 1024):  # the batches the token step encodes
            tokens += sum(len(e.ids) for e in tok.encode_batch_fast(texts[i:i + 1024], add_special_tokens=False))
        floor_tok = time.process_time() - t0
        floor_rw = floor_read_write(tmp / "raw", Path(tempfile.mkdtemp(dir=tmp)))
        print(f"  floors: read+decompress+write {floor_rw:.1f} s, tokenizers {floor_tok:.1f} s ({tokens:,} tokens)",
              flush=True)

        # peers, in-process or in the peers' venv, on the same text: the pool's first shard (the peers
        # run at well under 1 MB/s), datatrove on a quarter of it
        sub_col = shard_texts[0]
        sub = sub_col.to_pylist()
        signals.compute_signals(sub_col.slice(0, 10))  # loaded once per process (compiled kernels,
        dsir.count_buckets(sub_col.slice(0, 10))  # character tables), as any step does: not timed
        t0 = time.process_time()
        signals.compute_signals(sub_col)
        ours_rpv2 = time.process_time() - t0
        t0 = time.process_time()
        for t in sub:
            reference_signals(t)
        ref_rpv2 = time.process_time() - t0
        root = corpus_root()
        tgt = corpus.read_documents(str(root / "targets" / "wiki.jsonl.gz")).column("text")
        t0 = time.process_time()
        model = dsir.DsirModel.fit(dsir.count_buckets(sub_col), {"wiki": dsir.count_buckets(tgt)})
        model.score(sub_col)
        ours_dsir = time.process_time() - t0
        peers = {}
        quarter = sub[: len(sub) // 4]
        quarter_mb = sum(len(t.encode()) for t in quarter) / 1e6
        if PEER_PY.exists():
            raw_p, tgt_p, q_p = tmp / "raw.jsonl", tmp / "target.jsonl", tmp / "quarter.jsonl"
            for path, tt in ((raw_p, sub), (tgt_p, tgt.to_pylist()), (q_p, quarter)):
                with open(path, "w", encoding="utf-8") as f:
                    for t in tt:
                        f.write(json.dumps({"text": t}) + "\n")
            c, _, out = cpu_run([str(PEER_PY), str(HERE / "peer_dsir.py"), str(raw_p), str(tgt_p),
                                 str(tmp / "dsir_cache")], os.environ.copy())
            peers["dsir"] = c
            _, _, out = cpu_run([str(PEER_PY), str(HERE / "peer_datatrove.py"), str(q_p)], os.environ.copy())
            res = json.loads(out.strip().splitlines()[-1])
            peers["datatrove"] = (res["gopher_s"] + res["c4_s"]) * small_mb / quarter_mb  # to the shard's bytes
        else:
            print("  peers venv missing: run bench/setup_peers.sh", flush=True)
        print(f"  peers on {small_mb:.1f} MB: ours rpv2 {ours_rpv2:.1f} s, reference {ref_rpv2:.1f} s, ours dsir "
              f"{ours_dsir:.1f} s, {peers}", flush=True)

        # metarater score from outside, start-up excluded
        one = tmp / "one.jsonl"
        one.write_text(json.dumps({"id": "x", "text": texts[0]}) + "\n")
        whole = tmp / "pool.parquet"
        import pyarrow.parquet as pq

        pq.write_table(pa.table({"id": [str(i) for i in range(len(texts))], "text": col}), whole)
        cli = {}
        for rater in ("rpv2", "dsir"):
            base = [sys.executable, "-m", "metarater_assets.cli", "score", "--raters", rater, "--out"]
            t_one = min(cpu_run(base + [str(tmp / "o1.parquet"), "--in", str(one)], env)[1] for _ in range(3))
            t_all = min(cpu_run(base + [str(tmp / "oa.parquet"), "--in", str(whole)], env)[1] for _ in range(3))
            cli[rater] = (t_all - t_one, t_one)
            print(f"  metarater score --raters {rater}: {mb / (t_all - t_one):.1f} MB/s ({t_all:.1f} s, start-up "
                  f"{t_one:.1f} s)", flush=True)

        def r(sec):
            return f"{mb / sec:.2f}"

        rows = [
            ("ingest (read, parse, ids, quarantine, Parquet)", cost["ingest"], "read + decompress + Parquet write (pyarrow)",
             floor_rw),
            ("RPv2 signals (the 11)", cost["RPv2 signals"], "RPv2 reference port", ref_rpv2 * mb / small_mb),
            ("DSIR counts", cost["DSIR counts"], "-", None),
            ("DSIR scores (3 targets)", cost["DSIR scores"], "-", None),
            ("tokens (byte-level BPE, ids to Parquet)", cost["tokens"], "tokenizers encode_batch_fast alone",
             floor_tok),
            ("shard index", cost["shard index"], "-", None),
        ]
        total = sum(cost.values())
        floors = floor_rw + floor_tok
        lines = [
            "## The per-shard text path per core, by bytes and tokens (`bench/text_path.py`)",
            "",
            f"{machine()}. One core (CPU 0) for everything, tokenizers on one thread. Pool: the shared corpus "
            f"x{args.times}, {docs:,} documents, {mb:.1f} MB of text, {tokens:,} tokens (the pipeline's "
            f"byte-level BPE, {tokens / docs:,.0f} per document), shards of {args.shard_docs:,} documents as .jsonl.zst. A step's cost is "
            f"the CPU time of its `metarater run --only` process (one worker, its children included) on the pool, "
            f"less the same step's on a pool of one shard ({small_mb:.2f} MB: the fixed part, start-up of the "
            "command and of the run's process), scaled to the pool's bytes.",
            "",
            "| per-shard step | CPU s | MB/s per core | tokens/s per core | floor or peer on the same text | its MB/s | its CPU time / ours |",
            "|---|---|---|---|---|---|---|",
        ]
        for what, c, peer, theirs in rows:
            lines.append(f"| {what} | {c:.1f} | {r(c)} | {tokens / c:,.0f} | {peer} | "
                         f"{r(theirs) if theirs else '-'} | {f'{theirs / c:.2f}x' if theirs else '-'} |")
        lines.append(f"| **whole path, ingest to shard index** | {total:.1f} | {r(total)} | {tokens / total:,.0f} | "
                     f"sum of the floors (read + decompress + write, tokenizers) | {r(floors)} | "
                     f"**{total / floors:.2f}x the floors** (target <= 1.5x) |")
        def rs(sec):
            return f"{small_mb / sec:.2f}"

        lines += ["", f"In-process on the same text (the pool's first shard, {len(sub):,} documents, {small_mb:.1f} MB; "
                  "datatrove on its first quarter, scaled to the shard's bytes), against the peers:", "",
                  "| what | metarater MB/s per core | peer | peer MB/s per core | ratio |", "|---|---|---|---|---|",
                  f"| RPv2 signals (11) | {rs(ours_rpv2)} | RPv2 reference port | {rs(ref_rpv2)} | "
                  f"**{ref_rpv2 / ours_rpv2:.1f}x** (target >= 10x) |"]
        if peers:
            lines.append(f"| DSIR fit + score (wiki target) | {rs(ours_dsir)} | data-selection 1.0.3 | {rs(peers['dsir'])} | "
                         f"**{peers['dsir'] / ours_dsir:.1f}x** (target >= 20x) |")
            lines.append(f"| RPv2 signals (ours) vs datatrove Gopher + C4 filters (different signals) | "
                         f"{rs(ours_rpv2)} | datatrove 0.10.1 | {rs(peers['datatrove'])} | "
                         f"{peers['datatrove'] / ours_rpv2:.1f}x |")
        lines += ["", "`metarater score` from outside, one core: wall time on the whole pool as one Parquet file "
                  "less the same command's on a one-document file (start-up), fastest of 3 each:", ""]
        for rater, target in (("rpv2", 23), ("dsir", 14)):
            t, t0_ = cli[rater]
            lines.append(f"- `--raters {rater}`: **{mb / t:.1f} MB/s** of text per core (target >= {target}); "
                         f"start-up {t0_:.1f} s")
        text = "\n".join(lines) + "\n"
        print(text)
        write_section("text_path", text)
        return 0
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
