"""`metarater report`: what has been materialised, one key per stage."""
from __future__ import annotations

import dagster as dg

from .core import storage as st
from .partitions import proxy_runs, shards
from .runner import _latest, user_error
from resources import Settings


def _meta(rec, key, default=None):
    if rec is None or key not in rec.metadata:
        return default
    return rec.metadata[key].value


def _failures(instance: dg.DagsterInstance, keys: list[str]) -> list[dict]:
    """Shards whose latest ingest attempt failed (no materialisation after the failure)."""
    out = []
    runs = instance.get_run_records(dg.RunsFilter(statuses=[dg.DagsterRunStatus.FAILURE]), limit=500)
    seen = set()
    for rec in runs:  # newest first
        run = rec.dagster_run
        pk = run.tags.get("dagster/partition")
        if pk not in keys or pk in seen:
            continue
        sel = run.asset_selection or set()
        if dg.AssetKey("raw_docs") not in sel and "raw_docs" not in run.tags.get("metarater/assets", ""):
            continue
        seen.add(pk)
        mat = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey("raw_docs"), asset_partitions=[pk]), limit=1)
        if mat.records and mat.records[0].timestamp > rec.create_timestamp.timestamp():
            continue
        msg = "run failed"
        for ev in instance.all_logs(run.run_id, of_type=dg.DagsterEventType.STEP_FAILURE):
            msg = user_error(ev.dagster_event.step_failure_data.error)
        out.append({"shard": pk, "error": msg})
    return sorted(out, key=lambda d: d["shard"])


def build_report(settings: Settings, instance: dg.DagsterInstance | None = None) -> dict:
    instance = instance or dg.DagsterInstance.get()
    keys = sorted(instance.get_dynamic_partitions(shards.name))
    rep: dict = {}
    ing = {"shards": 0, "rows_in": 0, "rows_ok": 0, "rows_quarantined": 0, "failed_shards": [],
           "per_shard": {}}
    for k in keys:
        rec = _latest(instance, "raw_docs", k)
        if rec is None:
            continue
        ing["shards"] += 1
        row = {m: int(_meta(rec, m, 0)) for m in ("rows_in", "rows_ok", "rows_quarantined")}
        ing["per_shard"][k] = row
        for m, v in row.items():
            ing[m] += v
    ing["failed_shards"] = _failures(instance, keys)
    rep["ingest"] = ing
    scored = [(_latest(instance, "rpv2_scores", k), _latest(instance, "dsir_scores", k)) for k in keys]
    if any(r for r, _ in scored):
        from .core.config import load_config

        names = list(load_config(settings.config_path).score_names)
        rep["scores"] = {"names": names,
                         "docs_scored": int(sum(_meta(r, "docs", 0) for r, d in scored if r and d))}
    runs = instance.get_dynamic_partitions(proxy_runs.name)
    losses = []
    for k in runs:
        rec = _latest(instance, "proxy_run", k)
        if rec is not None:
            losses.append(float(_meta(rec, "target_loss")))
    if losses:
        rep["proxies"] = {"n": len(losses), "val_loss_min": min(losses), "val_loss_max": max(losses)}
    base = settings.storage_uri
    if st.exists(f"{base}/regressor.json"):
        r = st.read_json(f"{base}/regressor.json")
        rep["regressor"] = {"model": r["best"], "cv_spearman": r["cv"][r["best"]]["spearman"],
                            "r2": r["cv"][r["best"]]["r2"], "proxy_runs": len(r["keys"])}
    if st.exists(f"{base}/optimal_weights.json"):
        rep["optimal_weights"] = st.read_json(f"{base}/optimal_weights.json")["weights"]
    from .defs import settings_curated_uri

    man_uri = f"{settings_curated_uri(settings).rstrip('/')}/manifest.json"
    if st.exists(man_uri):
        m = st.read_json(man_uri)
        rep["curated"] = {"docs": m["docs"], "tokens": m["tokens"], "fraction": m["fraction"],
                          "uri": m["uri"], "threshold": m["threshold"]}
    if st.exists(f"{base}/evaluation.json"):
        e = st.read_json(f"{base}/evaluation.json")
        res = e["results"]
        rep["evaluation"] = {
            "random_loss": [r["target_loss"] for r in res["random"]],
            "curated_loss": [r["target_loss"] for r in res["curated"]],
            "single_best_loss": [r["target_loss"] for r in res["single_best"]],
            "single_best_score": e["single_best_score"], "tokens_ratio": e["tokens_ratio"],
            "by_set": {s: {arm: [r[s] for r in res[arm]] for arm in res} for s in e["sets"]},
            "target": e["target"], "seeds": e["seeds"],
        }
    return rep
