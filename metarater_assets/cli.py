"""The `metarater` command: init, run, report, score, propose, regress, explain, ui."""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys


def _settings():
    from resources import Settings

    s = Settings.from_env()
    s.ensure_dagster_home()
    return s


def cmd_run(args) -> int:
    """Exit 0 when everything ran, 1 when anything failed (shards and proxy runs included), with a
    closing summary of what failed and why."""
    from concurrent.futures.process import BrokenProcessPool

    import dagster as dg

    from .runner import run_pipeline
    from .runs import mark_dead_runs

    settings = _settings()
    print(f"metarater run --stage {args.stage}\n  raw: {settings.raw_uri}\n  config: {settings.config_path}\n"
          f"  home: {settings.home}", flush=True)
    only = tuple(a for x in (args.only or ()) for a in x.split(",") if a)
    with dg.DagsterInstance.get() as instance:  # run_pipeline first marks failed the runs of dead workers
        try:
            summary = run_pipeline(settings, "evaluation" if only and args.stage == "curated" else args.stage,
                                   instance=instance, echo=lambda m: print(m, flush=True),
                                   force=tuple(args.force or ()), refit=args.refit, workers=args.workers, only=only)
        except BrokenProcessPool as e:  # a worker was killed (the OOM killer, SIGKILL): its run cannot end itself
            dead = mark_dead_runs(instance)
            print(f"error: a worker process died ({e}); {len(dead)} run(s) it left in progress marked failed"
                  + (f": {', '.join(dead)}" if dead else ""), file=sys.stderr)
            return 1
    print(f"done: {len(summary.materialised)} asset partition(s) materialised in {summary.runs} run(s), "
          f"{len(summary.failed)} failed" + (f", {len(summary.blocked)} blocked" if summary.blocked else ""))
    if summary.held:
        print(f"  kept (fitted on older data; --refit refits them): {', '.join(summary.held)}")
    if not summary.failed and not summary.blocked:
        return 0
    for line in failure_summary(summary.failed) if summary.failed else []:
        print(line)
    if summary.blocked:
        assets = sorted({b["asset"] for b in summary.blocked})
        print(f"  blocked: {', '.join(assets)} ({len(summary.blocked)} partition(s)): an input failed, is missing "
              "or failed a check; fix it, or take a shard that cannot be fixed out of the pool with ingest.exclude")
    return 1


def failure_summary(failed: list[dict], most: int = 8) -> list[str]:
    """One line per asset(s) and error: ``  failed: ASSETS [PARTITIONS]: ERROR`` (the first line of
    the error; the whole trace stays in the run's event log), then what to do next."""
    groups: dict[tuple[str, str], list] = {}
    for f in failed:
        err = (f.get("error") or "").strip().split("\n", 1)[0] or "run failed"
        groups.setdefault((", ".join(f["assets"]), err), []).append(f["partition"])
    lines = []
    for (assets, err), parts in groups.items():
        parts = [p for p in parts if p is not None]
        where = ""
        if parts:
            shown = ", ".join(parts[:most]) + (f" ... ({len(parts)} in all)" if len(parts) > most else "")
            where = f" [{shown}]"
        lines.append(f"  failed: {assets}{where}: {err}")
    stopped = [f for f in failed if f["partition"] is None]
    if stopped:
        lines.append(f"  the steps after {', '.join(stopped[0]['assets'])} did not run")
    lines.append(f"{len(failed)} failure(s); the failed runs' full errors are in the UI (Runs, status Failure); "
                 "`metarater run` again retries them")
    return lines


def cmd_report(args) -> int:
    import dagster as dg

    from .report import build_report, format_report
    from .runs import mark_dead_runs

    settings = _settings()
    with dg.DagsterInstance.get() as instance:
        mark_dead_runs(instance)  # a run whose process was killed shows as failed, not in progress forever
        rep = build_report(settings, instance)
    print(json.dumps(rep, indent=2, sort_keys=True) if args.json else format_report(rep))
    return 0


def cmd_score(args) -> int:
    from .score import score_file

    settings = _settings()
    try:
        out, notes = score_file(settings, [r.strip() for r in args.raters.split(",") if r.strip()], args.inp,
                                args.out, config_path=args.config)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for n in notes:
        print(n)
    print(f"scored {out.num_rows} docs -> {args.out}")
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


def cmd_init(args) -> int:
    """``./metarater.yaml`` for the pool at RAW_URI, then the next command."""
    from .init import init

    try:
        path, found = init(args.raw_uri, force=args.force, quick=args.quick)
    except FileExistsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {path} for {found['shards']} shard(s) under {args.raw_uri}")
    print(f"  text: {found['text']}  id: {found['id'] or '(none: content ids)'}  source: {found['source'] or '(none)'}"
          f"  (from the first rows of {found['first']})")
    print("next:\n  metarater run --stage curated     # score, fit, select: the curated corpus under ./.metarater/curated"
          "\n  metarater report                  # what ran and what it found\n  metarater ui                      # the same in Dagster's UI")
    return 0


