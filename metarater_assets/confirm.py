"""Stage 'confirm' (tier 2): transformer proxies on a subset of the tier-1 vectors.

Tier 1 is the swarm the regressor is fitted on (cheap n-gram proxies in the demo: hundreds of
vectors, a fraction of a second each). Tier 2 trains the project's transformer proxy on a few of
them to check that the cheap proxy ranks selections as the real one does: the predicted optimum,
the single-score vectors and ``confirm.spread`` vectors spread across tier 1's loss range.
``tier_agreement`` reports the Spearman rho between the two tiers' losses on the shared vectors and
where the predicted optimum lands among the tier-2 runs.
"""

import numpy as np

import dagster as dg

from . import identity
from .core import selection
from .core.stats import md_table
from .partitions import confirm_runs
from .proxies import proxy_results, register_runs
from resources import MetaraterConfig

GROUP = "confirm"


def choose(cfg, optimal: dict, results: dict[str, dict]) -> list[dict]:
    """The tier-2 vectors: the predicted optimum, the single-score runs (all, or the
    ``single_score_runs`` best by tier-1 loss), a spread of Dirichlet runs."""
    c = cfg.confirm
    names = list(optimal["names"])
    seed = cfg.proxies.seed
    out = []
    if c.optimum:
        w = [float(optimal["weights"][n]) for n in names]
        out.append({"kind": "optimum", "weights": w})
    if c.single_score_runs:
        singles = sorted(k for k, r in results.items() if r.get("kind") == "single")
        if c.single_score_runs is not True:  # a number: the N best by tier-1 loss (ties: by key)
            singles = sorted(sorted(singles, key=lambda k: (results[k]["target_loss"], k))[:int(c.single_score_runs)])
        for k in singles:
            r = results[k]
            out.append({"kind": "single", "score": r["score"], "weights": [r["weights"][n] for n in names],
                        "tier1": k})
    dirichlet = sorted((r["target_loss"], k) for k, r in results.items() if r.get("kind") == "dirichlet")
    if dirichlet and c.spread:
        idx = sorted({int(round(i)) for i in np.linspace(0, len(dirichlet) - 1, min(c.spread, len(dirichlet)))})
        for i in idx:
            k = dirichlet[i][1]
            out.append({"kind": "spread", "weights": [results[k]["weights"][n] for n in names], "tier1": k})
    for r in out:
        r["key"] = "c-" + selection.weights_key(names, r["weights"], seed).removeprefix("w-")
    return out


@dg.asset(io_manager_key="json_io_manager", group_name=GROUP, code_version="confirm-plan-1",
          deps=[dg.AssetDep("proxy_run", partition_mapping=dg.AllPartitionMapping())],
          ins={"optimal_weights": dg.AssetIn("optimal_weights"), "regressor": dg.AssetIn("regressor")},
          description="Tier 2's vectors: the predicted optimum, the single-score vectors and a spread "
                      "across tier 1's loss range, each a confirm_runs partition.")
def confirm_plan(context: dg.AssetExecutionContext, optimal_weights: dict, regressor: dict,
                 settings: MetaraterConfig):
    cfg = settings.load()
    tracer = identity.for_run(context, settings, cfg, regressor=regressor, optimal_weights=optimal_weights)
    ident = tracer.identity("confirm_plan")
    results = proxy_results(settings, regressor["keys"], tracer=tracer)
    runs = choose(cfg, optimal_weights, results)
    new = register_runs(context.instance, settings.artifacts_uri, optimal_weights["names"], cfg.proxies.seed, runs,
                        partitions=confirm_runs)
    return identity.output(tracer, "confirm_plan", {"names": optimal_weights["names"], "runs": runs}, ident,
                           {"runs": len(runs), "new_partitions": len(new)})


@dg.asset(io_manager_key="json_io_manager", group_name=GROUP, code_version="tier-agreement-3",
          deps=[dg.AssetDep("confirm_run", partition_mapping=dg.AllPartitionMapping())],
          ins={"confirm_plan": dg.AssetIn("confirm_plan")},
          description="How tier 1 (the regressor's proxies) and tier 2 (transformer proxies) agree: "
                      "Spearman rho of their losses on the shared vectors, and the predicted optimum's "
                      "tier-2 loss and rank.")
