"""`metarater report`: what has been materialised, one key per stage."""
from __future__ import annotations

import numpy as np

import dagster as dg

from .core import storage as st
from .ingest import ingest_facts
from .partitions import proxy_runs, shards
from .runner import user_error
from .runs import run_assets
from resources import Settings


#: the newest failed runs the report reads (a bounded amount of work, whatever the history)
MAX_FAILED_RUNS = 500
RANGE_START = "dagster/asset_partition_range_start"
RANGE_END = "dagster/asset_partition_range_end"
_PAGE = 10_000


def _run_partitions(run: dg.DagsterRun, partitions: str | None, order) -> list[str | None]:
    """The partitions of ``partitions`` (a dynamic partition set's name, None: unpartitioned) that
    a run covered: its one partition, or every key of its range in the set's order."""
    if partitions is None:
        return [None]
    keys = order(partitions)
    pk = run.tags.get("dagster/partition")
    if pk is not None:
        return [pk] if pk in keys else []
    start, end = run.tags.get(RANGE_START), run.tags.get(RANGE_END)
    if start in keys and end in keys:
        pos = {k: i for i, k in enumerate(keys)}
        return keys[pos[start]:pos[end] + 1]
    return []


def _latest_materialisations(instance: dg.DagsterInstance, key: str, after: float) -> dict[str | None, float]:
    """{partition: time of its latest materialisation} over the materialisations after ``after``:
    a few paged queries per asset, never one per partition."""
    out: dict[str | None, float] = {}
    cursor = None
    while True:
        res = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey(key), after_timestamp=after), limit=_PAGE, cursor=cursor)
        for r in res.records:  # newest first
            out.setdefault(r.partition_key, r.timestamp)
        cursor = res.cursor
        if not res.has_more:
            return out


def run_error(instance: dg.DagsterInstance, run_id: str) -> str:
    """Why a run failed, in one message: its first step failure (the user's error, not Dagster's
    wrappers), else a failed blocking asset check, else what marked the run failed (e.g. a worker
    process that died)."""
    step = check = ended = crashed = None
    for ev in instance.all_logs(run_id, of_type={dg.DagsterEventType.STEP_FAILURE,
                                                 dg.DagsterEventType.ASSET_CHECK_EVALUATION,
                                                 dg.DagsterEventType.RUN_FAILURE,
                                                 dg.DagsterEventType.ENGINE_EVENT}):
        e = ev.dagster_event
        if e is None:
            continue
        if e.is_step_failure and step is None:
            step = user_error(e.step_failure_data.error)
        elif e.event_type == dg.DagsterEventType.ASSET_CHECK_EVALUATION and check is None \
                and not e.event_specific_data.passed:
            check = f"asset check {e.event_specific_data.check_name} failed"
        elif e.event_type == dg.DagsterEventType.RUN_FAILURE:
            ended = e.message
        elif e.event_type == dg.DagsterEventType.ENGINE_EVENT and (e.message or "").startswith("Run execution process"):
            crashed = e.message  # the code server saw a daemon-launched run's worker exit
    return step or check or crashed or ended or "run failed"


