"""The `metarater` command: run, report, score, explain, ui."""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys


def _settings():
    from resources import Settings

    s = Settings.from_env()
    s.ensure_dagster_home()
    return s


def cmd_run(args) -> int:
    from .runner import run_pipeline

    settings = _settings()
    print(f"metarater run --stage {args.stage}\n  raw: {settings.raw_uri}\n  config: {settings.config_path}\n"
          f"  home: {settings.home}", flush=True)
    summary = run_pipeline(settings, args.stage, echo=lambda m: print(m, flush=True),
                           force=tuple(args.force or ()), refit=args.refit)
    print(f"done: {len(summary.materialised)} asset partition(s) materialised, "
          f"{len(summary.failed)} failed")
    for f in summary.failed:
        print(f"  failed: {', '.join(f['assets'])} [{f['partition']}]: {f['error']}")
    return 1 if any(f["partition"] is None for f in summary.failed) else 0


def cmd_report(args) -> int:
    from .report import build_report

    rep = build_report(_settings())
    if args.json:
        print(json.dumps(rep, indent=2, sort_keys=True))
        return 0
    ing = rep["ingest"]
    print(f"ingest: {ing['shards']} shard(s), {ing['rows_in']} rows in, {ing['rows_ok']} ok, "
          f"{ing['rows_quarantined']} quarantined, {len(ing['failed_shards'])} failed")
    for f in ing["failed_shards"]:
        print(f"  failed {f['shard']}: {f['error']}")
    if "scores" in rep:
        print(f"scores: {len(rep['scores']['names'])} scores on {rep['scores']['docs_scored']} docs")
    if "proxies" in rep:
        p = rep["proxies"]
        print(f"proxies: {p['n']} runs, target loss {p['val_loss_min']:.4f} .. {p['val_loss_max']:.4f}")
    if "regressor" in rep:
        r = rep["regressor"]
        print(f"regressor: {r['model']}, CV Spearman {r['cv_spearman']:.3f}, R^2 {r['r2']:.3f}")
    if "optimal_weights" in rep:
        top = sorted(rep["optimal_weights"].items(), key=lambda kv: -kv[1])[:5]
        print("optimal weights (top 5): " + ", ".join(f"{k}={v:.3f}" for k, v in top))
    if "curated" in rep:
        c = rep["curated"]
        print(f"curated: {c['docs']} docs, {c['tokens']} tokens (fraction {c['fraction']}) at {c['uri']}")
    if "evaluation" in rep:
        e = rep["evaluation"]
        import numpy as np

        for arm in ("curated", "random", "single_best"):
            v = np.array(e[f"{arm}_loss"])
            print(f"evaluation {arm:12s}: {v.mean():.4f} +- {v.std(ddof=1) if len(v) > 1 else 0:.4f}")
        print(f"  best single score: {e['single_best_score']}; tokens ratio: {e['tokens_ratio']}")
    return 0


def cmd_score(args) -> int:
    from .core import corpus, dsir, signals
    from .core import storage as st
    from .core.config import load_config
    import pyarrow as pa

    raters = [r.strip() for r in args.raters.split(",") if r.strip()]
    unknown = [r for r in raters if r not in ("rpv2", "dsir")]
    if unknown:
        print(f"error: unknown rater(s) {unknown}; available: rpv2, dsir", file=sys.stderr)
        return 2
    try:
        res = corpus.read_shard(args.inp)
    except corpus.ShardError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    texts = res.docs.column("text").to_pylist()
    cols = {"doc_id": res.docs.column("doc_id")}
    if "rpv2" in raters:
        sig = signals.compute_signals(texts)
        for n, v in sig.items():
            cols[n] = pa.array(v, pa.int64() if n in signals.INTEGER_SIGNALS else pa.float64())
    if "dsir" in raters:
        settings = _settings()
        cfg = load_config(args.config or settings.config_path)
        raw = dsir.count_buckets(texts, cfg.dsir.buckets)
        targets = {n: dsir.count_buckets(corpus.read_documents(u).column("text").to_pylist(), cfg.dsir.buckets)
                   for n, u in cfg.dsir.targets.items()}
        for n, v in dsir.DsirModel.fit(raw, targets).score(texts).items():
            cols[f"dsir_{n}"] = pa.array(v)
    out = pa.table(cols)
    st.write_parquet(out, args.out)
    print(f"scored {out.num_rows} docs ({res.rows_quarantined} quarantined) -> {args.out}")
    return 0


