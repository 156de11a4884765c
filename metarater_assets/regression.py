"""Stage 'regressor': fit weights -> loss on the proxy runs, then search the optimal weights."""

import numpy as np

import dagster as dg

from . import identity
from .core import regression as reg
from .core.stats import md_table
from .plots import bar_png, png_metadata, scatter_png
from .proxies import proxy_results, target_loss
from resources import MetaraterConfig

GROUP = "regressor"


def proxy_table(results: dict[str, dict], target: str, names: list[str]):
    """(keys, names, X, y) of the finished proxy runs planned over the active scores."""
    keys = sorted(k for k, r in results.items() if list(r["names"]) == list(names))
    if len(keys) < 4:
        raise dg.Failure(f"{len(keys)} proxy runs over the active scores are materialised; the "
                         "regressor needs at least 4: run `metarater run --stage proxies`")
    X = np.array([[results[k]["weights"][n] for n in names] for k in keys])
    y = np.array([target_loss(results[k]["losses"], target) for k in keys])
    return keys, names, X, y


@dg.asset(io_manager_key="json_io_manager", group_name=GROUP, code_version=f"regressor-{reg.REGRESSION_VERSION}",
          deps=[dg.AssetDep("proxy_run", partition_mapping=dg.AllPartitionMapping())],
          description="LightGBM, gradient boosting, statsmodels OLS and ridge from weights to proxy loss. "
                      "The model is chosen by k-fold CV Spearman on 80% of the runs and scored on the 20% "
                      "it never saw (held-out Spearman, R^2, MAE), then refit on every run.")
def regressor(context: dg.AssetExecutionContext, settings: MetaraterConfig):
    cfg = settings.load()
    tracer = identity.for_run(context, settings, cfg)
    # exactly the runs of the current plan whose results are current; the others are named
    planned = sorted(tracer.active("proxy_runs"))
    if not planned:
        raise dg.Failure("no current proxy plan: materialise proxy_plan (metarater run --stage proxies)",
                         allow_retries=False)
    ident = tracer.identity("regressor")
    results = proxy_results(settings, planned, tracer=tracer)
    missing = [k for k in planned if k not in results]
    r = cfg.regressor
    need = float(r.get("min_runs_fraction", 0.9))
    if len(results) < need * len(planned):
        raise dg.Failure(f"only {len(results)} of the plan's {len(planned)} proxy runs are current (regressor."
                         f"min_runs_fraction {need}); missing or failed: {', '.join(missing[:20])}"
                         f"{' ...' if len(missing) > 20 else ''}: materialise proxy_data and proxy_run "
                         "(metarater run --stage proxies)", allow_retries=False)
    if missing:
        context.log.warning(f"fitting on {len(results)} of {len(planned)} planned runs; missing or failed: "
                            f"{', '.join(missing[:20])}")
    keys, names, X, y = proxy_table(results, cfg.validation_target, list(cfg.score_names))
    seed = int(r.get("seed", cfg.proxies.seed))
    sel = reg.select_and_test(X, y, models=r["models"], folds=int(r["folds"]), holdout=float(r["holdout"]), seed=seed)
    best, cv = sel["best"], sel["cv"]
    ols = reg.make_model("linear").fit(X, y)
    coefs = ols.coefficients(names)
    rows = [{"model": m, **{k: v for k, v in m_cv.items() if k != "oof_pred"}} for m, m_cv in cv.items()]
    ho = sel["heldout"]
    md = {"proxy_runs": len(keys), "planned_runs": len(planned), "missing_runs": ", ".join(missing) or "none",
          "best_model": best, "cv_spearman": cv[best]["spearman"], "cv_r2": cv[best]["r2"],
          **({"heldout_spearman": ho["spearman"], "heldout_r2": ho["r2"], "heldout_mae": ho["mae"],
              "heldout_runs": ho["n"]} if ho else {}),
          "cv_table": dg.MetadataValue.md(md_table(rows, ["model", "spearman", "r2", "mae"])),
          "linear_coefficients": dg.MetadataValue.md(md_table(
              coefs, ["score", "coef", "std_err", "ci_low", "ci_high", "p_value"]))}
    if ho:
        yt = y[sel["heldout_runs"]]
        md.update(png_metadata(scatter_png(yt, ho["pred"], "actual loss", "predicted (held-out runs)",
                                           f"{best}: held-out predictions"),
                               f"{settings.artifacts_uri}/regressor/predicted_vs_actual.png", "predicted_vs_actual"))
    return identity.output(tracer, "regressor", {
        "names": names, "keys": keys, "X": X.tolist(), "y": y.tolist(), "best": best, "cv": cv,
        "heldout": ho, "heldout_keys": [keys[i] for i in sel["heldout_runs"]], "missing_runs": missing,
        "planned_runs": len(planned), "coefficients": coefs, "target": cfg.validation_target, "seed": seed}, ident, md)