def failures(instance: dg.DagsterInstance, assets) -> list[dict]:
    """Asset partitions whose latest attempt failed: ``{"assets", "partition", "error", "run_id"}``,
    one per failed run and partition (``partition`` None for an unpartitioned step).

    Over the newest ``MAX_FAILED_RUNS`` failed runs, single-partition, batched (a partition-key
    range over ``shards``, ``proxy_runs``, ``confirm_runs`` or ``orientation_runs``, in the set's
    order) and unpartitioned alike. An asset partition counts once, for its newest failed run, and
    not at all once it was materialised after that run began (a retry, or an earlier step of the
    same batch that did succeed)."""
    # every asset, in graph order, with the dynamic partition set it is partitioned by (None: none)
    part_of = {spec.key.to_user_string(): getattr(spec.partitions_def, "name", None)
               for a in assets for spec in a.specs}
    orders: dict[str, list[str]] = {}

    def order(name: str) -> list[str]:
        if name not in orders:
            orders[name] = list(instance.get_dynamic_partitions(name))
        return orders[name]

    claimed: set[tuple[str, str | None]] = set()
    found = []  # (run record, {partition: [assets]})
    for rec in instance.get_run_records(dg.RunsFilter(statuses=[dg.DagsterRunStatus.FAILURE]),
                                        limit=MAX_FAILED_RUNS):  # newest first
        run = rec.dagster_run
        per: dict[str | None, list[str]] = {}
        mine = run_assets(instance, run)
        for key in (k for k in part_of if k in mine):  # in graph order
            for pk in _run_partitions(run, part_of[key], order):
                if (key, pk) not in claimed:
                    claimed.add((key, pk))
                    per.setdefault(pk, []).append(key)
        if per:
            found.append((rec, per))
    if not found:
        return []
    oldest = min(rec.create_timestamp.timestamp() for rec, _ in found)
    latest = {k: _latest_materialisations(instance, k, oldest) for k in {k for _, per in found for ks in per.values()
                                                                         for k in ks}}
    out = []
    for rec, per in found:
        began = rec.create_timestamp.timestamp()
        error = None
        for pk, keys in per.items():
            still = [k for k in keys if latest[k].get(pk, float("-inf")) <= began]
            if not still:
                continue
            error = error or run_error(instance, rec.dagster_run.run_id)
            out.append({"assets": still, "partition": pk, "error": error, "run_id": rec.dagster_run.run_id})
    rank = {k: i for i, k in enumerate(part_of)}
    return sorted(out, key=lambda f: (rank[f["assets"][0]], f["partition"] or ""))


def build_report(settings: Settings, instance: dg.DagsterInstance | None = None) -> dict:
    from .core.config import load_config
    from .defs import settings_curated_uri

    instance = instance or dg.DagsterInstance.get()
    cfg = load_config(settings.config_path)
    keys = sorted(instance.get_dynamic_partitions(shards.name))
    facts = ingest_facts(instance)
    ing = {"shards": 0, "rows_in": 0, "rows_ok": 0, "rows_quarantined": 0, "failed_shards": [], "per_shard": {}}
    for k in keys:
        f = facts.get(k)
        if f is None or not settings_files(settings).exists("raw_docs", k):
            continue
        ing["shards"] += 1
        row = {m: int(f.get(m, 0)) for m in ("rows_in", "rows_ok", "rows_quarantined")}
        ing["per_shard"][k] = row
        for m, v in row.items():
            ing[m] += v
    from .defs import all_assets

    failed = failures(instance, all_assets(cfg))
    ing["failed_shards"] = sorted(({"shard": f["partition"], "error": f["error"]} for f in failed
                                   if "raw_docs" in f["assets"]), key=lambda d: d["shard"])
    rep: dict = {"ingest": ing, "failures": failed}
    base = settings.storage_uri
    if st.exists(f"{base}/score_stats.json"):
        s = st.read_json(f"{base}/score_stats.json")
        rep["scores"] = {"names": [r["score"] for r in s["scores"]], "docs_scored": s["docs"], "tokens": s["tokens"],
                         "shards": s["shards"], "excluded_shards": s["excluded"]}
        if cfg.auto_oriented and st.exists(f"{base}/score_orientation.json"):  # scores.orientation: auto
            o = st.read_json(f"{base}/score_orientation.json")
            rep["scores"]["orientation"] = {"decided": o["decided"], "losses": o["losses"]}
    runs = instance.get_dynamic_partitions(proxy_runs.name)
    from .proxies import proxy_results

    res = proxy_results(_cfg_settings(settings), runs)
    if res:
        losses = [r["target_loss"] for r in res.values()]
        rep["proxies"] = {"n": len(losses), "val_loss_min": min(losses), "val_loss_max": max(losses),
                          "kind": cfg.proxies.kind}
    if st.exists(f"{base}/tier_agreement.json"):
        t = st.read_json(f"{base}/tier_agreement.json")
        rep.setdefault("proxies", {}).update({
            "tier2_kind": t["tier2_kind"], "tier2_runs": t["runs"],
            "tier_agreement_spearman": t["spearman"], "tier_shared_vectors": t["shared_vectors"],
            "tier2_optimum": t.get("optimum"), "tier2_best": t.get("best_confirmed")})
    if st.exists(f"{base}/regressor.json"):
        r = st.read_json(f"{base}/regressor.json")
        ho = r.get("heldout") or {}
        rep["regressor"] = {"model": r["best"], "cv_spearman": r["cv"][r["best"]]["spearman"],
                            "r2": r["cv"][r["best"]]["r2"], "proxy_runs": len(r["keys"]),
                            "heldout_spearman": ho.get("spearman"), "heldout_r2": ho.get("r2"),
                            "heldout_mae": ho.get("mae"), "heldout_runs": ho.get("n")}
    if st.exists(f"{base}/optimal_weights.json"):
        rep["optimal_weights"] = st.read_json(f"{base}/optimal_weights.json")["weights"]
    man_uri = f"{settings_curated_uri(settings, cfg).rstrip('/')}/_manifest.json"
    if st.exists(man_uri):
        m = st.read_json(man_uri)
        rep["curated"] = {"docs": m["docs"], "tokens": m["tokens"], "fraction": m["fraction"], "uri": m["uri"],
                          "threshold": m["threshold"], "shards": len(m["files"])}
    if st.exists(f"{base}/evaluation.json"):
        e = st.read_json(f"{base}/evaluation.json")
        res_ = e["results"]
        rep["evaluation"] = {
            "random_loss": [r["target_loss"] for r in res_["random"]],
            "curated_loss": [r["target_loss"] for r in res_["curated"]],
            "single_best_loss": [r["target_loss"] for r in res_["single_best"]],
            "single_best_score": e["single_best_score"], "tokens_ratio": e["tokens_ratio"],
            "by_set": {s: {arm: [r[s] for r in res_[arm]] for arm in res_} for s in e["sets"]},
            "tune_loss": {arm: [r["tune_target_loss"] for r in res_[arm]] for arm in res_},
            "target": e["target"], "seeds": e["seeds"], "evaluated_on": e["evaluated_on"],
            "held_out_docs": e["held_out_docs"], "roles": e.get("roles", {}), "weights_from": e.get("weights_from"),
            "paired_by_set": {arm: {k: v for k, v in by.items() if k != "target_loss"}
                              for arm, by in e.get("paired", {}).items()},
        }
        # the evaluation's own paired verdicts (an evaluation.json of an older code version has none)
        rep["evaluation"]["comparisons"] = ({arm: by["target_loss"] for arm, by in e["paired"].items()}
                                            if "paired" in e else compare_arms(rep["evaluation"]))
        rep["evaluation"]["tokens_to_target"] = e.get("tokens_to_target")
    return rep