def cmd_propose(args) -> int:
    """Adaptive round: K new weight vectors where the regressor is promising or unsure."""
    import dagster as dg

    from .regression import propose_round

    try:
        rnd, new, n = propose_round(_settings(), dg.DagsterInstance.get(), args.k, args.explore)
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"round {rnd}: {len(new)} new proxy run(s) proposed from {n} runs so far: {', '.join(new)}")
    print("train them and refit: metarater run --stage regressor")
    return 0


def cmd_explain(args) -> int:
    from .explain import explain

    text = explain(_settings(), args.doc_id)
    print(text)
    return 0 if "not found" not in text.splitlines()[0] else 1


def cmd_ui(args) -> int:
    _settings()  # creates DAGSTER_HOME (telemetry off) and exports it for dagster dev
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cmd = [sys.executable, "-m", "dagster", "dev", "-w", os.path.join(root, "workspace.yaml"),
           "-h", args.host, "-p", str(args.port)]
    print(f"DAGSTER_HOME={os.environ['DAGSTER_HOME']}\n{' '.join(cmd)}", flush=True)
    return subprocess.call(cmd, cwd=root)


def main(argv: list[str] | None = None) -> int:
    from .defs import STAGES

    p = argparse.ArgumentParser(prog="metarater", description="Meta-rater data selection on Dagster")
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="materialise every missing or stale asset up to a stage")
    r.add_argument("--stage", default="curated", choices=list(STAGES))
    r.add_argument("--force", action="append", metavar="ASSET",
                   help="re-materialise this asset even if fresh (repeatable), e.g. --force dsir_model")
    r.add_argument("--refit", action="store_true",
                   help="also refit what new data alone does not redo: the DSIR pool distribution, "
                        "the tokenizer, the proxies and the regressor")
    r.set_defaults(fn=cmd_run)
    rp = sub.add_parser("report", help="what has been materialised")
    rp.add_argument("--json", action="store_true")
    rp.set_defaults(fn=cmd_report)
    s = sub.add_parser("score", help="score one JSONL/Parquet file outside the asset graph")
    s.add_argument("--raters", default="rpv2,dsir")
    s.add_argument("--in", dest="inp", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--config", default=None)
    s.set_defaults(fn=cmd_score)
    pr = sub.add_parser("propose", help="adaptive round: register K new proxy weight vectors")
    pr.add_argument("--k", type=int, default=8)
    pr.add_argument("--explore", type=float, default=1.0,
                    help="weight of the bootstrap spread in the lower confidence bound")
    pr.set_defaults(fn=cmd_propose)
    e = sub.add_parser("explain", help="why a document was kept or dropped")
    e.add_argument("doc_id")
    e.set_defaults(fn=cmd_explain)
    u = sub.add_parser("ui", help="start the Dagster UI (dagster dev) on 127.0.0.1")
    u.add_argument("--host", default="127.0.0.1")
    u.add_argument("--port", type=int, default=3000)
    u.set_defaults(fn=cmd_ui)
    args = p.parse_args(argv)
    try:
        return args.fn(args)
    except KeyboardInterrupt:
        return 130
    except Exception as e:  # a clear one-line error instead of a traceback
        from .core.config import ConfigError
        from .core.corpus import ShardError

        if isinstance(e, (ConfigError, ShardError, FileNotFoundError, ValueError)):
            print(f"error: {e}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