def fit_best(regressor_out: dict):
    X = np.asarray(regressor_out["X"])
    y = np.asarray(regressor_out["y"])
    return reg.make_model(regressor_out["best"], regressor_out["seed"]).fit(X, y), X, y


@dg.asset(io_manager_key="json_io_manager", group_name=GROUP, code_version=f"optimal-{reg.REGRESSION_VERSION}",
          description="Predict >= 200,000 Dirichlet candidates with the chosen regressor (refit on every "
                      "run) and average the 128 with the lowest predicted loss; bootstrap interval of that loss.")
def optimal_weights(context: dg.AssetExecutionContext, regressor: dict, settings: MetaraterConfig):
    cfg = settings.load()
    tracer = identity.for_run(context, settings, cfg, regressor=regressor)
    ident = tracer.identity("optimal_weights")
    model, X, y = fit_best(regressor)
    names = regressor["names"]
    w, pred = reg.optimal_weights(model, len(names), candidates=int(cfg.regressor["candidates"]),
                                  top_k=int(cfg.regressor["top_k"]), seed=regressor["seed"])
    lo, hi, _ = reg.bootstrap_prediction(regressor["best"], X, y, w,
                                         n_boot=int(cfg.regressor["bootstrap"]), seed=regressor["seed"])
    weights = {n: float(x) for n, x in zip(names, w)}
    order = sorted(weights, key=weights.get, reverse=True)
    md = {"predicted_loss": pred, "ci90_low": lo, "ci90_high": hi, "model": regressor["best"],
          "weights": dg.MetadataValue.md(md_table([{"score": n, "weight": weights[n]} for n in order], ["score", "weight"]))}
    md.update(png_metadata(bar_png(order, [weights[n] for n in order], "optimal weights"),
                           f"{settings.artifacts_uri}/regressor/optimal_weights.png", "optimal_weights"))
    ho = regressor.get("heldout") or {}
    return identity.output(tracer, "optimal_weights", {
        "names": names, "weights": weights, "predicted_loss": pred, "ci90": [lo, hi],
        "model": regressor["best"], "cv_spearman": regressor["cv"][regressor["best"]]["spearman"],
        "heldout_spearman": ho.get("spearman"), "proxy_runs": regressor["keys"],
        "candidates": int(cfg.regressor["candidates"]), "top_k": int(cfg.regressor["top_k"]),
        "best_observed": {"key": regressor["keys"][int(np.argmin(y))], "loss": float(y.min())}}, ident, md)


def propose_round(settings, instance: dg.DagsterInstance, k: int, explore: float = 1.0):
    """Register ``k`` adaptive proxy runs proposed by the current regressor (lowest lower
    confidence bound under a bootstrap ensemble). Returns (round, new keys, runs so far)."""
    from .core import selection, storage as st
    from .proxies import add_proposals, register_runs, spec_uri

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
    add_proposals(settings.storage_uri, r["names"], r["seed"], runs)  # the plan takes them in at its next run
    return rnd, new, len(y)
