"""`make bench`: metarater against what a user would pick instead, on the same documents.

Prints a markdown table (median [min..max] over repetitions) and writes bench/RESULTS.md.
Peers run in their own venv (bench/.peers, created by bench/setup_peers.sh), never in the
project's environment. Reads ../shared/corpus when it is there, else the bundled sample.
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

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import REPO, corpus_root, load_pool, machine, timed, write_section  # noqa: E402

PEER_PY = HERE / ".peers" / "bin" / "python"
ROWS: list[tuple[str, str, str, str, str]] = []  # (what, metarater, peer, ratio, note)


def fmt(t):
    med, lo, hi = t
    return f"{med:.3g} [{lo:.3g}..{hi:.3g}]"


def rate(n, t):
    med, lo, hi = t
    return (n / med, n / hi, n / lo)


def row(what, ours, peer, ratio, note=""):
    ROWS.append((what, ours, peer, ratio, note))
    print(f"  {what}: {ours} | {peer} | {ratio} {note}", flush=True)


def write_jsonl(texts, path):
    with open(path, "w", encoding="utf-8") as f:
        for t in texts:
            f.write(json.dumps({"text": t}) + "\n")


def bench_signals(texts, reps):
    from metarater_assets.core.signals import SIGNAL_NAMES, compute_signals
    from rpv2_reference import reference_signals

    mb = sum(len(t.encode()) for t in texts) / 1e6
    compute_signals(texts[:10])  # the compiled kernels load once per process: not timed
    t_ours, cols = timed(lambda: compute_signals(texts), reps)
    cols = {n: c.to_pylist() for n, c in cols.items()}
    t_ref, ref = timed(lambda: [reference_signals(t) for t in texts], reps)
    bad = sum(1 for i, r in enumerate(ref) for n in SIGNAL_NAMES
              if (r[n] is None) != (cols[n][i] is None) or (r[n] is not None and abs(r[n] - cols[n][i]) > 1e-9))
    o, p = rate(len(texts), t_ours), rate(len(texts), t_ref)
    row("RPv2 signals (11), docs/s per core", f"{o[0]:,.0f} [{o[1]:,.0f}..{o[2]:,.0f}] ({mb / t_ours[0]:.2f} MB/s)",
        f"reference port {p[0]:,.0f} [{p[1]:,.0f}..{p[2]:,.0f}] ({mb / t_ref[0]:.2f} MB/s)",
        f"{o[0] / p[0]:.2f}x", f"values differing > 1e-9: {bad} of {len(texts) * len(SIGNAL_NAMES)}")
    return texts


def bench_datatrove(texts, tmp):
    from metarater_assets.core.signals import compute_signals

    if not PEER_PY.exists():
        row("vs datatrove Gopher + C4 filters", "-", "peers venv missing", "-", "run bench/setup_peers.sh")
        return
    path = Path(tmp) / "docs.jsonl"
    write_jsonl(texts, path)
    out = subprocess.run([str(PEER_PY), str(HERE / "peer_datatrove.py"), str(path)], capture_output=True,
                         text=True, timeout=900)
    if out.returncode:
        row("vs datatrove Gopher + C4 filters", "-", "failed", "-", out.stderr.strip().splitlines()[-1][:120])
        return
    r = json.loads(out.stdout.strip().splitlines()[-1])
    t_ours, _ = timed(lambda: compute_signals(texts), 1)
    ours = len(texts) / t_ours[0]
    dt = len(texts) / (r["gopher_s"] + r["c4_s"])
    row("RPv2 signals vs datatrove Gopher+C4, docs/s", f"{ours:,.0f}",
        f"datatrove {dt:,.0f} (gopher {len(texts) / r['gopher_s']:,.0f}, c4 {len(texts) / r['c4_s']:,.0f})",
        f"{ours / dt:.2f}x", "different signals (filters), same documents")


def bench_dsir(texts, root, tmp, reps):
    from scipy.stats import spearmanr

    from metarater_assets.core import corpus, dsir

    tgt_texts = corpus.read_documents(str(root / "targets" / "wiki.jsonl.gz")).column("text").to_pylist()

    def ours():
        raw = dsir.count_buckets(texts)
        model = dsir.DsirModel.fit(raw, {"wiki": dsir.count_buckets(tgt_texts)})
        return model.score(texts)["wiki"]

    t_ours, scores = timed(ours, reps)
    o = rate(len(texts), t_ours)
    if not PEER_PY.exists():
        row("DSIR fit+score, docs/s", f"{o[0]:,.0f}", "peers venv missing", "-", "run bench/setup_peers.sh")
        return
    raw_p, tgt_p = Path(tmp) / "raw.jsonl", Path(tmp) / "target.jsonl"
    write_jsonl(texts, raw_p)
    write_jsonl(tgt_texts, tgt_p)
    res = []
    for i in range(reps):
        cache = Path(tmp) / f"dsir_cache{i}"
        out = subprocess.run([str(PEER_PY), str(HERE / "peer_dsir.py"), str(raw_p), str(tgt_p), str(cache)],
                             capture_output=True, text=True, timeout=1800)
        if out.returncode:
            row("DSIR fit+score, docs/s", f"{o[0]:,.0f}", "data-selection failed", "-",
                out.stderr.strip().splitlines()[-1][:120])
            return
        res.append(json.loads(out.stdout.strip().splitlines()[-1]))
    secs = sorted(r["fit_s"] + r["score_s"] for r in res)
    p = (len(texts) / secs[len(secs) // 2], len(texts) / secs[-1], len(texts) / secs[0])
    theirs = np.asarray(res[0]["weights"])
    _, offs = dsir.doc_buckets(texts)
    ours_sum = scores * np.diff(offs)  # the same score before our per-n-gram normalisation
    rho_sum = spearmanr(ours_sum, theirs).statistic
    rho_mean = spearmanr(scores, theirs).statistic
    row("DSIR fit+score (wiki target), docs/s", f"{o[0]:,.0f} [{o[1]:,.0f}..{o[2]:,.0f}]",
        f"data-selection {p[0]:,.0f} [{p[1]:,.0f}..{p[2]:,.0f}]", f"{o[0] / p[0]:.2f}x",
        f"Spearman vs data-selection: {rho_sum:.3f} (length-summed), {rho_mean:.3f} (per n-gram, ours)")


def bench_rater(texts, reps, tmp):
    """Generic rater (length buckets) vs the same rater unsorted vs transformers' pipeline, on one
    BERT-style classifier (4 layers, width 256, 6 classes) saved locally, same documents."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification, pipeline

    from metarater_assets.core import proxy_lm, raters

    docs = texts[:500]
    path = Path(tmp) / "rater"
    tok = proxy_lm.train_tokenizer(docs, 8192)
    torch.manual_seed(0)
    BertForSequenceClassification(BertConfig(vocab_size=len(tok), hidden_size=256, num_hidden_layers=4,
                                             num_attention_heads=4, intermediate_size=1024, num_labels=6,
                                             pad_token_id=tok.pad_token_id)).save_pretrained(path)
    tok.save_pretrained(path)
    spec = raters.RaterSpec("s", str(path), raters.HeadSpec("expected", values=(0, 1, 2, 3, 4, 5)),
                            max_tokens=512, batch_size=32)
    rater = raters.HFRater(spec)
    t_b, ours = timed(lambda: rater.score(docs), reps)
    t_u, _ = timed(lambda: rater.score(docs, sort_by_length=False), reps)
    clf = pipeline("text-classification", model=str(path), tokenizer=str(path), device=-1)

    def hf():
        outs = clf(docs, batch_size=32, truncation=True, max_length=512, top_k=None, function_to_apply="softmax")
        return np.array([sum(d["score"] * int(d["label"].split("_")[-1]) for d in o) for o in outs])

    t_p, theirs = timed(hf, reps)
    diff = float(np.abs(ours - theirs).max())
    o, u, p = (rate(len(docs), t) for t in (t_b, t_u, t_p))
    row("model rater inference (4x256 BERT, 500 docs), docs/s", f"{o[0]:,.0f} [{o[1]:,.0f}..{o[2]:,.0f}] "
        f"(unsorted {u[0]:,.0f})", f"HF pipeline {p[0]:,.0f} [{p[1]:,.0f}..{p[2]:,.0f}]",
        f"{o[0] / p[0]:.2f}x", f"max abs score diff {diff:.1e}")