def tier_agreement(context: dg.AssetExecutionContext, confirm_plan: dict, settings: MetaraterConfig):
    from scipy.stats import spearmanr

    cfg = settings.load()
    tracer = identity.for_run(context, settings, cfg, confirm_plan=confirm_plan)
    ident = tracer.identity("tier_agreement")
    keys = [r["key"] for r in confirm_plan["runs"]]
    t2 = proxy_results(settings, keys, asset="confirm_run", tracer=tracer)
    missing = sorted(set(keys) - set(t2))
    if missing:
        raise dg.Failure(f"{len(missing)} tier-2 run(s) are not finished or not current, e.g. {missing[0]}: "
                         "materialise confirm_run", allow_retries=False)
    t1 = proxy_results(settings, [r["tier1"] for r in confirm_plan["runs"] if r.get("tier1")], tracer=tracer)
    pairs = []
    for r in confirm_plan["runs"]:
        if r.get("tier1") in t1:
            pairs.append({"tier1_key": r["tier1"], "tier2_key": r["key"], "kind": r["kind"], "score": r.get("score"),
                          "tier1_loss": t1[r["tier1"]]["target_loss"], "tier2_loss": t2[r["key"]]["target_loss"]})
    a = [p["tier1_loss"] for p in pairs]
    b = [p["tier2_loss"] for p in pairs]
    rho = float(spearmanr(a, b).statistic) if len(pairs) > 2 and np.std(a) > 0 and np.std(b) > 0 else float("nan")
    losses = sorted(t2[k]["target_loss"] for k in keys)
    opt = next((r for r in confirm_plan["runs"] if r["kind"] == "optimum"), None)
    optimum = None
    if opt:
        loss = t2[opt["key"]]["target_loss"]
        singles = [t2[r["key"]]["target_loss"] for r in confirm_plan["runs"] if r["kind"] == "single"]
        optimum = {"key": opt["key"], "tier2_loss": loss, "rank": losses.index(loss) + 1, "of": len(losses),
                   "beats_every_single_score": bool(singles) and loss < min(singles)}
    # the tier-2 run with the lowest loss on the tuning halves (the evaluation's held-out halves
    # play no part): the weights `curation.weights: best_confirmed` curates with
    best_run = min(confirm_plan["runs"], key=lambda r: (t2[r["key"]]["target_loss"], r["key"]))
    best = {"key": best_run["key"], "kind": best_run["kind"], "score": best_run.get("score"),
            "tier2_loss": t2[best_run["key"]]["target_loss"],
            "weights": {n: float(w) for n, w in zip(confirm_plan["names"], best_run["weights"])}}
    if optimum:
        optimum["is_best"] = best["key"] == optimum["key"]
    out = {"spearman": rho, "shared_vectors": len(pairs), "runs": len(keys), "pairs": pairs, "optimum": optimum,
           "best_confirmed": best,
           "tier1_kind": cfg.proxies.kind, "tier2_kind": cfg.confirm.kind,
           "target": cfg.validation_target}
    return identity.output(tracer, "tier_agreement", out, ident, {
        "spearman": rho, "shared_vectors": len(pairs),
        **({"optimum_rank": f"{optimum['rank']} of {optimum['of']}"} if optimum else {}),
        "best_confirmed": f"{best['kind']}{' ' + best['score'] if best['score'] else ''} ({best['key']}), "
                          f"loss {best['tier2_loss']:.4f}"
                          + ("" if not optimum or optimum["is_best"] else
                             ": NOT the predicted optimum; curation.weights: best_confirmed curates with it"),
        "pairs": dg.MetadataValue.md(md_table(pairs, ["kind", "score", "tier1_loss", "tier2_loss"]))})


__all__ = ["choose", "confirm_plan", "tier_agreement"]
