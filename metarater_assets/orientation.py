"""``scores.orientation: auto``: each such score's direction decided by two proxy runs.

The weights are non-negative, so a lower-is-better score can only be ignored, never penalised,
unless its normalisation is flipped (``5 - s``). For a score set to ``auto``, ``orientation_plan``
registers two single-score runs of the tier-1 proxy kind, one selecting the score's top fraction and
one its bottom (the flipped score's top); ``score_orientation`` keeps the direction whose proxy
reaches the lower target loss on the tuning halves. Every selection after that (the tier-1 swarm,
tier 2, the curated cut, the evaluation, ``explain``) reads the decided flips (``pool.oriented``).
The assets exist only when the config has an ``auto`` score.
"""

import numpy as np

import dagster as dg

from . import identity
from .core import selection
from .core.stats import md_table
from .partitions import orientation_runs
from .proxies import proxy_results, register_runs, target_loss
from resources import MetaraterConfig

GROUP = "proxies"


def plan_runs(names, auto, seed: int) -> list[dict]:
    """Two single-score runs per ``auto`` score: its top (``flip`` false) and its bottom."""
    runs = []
    for n in auto:
        w = np.zeros(len(names))
        w[list(names).index(n)] = 1.0
        base = selection.weights_key(names, w, seed).removeprefix("w-")
        for flip in (False, True):
            runs.append({"key": f"o-{base}-{'low' if flip else 'high'}", "kind": "orientation", "score": n,
                         "flip": flip, "weights": w.tolist()})
    return runs


def decide(runs: list[dict], results: dict[str, dict], target: str) -> dict:
    """{score: "high" | "low"} by the lower target loss of the two runs (ties: ``high``, the default)."""
    losses: dict[str, dict[str, float]] = {}
    for r in runs:
        res = results[r["key"]]
        losses.setdefault(r["score"], {})["low" if r["flip"] else "high"] = float(target_loss(res["losses"], target))
    decided = {n: "low" if v["low"] < v["high"] else "high" for n, v in losses.items()}
    return {"decided": decided, "losses": losses}


@dg.asset(io_manager_key="json_io_manager", group_name=GROUP, code_version="orientation-plan-1",
          ins={"score_stats": dg.AssetIn("score_stats")},
          description="For each score with orientation auto: two single-score proxy runs (its top and its "
                      "bottom fraction of the pool), each an orientation_runs partition.")
def orientation_plan(context: dg.AssetExecutionContext, score_stats: dict, settings: MetaraterConfig):
    cfg = settings.load()
    tracer = identity.for_run(context, settings, cfg, score_stats=score_stats)
    ident = tracer.identity("orientation_plan")
    names = list(cfg.score_names)
    runs = plan_runs(names, cfg.auto_oriented, cfg.proxies.seed)
    new = register_runs(context.instance, settings.artifacts_uri, names, cfg.proxies.seed, runs,
                        partitions=orientation_runs)
    return identity.output(tracer, "orientation_plan", {"names": names, "runs": runs}, ident,
                           {"scores": ", ".join(cfg.auto_oriented), "runs": len(runs), "new_partitions": len(new)})


@dg.asset(io_manager_key="json_io_manager", group_name=GROUP, code_version="score-orientation-1",
          deps=[dg.AssetDep("orientation_run", partition_mapping=dg.AllPartitionMapping())],
          ins={"orientation_plan": dg.AssetIn("orientation_plan")},
          description="The direction of each auto score: high or low, whichever single-score proxy reached "
                      "the lower target loss (tuning halves). Read by every selection after it.")
def score_orientation(context: dg.AssetExecutionContext, orientation_plan: dict, settings: MetaraterConfig):
    cfg = settings.load()
    tracer = identity.for_run(context, settings, cfg, orientation_plan=orientation_plan)
    ident = tracer.identity("score_orientation")
    runs = orientation_plan["runs"]
    results = proxy_results(settings, [r["key"] for r in runs], asset="orientation_run", tracer=tracer)
    missing = [r["key"] for r in runs if r["key"] not in results]
    if missing:
        raise dg.Failure(f"{len(missing)} orientation run(s) are not finished, e.g. {missing[0]}: "
                         "materialise orientation_run", allow_retries=False)
    out = decide(runs, results, cfg.validation_target)
    rows = [{"score": n, "high": v["high"], "low": v["low"], "decided": out["decided"][n]}
            for n, v in sorted(out["losses"].items())]
    return identity.output(tracer, "score_orientation", {**out, "target": cfg.validation_target}, ident, {
        "decided": dg.MetadataValue.md(md_table(rows, ["score", "high", "low", "decided"])),
        "low": sum(d == "low" for d in out["decided"].values())})


__all__ = ["decide", "orientation_plan", "plan_runs", "score_orientation"]