def bench_proxy(texts, reps):
    import torch

    from metarater_assets.core import proxy_lm

    tok = proxy_lm.train_tokenizer(texts[:3000], 4096)
    ids = proxy_lm.encode(tok, texts[:3000])
    cfg = proxy_lm.get_preset("tiny", token_budget=100_000)
    eos, V = tok.eos_token_id, len(tok)

    from metarater_assets.core import token_store as ts

    def source():  # the pipeline's reader: windows of the token stream in a seeded order
        return ts.WindowSource(ts.docs_stream(ids, eos), cfg.seq_len, cfg.batch_size, 0)

    def lightning():
        torch.set_num_threads(1)
        with tempfile.TemporaryDirectory() as d:
            _, info = proxy_lm.train_lm(source(), eos, V, cfg, 0, d)
        return info["train_seconds"]

    def plain():
        torch.set_num_threads(1)
        torch.manual_seed(0)
        model = proxy_lm.build_model(cfg, V, eos)
        src = source()
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.95), weight_decay=cfg.weight_decay)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, proxy_lm._lr_lambda(cfg))
        t = time.perf_counter()
        for step in range(cfg.steps):
            x = torch.from_numpy(src.batch(step))
            logits = model(input_ids=x[:, :-1]).logits
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, V), x[:, 1:].reshape(-1))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
        return time.perf_counter() - t

    tokens = cfg.steps * cfg.batch_size * cfg.seq_len
    tl = sorted(lightning() for _ in range(reps))
    tp = sorted(plain() for _ in range(reps))
    ml, mp = tl[len(tl) // 2], tp[len(tp) // 2]
    n_params = sum(p.numel() for p in proxy_lm.build_model(cfg, V, eos).parameters())
    a = torch.randn(1024, 1024)
    t = time.perf_counter()
    for _ in range(20):
        a @ a
    peak = 20 * 2 * 1024 ** 3 / (time.perf_counter() - t)
    mfu = 6 * n_params * tokens / ml / peak
    row("proxy training (2x64 GPT, 100k tokens), tokens/s", f"Lightning {tokens / ml:,.0f} [{tokens / tl[-1]:,.0f}..{tokens / tl[0]:,.0f}]",
        f"plain PyTorch loop {tokens / mp:,.0f} [{tokens / tp[-1]:,.0f}..{tokens / tp[0]:,.0f}]",
        f"overhead {100 * (ml / mp - 1):+.1f}%",
        f"MFU ~{100 * mfu:.1f}% of a {peak / 1e9:.0f} GFLOP/s fp32 matmul ({n_params / 1e6:.2f}M params, 6ND)")


def bench_incremental(root, tmp):
    import dagster as dg

    from metarater_assets.runner import run_pipeline
    from resources import Settings

    raw = Path(tmp) / "inc_raw"
    raw.mkdir()
    for f in sorted((root / "raw").iterdir()):
        shutil.copy(f, raw / f.name)
    incoming = sorted((root / "incoming").glob("*")) if (root / "incoming").is_dir() else []
    # the bundled sample has no incoming/ folder: the tests' trimmed shard-0008 stands in
    new_file = incoming[0] if incoming else REPO / "tests" / "data" / "shard-0008.jsonl.gz"
    n = len(list(raw.iterdir())) + 1
    # the demo config without the PRRC rater: its training is a pool-level fit that neither path
    # redoes, and its per-shard inference is measured in the rater rows
    import yaml

    cfg = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())
    cfg.pop("prrc", None)
    cfg["model_raters"] = {"registry": str(REPO / "configs" / "raters.yaml"), "scores": []}
    base = REPO / "configs"
    cfg["dsir"]["targets"] = {k: str((base / v).resolve()) for k, v in cfg["dsir"]["targets"].items()}
    cfg["validation"]["sets"] = {k: ({**v, "uri": str((base / v["uri"]).resolve())} if isinstance(v, dict)
                                     else str((base / v).resolve())) for k, v in cfg["validation"]["sets"].items()}
    cfg_path = Path(tmp) / "bench-incremental.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    settings = Settings(home=str(Path(tmp) / "inc_home"), raw_uri=str(raw), config_path=str(cfg_path))
    with dg.instance_for_test() as inst:
        run_pipeline(settings, "scores", instance=inst, echo=lambda m: None)
        shutil.copy(new_file, raw / new_file.name)
        t = time.perf_counter()
        s = run_pipeline(settings, "scores", instance=inst, echo=lambda m: None)
        t_inc = time.perf_counter() - t
        touched = sorted({p for _, p in s.materialised if p})
    full_raw = Path(tmp) / "full_raw"
    shutil.copytree(raw, full_raw)
    settings2 = Settings(home=str(Path(tmp) / "full_home"), raw_uri=str(full_raw), config_path=settings.config_path)
    with dg.instance_for_test() as inst:
        t = time.perf_counter()
        run_pipeline(settings2, "scores", instance=inst, echo=lambda m: None)
        t_full = time.perf_counter() - t
    row(f"absorb one new shard, stage scores (N={n} shards)", f"{t_inc:.1f} s", f"full recompute {t_full:.1f} s",
        f"{t_inc / t_full:.3f} (target <= {1.2 / n:.3f})", f"partitions touched: {touched}")