def compare_arms(ev: dict) -> dict:
    """Curated against each other arm on the evaluation target, paired by seed
    (``core.stats.paired_comparison``: the per-seed differences other - curated, positive when
    curated is better, their bootstrap interval and the verdict)."""
    from .core.stats import paired_comparison

    return {arm: paired_comparison(ev["curated_loss"], ev[f"{arm}_loss"]) for arm in ("random", "single_best")}


def _sd(v: np.ndarray) -> float:
    """Sample standard deviation over seeds (0 for a single seed)."""
    return float(v.std(ddof=1)) if len(v) > 1 else 0.0


def settings_files(settings: Settings):
    from resources import ShardFiles

    return ShardFiles(settings.storage_uri)


def _cfg_settings(settings: Settings):
    from resources import MetaraterConfig

    return MetaraterConfig(config_path=settings.config_path, raw_uri=settings.raw_uri,
                           artifacts_uri=settings.artifacts_uri, curated_uri="", storage_uri=settings.storage_uri)


def format_report(rep: dict) -> str:
    lines = []
    ing = rep["ingest"]
    lines.append(f"ingest: {ing['shards']} shard(s), {ing['rows_in']} rows in, {ing['rows_ok']} ok, "
                 f"{ing['rows_quarantined']} quarantined, {len(ing['failed_shards'])} failed")
    for f in ing["failed_shards"]:
        lines.append(f"  failed {f['shard']}: {f['error']}")
    rest = [f for f in rep.get("failures", []) if "raw_docs" not in f["assets"]]
    if rest:
        lines.append(f"failed: {len(rest)} more (asset(s) [partition]: error; the runs' logs are in the UI)")
        for f in rest[:20]:
            where = f" [{f['partition']}]" if f["partition"] is not None else ""
            lines.append(f"  failed {', '.join(f['assets'])}{where}: {f['error'].splitlines()[0] if f['error'] else ''}")
        if len(rest) > 20:
            lines.append(f"  ... and {len(rest) - 20} more (metarater report --json lists all)")
    if "scores" in rep:
        s = rep["scores"]
        lines.append(f"scores: {len(s['names'])} scores on {s['docs_scored']} docs in {s['shards']} shard(s)"
                     + (f", {len(s['excluded_shards'])} shard(s) not in the pool" if s["excluded_shards"] else ""))
        if "orientation" in s:
            lines.append("orientation (auto): " + ", ".join(f"{n}={d}" for n, d in sorted(s["orientation"]["decided"].items())))
    if "proxies" in rep:
        p = rep["proxies"]
        if "n" in p:
            lines.append(f"proxies: {p['n']} {p['kind']} runs, target loss {p['val_loss_min']:.4f} .. "
                         f"{p['val_loss_max']:.4f}")
        if "tier_agreement_spearman" in p:
            o = p.get("tier2_optimum") or {}
            lines.append(f"tier 2: {p['tier2_runs']} {p['tier2_kind']} runs; tier agreement Spearman "
                         f"{p['tier_agreement_spearman']:.3f} on {p['tier_shared_vectors']} shared vectors"
                         + (f"; predicted optimum ranks {o['rank']} of {o['of']}" if o else ""))
            b = p.get("tier2_best")
            if b and o and not o.get("is_best", True):
                lines.append(f"  the predicted optimum is NOT the best tier-2 run: {b['kind']}"
                             f"{' ' + b['score'] if b.get('score') else ''} ({b['key']}) has loss {b['tier2_loss']:.4f} "
                             f"against the optimum's {o['tier2_loss']:.4f}; curation.weights: best_confirmed curates "
                             "with it (docs/configuration.md)")
    if "regressor" in rep:
        r = rep["regressor"]
        ho = (f"; held-out Spearman {r['heldout_spearman']:.3f} on {r['heldout_runs']} runs it never saw"
              if r.get("heldout_spearman") is not None else "")
        lines.append(f"regressor: {r['model']}, CV Spearman {r['cv_spearman']:.3f}, R^2 {r['r2']:.3f}{ho}")
    if "optimal_weights" in rep:
        top = sorted(rep["optimal_weights"].items(), key=lambda kv: -kv[1])[:5]
        lines.append("optimal weights (top 5): " + ", ".join(f"{k}={v:.3f}" for k, v in top))
    if "curated" in rep:
        c = rep["curated"]
        lines.append(f"curated: {c['docs']} docs, {c['tokens']} tokens (fraction {c['fraction']}) at {c['uri']}")
    if "evaluation" in rep:
        e = rep["evaluation"]
        for arm in ("curated", "random", "single_best"):
            v = np.array(e[f"{arm}_loss"])
            lines.append(f"evaluation {arm:12s}: {v.mean():.4f} +- {_sd(v):.4f} "
                         f"({e['evaluated_on']})")
        lines.append(f"  target: {e['target']}; best single score: {e['single_best_score']}; curated weights from: "
                     f"{e.get('weights_from')}")
        for arm, by in e.get("paired_by_set", {}).items():
            for name, c in by.items():
                role = (e.get("roles") or {}).get(name) or "role not declared"
                lines.append(f"    on {name} ({role}): curated vs {arm} better by {c['mean']:+.4f} "
                             f"[{c['ci'][0]:+.4f}, {c['ci'][1]:+.4f}] -> {c['verdict']}")
        for arm, c in e.get("comparisons", {}).items():
            lines.append(f"  curated vs {arm} (paired by seed, {c['seeds']} seeds): better by {c['mean']:+.4f}, "
                         f"95% CI [{c['ci'][0]:+.4f}, {c['ci'][1]:+.4f}], {c['in_sds']:.1f} sd of the differences "
                         f"-> {c['verdict'].upper()}")
        for t in e.get("tokens_to_target") or []:
            bound = "at most " if t.get("at_most") else ""
            reach = (f"reaches it at {bound}{t['curated_tokens']:,.0f} tokens ({bound}{t['ratio']:.2f}x"
                     + (", the curve's first point" if bound else "") + ")"
                     if t["curated_tokens"] is not None else "does not reach it")
            lines.append(f"  tokens to target, seed {t['seed']}: random reaches {t['random_final_loss']:.4f} at "
                         f"{t['random_tokens']:,} tokens; curated {reach}")
    return "\n".join(lines)