def cmd_regress(args) -> int:
    """The regressor and the optimal weights from a table of proxy runs made elsewhere, through the
    same functions as the ``regressor`` and ``optimal_weights`` assets (``core.regression``)."""
    from .core import regression as reg

    targets = [t.strip() for t in args.target.split(",") if t.strip()]
    wcols = [c.strip() for c in args.weight_columns.split(",")] if args.weight_columns else None
    keys, names, X, y = reg.runs_table(args.weights, targets, losses_uri=args.losses, on=args.on,
                                       weight_columns=wcols)
    Xt = yt = None
    if args.test_weights:
        _, _, Xt, yt = reg.runs_table(args.test_weights, targets, losses_uri=args.test_losses, on=args.on,
                                           weight_columns=names)
    models = [m.strip() for m in args.models.split(",")] if args.models else list(reg.MODEL_NAMES)
    out = reg.regress(X, y, names, models=models, folds=args.folds, holdout=args.holdout, seed=args.seed,
                      candidates=args.candidates, top_k=args.top_k, X_test=Xt, y_test=yt)
    out["target"] = targets
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    print(f"{out['runs']} runs, {len(names)} weights, target: mean of {', '.join(targets)}")
    print("candidates (k-fold CV on the fit part):")
    for m, c in sorted(out["cv"].items(), key=lambda kv: -(kv[1]["spearman"] if kv[1]["spearman"] == kv[1]["spearman"]
                                                         else -2)):
        print(f"  {m:10s} Spearman {c['spearman']:.3f}  R^2 {c['r2']:.3f}  MAE {c['mae']:.4g}")
    print(f"chosen: {out['best']}")
    if out["heldout_spearman"] is not None:
        print(f"held-out Spearman: {out['heldout_spearman']:.3f} on {out['heldout_runs']} runs it never saw")
    if out["test_spearman"] is not None:
        print(f"test Spearman: {out['test_spearman']:.3f} on {out['test_runs']} runs from --test-weights")
    print(f"optimal weights (predicted loss {out['predicted_loss']:.4g}; best observed run {out['best_observed_loss']:.4g}):")
    for n, w in sorted(out["weights"].items(), key=lambda kv: -kv[1]):
        print(f"  {n:30s} {w:.4f}")
    return 0


def cmd_explain(args) -> int:
    from .explain import explain

    text = explain(_settings(), args.doc_id, shard=args.shard)
    print(text)
    return 0 if "not found" not in text.splitlines()[0] else 1


SENSORS_HELP = """sensors (Automation page of the UI; `dagster sensor start NAME -w workspace.yaml`):
  shard_sensor          OFF by default: switch it on to watch METARATER_RAW_URI. Registers new files as
                        shard partitions and runs shard_job (ingest, scores, tokens, shard index) for new or
                        changed files, in batches of compute.shards_per_run shards.
  metarater_automation  ON by default: declarative automation. Once new shards are indexed it refreshes
                        score_stats, curated_selection, every curated_corpus shard and curated_manifest;
                        after a pool-level refit (DSIR model, tokenizer, PRRC rater) it reruns the
                        per-shard scores, tokens and index that read it.
                        Pool-level fits (DSIR model, PRRC rater, tokenizer, proxies of both tiers,
                        regressor, evaluation) never run by themselves: materialise them in the UI, or
                        `metarater run --refit`.
  shard_batch_retry     ON by default: a failed run over a range of shards (a shard_sensor batch, or a UI
                        backfill of per-shard assets) is retried shard by shard, one shard_job run each,
                        so one bad file fails alone, as in `metarater run`.
  All tick every METARATER_SENSOR_INTERVAL seconds (default 30)."""


def cmd_ui(args) -> int:
    """``dagster dev`` (webserver + daemon) in its own process group; SIGTERM or SIGINT to this
    process stops the whole group, however it was started (a shell's ``&`` ignores SIGINT)."""
    settings = _settings()
    settings.prepare_instance()  # DAGSTER_HOME (telemetry off), exported, its tables created once
    settings.export()  # the code location starts in the repo's folder: it reads these, not ./metarater.yaml
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cmd = [sys.executable, "-m", "dagster", "dev", "-w", os.path.join(root, "workspace.yaml"),
           "-h", args.host, "-p", str(args.port)]
    print(f"DAGSTER_HOME={os.environ['DAGSTER_HOME']}\n{' '.join(cmd)}\n{SENSORS_HELP}", flush=True)

    def child_signals():
        for s in (signal.SIGINT, signal.SIGTERM):
            signal.signal(s, signal.SIG_DFL)

    proc = subprocess.Popen(cmd, cwd=root, start_new_session=True, preexec_fn=child_signals)
    stopping = {"sig": None}

    def stop(signum, frame):
        stopping["sig"] = signum
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass

    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, stop)
    try:
        while True:
            try:
                rc = proc.wait(timeout=1.0)
                break
            except subprocess.TimeoutExpired:
                continue
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        try:  # the daemon and code servers dagster dev started
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return 0 if stopping["sig"] else rc


