"""Stage 'regressor': fit weights -> loss on all proxy runs, then search the optimal weights."""

import numpy as np

import dagster as dg

from .core import regression as reg, stats
from .plots import png_metadata
from .proxies import target_loss
from .scoring import _md_table
from resources import MetaraterConfig

GROUP = "regressor"


def proxy_table(proxy_run: dict[str, dict], target: str, names: list[str]):
    """(keys, names, X, y) of the materialised proxy runs planned over the active scores."""
    keys = sorted(k for k, r in proxy_run.items() if list(r["names"]) == list(names))
    if len(keys) < 4:
        raise dg.Failure(f"{len(keys)} proxy runs over the active scores are materialised; the "
                         "regressor needs at least 4: run `metarater run --stage proxies`")
    X = np.array([[proxy_run[k]["weights"][n] for n in names] for k in keys])
    y = np.array([target_loss(proxy_run[k]["losses"], target) for k in keys])
    return keys, names, X, y


@dg.asset(io_manager_key="json_io_manager", group_name=GROUP,
          code_version=f"regressor-{reg.REGRESSION_VERSION}",
          ins={"proxy_run": dg.AssetIn(partition_mapping=dg.AllPartitionMapping(),
                                       metadata={"allow_missing_partitions": True})},
          description="Gradient boosting, statsmodels OLS and ridge from weights to proxy loss, "
                      "compared by k-fold CV Spearman rho / R^2 / MAE; the best rho is kept.")
def regressor(context: dg.AssetExecutionContext, proxy_run: dict[str, dict],
              settings: MetaraterConfig) -> dict:
    cfg = settings.load()
    keys, names, X, y = proxy_table(proxy_run, cfg.validation_target, list(cfg.score_names))
    if len(keys) < len(proxy_run):
        context.log.warning(f"ignoring {len(proxy_run) - len(keys)} proxy runs planned over other scores")
    seed = cfg.proxies.seed
    cv = reg.cross_validate(X, y, folds=int(cfg.regressor["folds"]), seed=seed)
    best = reg.pick_best(cv)
    ols = reg.make_model("linear").fit(X, y)
    coefs = ols.coefficients(names)
    rows = [{"model": m, **{k: v for k, v in r.items() if k != "oof_pred"}} for m, r in cv.items()]
    md = {"proxy_runs": len(keys), "best_model": best, "cv_spearman": cv[best]["spearman"],
          "cv_r2": cv[best]["r2"],
          "cv_table": dg.MetadataValue.md(_md_table(rows, ["model", "spearman", "r2", "mae"])),
          "linear_coefficients": dg.MetadataValue.md(_md_table(
              coefs, ["score", "coef", "std_err", "ci_low", "ci_high", "p_value"]))}
    md.update(png_metadata(stats.scatter_png(y, cv[best]["oof_pred"], "actual loss",
                                             "predicted (out of fold)", f"{best}: CV predictions"),
                           f"{settings.artifacts_uri}/regressor/predicted_vs_actual.png", "predicted_vs_actual"))
    context.add_output_metadata(md)
    return {"names": names, "keys": keys, "X": X.tolist(), "y": y.tolist(), "best": best,
            "cv": {m: {k: v for k, v in r.items()} for m, r in cv.items()},
            "coefficients": coefs, "target": cfg.validation_target, "seed": seed}


def fit_best(regressor_out: dict):
    X = np.asarray(regressor_out["X"])
    y = np.asarray(regressor_out["y"])
    return reg.make_model(regressor_out["best"], regressor_out["seed"]).fit(X, y), X, y


@dg.asset(io_manager_key="json_io_manager", group_name=GROUP,
          code_version=f"optimal-{reg.REGRESSION_VERSION}",
          description="Predict >= 200,000 Dirichlet candidates with the chosen regressor and average "
                      "the 128 with the lowest predicted loss; bootstrap interval of that loss.")
def optimal_weights(context: dg.AssetExecutionContext, regressor: dict,
                    settings: MetaraterConfig) -> dict:
    cfg = settings.load()
    model, X, y = fit_best(regressor)
    names = regressor["names"]
    w, pred = reg.optimal_weights(model, len(names), candidates=int(cfg.regressor["candidates"]),
                                  top_k=int(cfg.regressor["top_k"]), seed=regressor["seed"])
    lo, hi, _ = reg.bootstrap_prediction(regressor["best"], X, y, w,
                                         n_boot=int(cfg.regressor["bootstrap"]), seed=regressor["seed"])
    weights = {n: float(x) for n, x in zip(names, w)}
    order = sorted(weights, key=weights.get, reverse=True)
    md = {"predicted_loss": pred, "ci90_low": lo, "ci90_high": hi, "model": regressor["best"],
          "weights": dg.MetadataValue.md(_md_table([{"score": n, "weight": weights[n]} for n in order],
                                                   ["score", "weight"]))}
    md.update(png_metadata(stats.bar_png(order, [weights[n] for n in order], "optimal weights"),
                           f"{settings.artifacts_uri}/regressor/optimal_weights.png", "optimal_weights"))
    context.add_output_metadata(md)
    return {"names": names, "weights": weights, "predicted_loss": pred, "ci90": [lo, hi],
            "model": regressor["best"], "cv_spearman": regressor["cv"][regressor["best"]]["spearman"],
            "proxy_runs": regressor["keys"], "candidates": int(cfg.regressor["candidates"]),
            "top_k": int(cfg.regressor["top_k"]),
            "best_observed": {"key": regressor["keys"][int(np.argmin(y))], "loss": float(y.min())}}


def propose_round(settings, instance: dg.DagsterInstance, k: int, explore: float = 1.0):
    """Register ``k`` adaptive proxy runs proposed by the current regressor (lowest lower
    confidence bound under a bootstrap ensemble). Returns (round, new keys, runs so far)."""
    from .core import selection, storage as st
    from .proxies import register_runs, spec_uri

    uri = f"{settings.storage_uri}/regressor.json"
    if not st.exists(uri):
        raise FileNotFoundError("no regressor yet: run `metarater run --stage regressor` first")
    r = st.read_json(uri)
    X, y = np.asarray(r["X"]), np.asarray(r["y"])
    rnd = 1 + max((st.read_json(spec_uri(settings.artifacts_uri, key)).get("round", 0)
                   for key in r["keys"]), default=0)
    W = reg.propose_adaptive(r["best"], X, y, k, seed=r["seed"] + 1000 * rnd, explore=explore)
    runs = [{"key": selection.weights_key(r["names"], w, r["seed"]), "kind": "adaptive",
             "round": rnd, "weights": [float(x) for x in w]} for w in W]
    new = register_runs(instance, settings.artifacts_uri, r["names"], r["seed"], runs)
    return rnd, new, len(y)