def bench_demo(tmp):
    home = Path(tmp) / "demo_home"
    env = {**os.environ, "METARATER_HOME": str(home)}
    env.pop("METARATER_CONFIG", None)
    env.pop("METARATER_RAW_URI", None)
    env.pop("DAGSTER_HOME", None)
    t = time.perf_counter()
    out = subprocess.run(["/usr/bin/time", "-f", "%M", str(REPO / ".venv" / "bin" / "metarater"), "run",
                          "--stage", "evaluation"], env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t
    peak = int(out.stderr.strip().splitlines()[-1]) / 1024 if out.returncode == 0 else float("nan")
    row("demo end to end (make demo's run, 4 shards)", f"{wall / 60:.1f} min, peak RSS {peak:,.0f} MB", "-", "-",
        "ok" if out.returncode == 0 else "FAILED: " + out.stderr[-200:])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--skip-demo", action="store_true")
    ap.add_argument("--only", choices=["incremental"], help="run just this row (printed, RESULTS.md untouched)")
    args = ap.parse_args()
    if args.only == "incremental":
        from metarater_assets.runner import quiet_libraries

        quiet_libraries()
        with tempfile.TemporaryDirectory() as tmp:
            bench_incremental(corpus_root(), tmp)
        print("\n".join(f"| {' | '.join(r)} |" for r in ROWS))
        return 0
    root = corpus_root()
    print(f"corpus: {root}\nmachine: {machine()}", flush=True)
    import torch

    from metarater_assets.runner import quiet_libraries

    quiet_libraries()
    torch.set_num_threads(1)  # per-core figures
    pool = load_pool(root, shards=2)
    texts = pool.column("text").to_pylist()
    with tempfile.TemporaryDirectory() as tmp:
        for fn in (lambda: bench_signals(texts, args.reps), lambda: bench_datatrove(texts, tmp),
                   lambda: bench_dsir(texts, root, tmp, args.reps), lambda: bench_rater(texts, args.reps, tmp),
                   lambda: bench_proxy(texts, args.reps)):
            try:
                fn()
            except Exception as e:  # one failing row must not hide the others
                row(getattr(fn, "__name__", "bench"), "-", "-", "-", f"error: {type(e).__name__}: {e}")
        torch.set_num_threads(os.cpu_count() or 1)
        try:
            bench_incremental(root, tmp)
        except Exception as e:
            row("incremental", "-", "-", "-", f"error: {type(e).__name__}: {e}")
        if not args.skip_demo:
            bench_demo(tmp)
    table = ["| what | metarater | peer | ratio | note |", "|---|---|---|---|---|"]
    table += [f"| {' | '.join(r)} |" for r in ROWS]
    text = (f"## Raters, proxies and the demo against peers (`bench/run.py`)\n\nMachine: {machine()}. Corpus: `{root.relative_to(REPO.parent) if root.is_relative_to(REPO.parent) else root}`, "
            f"{len(texts):,} documents ({sum(len(t.encode()) for t in texts) / 1e6:.1f} MB) for the per-core rows "
            f"(torch on 1 thread), all cores for the last two. Median [min..max] of {args.reps} repetitions.\n\n"
            + "\n".join(table) + "\n")
    write_section("peers", text)
    print("\n" + "\n".join(table))
    failed = [r[0] for r in ROWS if r[4].startswith(("error", "FAILED"))]
    if failed:
        print(f"bench/run.py: {len(failed)} row(s) failed: {failed}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