def main(argv: list[str] | None = None) -> int:
    from .defs import STAGE_NAMES

    p = argparse.ArgumentParser(prog="metarater", description="Meta-rater data selection on Dagster")
    sub = p.add_subparsers(dest="cmd", required=True)
    i = sub.add_parser("init", help="write ./metarater.yaml for your pool (looks at its first file, asks nothing)")
    i.add_argument("raw_uri", help="the folder (or bucket prefix) holding your .jsonl[.gz|.zst] / .parquet files")
    i.add_argument("--force", action="store_true", help="replace an existing ./metarater.yaml")
    i.add_argument("--quick", action="store_true",
                   help="small proxies and no tier 2: a first look at the pipeline in minutes, not a result")
    i.set_defaults(fn=cmd_init)
    r = sub.add_parser("run", help="materialise every missing or stale asset up to a stage")
    r.add_argument("--stage", default="curated", choices=list(STAGE_NAMES))
    r.add_argument("--force", action="append", metavar="ASSET",
                   help="re-materialise this asset even if fresh (repeatable), e.g. --force dsir_model")
    r.add_argument("--refit", action="store_true",
                   help="also refit what new data alone does not redo: the DSIR pool distribution, the PRRC "
                        "rater, the tokenizer, the proxies and the regressor")
    r.add_argument("--only", action="append", metavar="ASSET[,ASSET]",
                   help="materialise just these assets (missing or stale partitions), e.g. --only score_stats")
    r.add_argument("--workers", type=int, default=None,
                   help="runs at once, each in its own process (default: compute.workers, else the cores)")
    r.set_defaults(fn=cmd_run)
    rp = sub.add_parser("report", help="what has been materialised")
    rp.add_argument("--json", action="store_true")
    rp.set_defaults(fn=cmd_report)
    s = sub.add_parser("score", help="score one JSONL/Parquet file outside the asset graph")
    s.add_argument("--raters", default="rpv2,dsir",
                   help="rpv2, dsir, perplexity, prrc (the pool's trained PRRC rater), precomputed, or model score names")
    s.add_argument("--in", dest="inp", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--config", default=None)
    s.set_defaults(fn=cmd_score)
    pr = sub.add_parser("propose", help="adaptive round: register K new proxy weight vectors")
    pr.add_argument("--k", type=int, default=8)
    pr.add_argument("--explore", type=float, default=1.0,
                    help="weight of the bootstrap spread in the lower confidence bound")
    pr.set_defaults(fn=cmd_propose)
    g = sub.add_parser("regress", help="fit the regressor and the optimal weights from a table of runs made elsewhere")
    g.add_argument("--weights", required=True, help="CSV or Parquet: one row per run, one column per weight "
                                                    "(and the loss columns, unless --losses)")
    g.add_argument("--losses", default=None, help="a separate loss table, joined to --weights on --on")
    g.add_argument("--on", default=None, help="the key column the weight and loss tables share (RegMix: index)")
    g.add_argument("--target", required=True, help="loss column(s), comma-separated; several are averaged")
    g.add_argument("--weight-columns", default=None,
                   help="the weight columns, comma-separated (default: every numeric column but the key and targets)")
    g.add_argument("--test-weights", default=None, help="runs for a test Spearman (e.g. a larger scale's runs)")
    g.add_argument("--test-losses", default=None)
    g.add_argument("--models", default=None, help="candidate regressors, comma-separated (lightgbm, gbr, linear, ridge, quadratic)")
    g.add_argument("--folds", type=int, default=5)
    g.add_argument("--holdout", type=float, default=0.2)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--candidates", type=int, default=200_000)
    g.add_argument("--top-k", type=int, default=128)
    g.add_argument("--json", action="store_true")
    g.set_defaults(fn=cmd_regress)
    e = sub.add_parser("explain", help="why a document was kept or dropped")
    e.add_argument("doc_id")
    e.add_argument("--shard", default=None, help="the document's shard key (else the pool's id column is scanned)")
    e.set_defaults(fn=cmd_explain)
    u = sub.add_parser("ui", help="start the Dagster UI and daemon (dagster dev) on 127.0.0.1")
    u.add_argument("--host", default="127.0.0.1")
    u.add_argument("--port", type=int, default=3000)
    u.set_defaults(fn=cmd_ui)
    args = p.parse_args(argv)
    try:
        return args.fn(args)
    except KeyboardInterrupt:
        return 130
    except Exception as e:  # a clear one-line error instead of a traceback, for the errors we name
        from .core.config import ConfigError
        from .core.corpus import ShardError

        if isinstance(e, (ConfigError, ShardError, FileNotFoundError, ValueError)):
            print(f"error: {e}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
