"""From (weight vector -> proxy validation loss) to a fitted regressor and optimal weights.

Candidate regressors, compared by k-fold cross-validated Spearman rho (the paper's fit metric,
following RegMix), R^2 and MAE:

* ``lightgbm``: LightGBM gradient boosting, the paper's and RegMix's choice;
* ``gbr``: scikit-learn ``GradientBoostingRegressor``;
* ``linear``: statsmodels OLS without intercept -- weights sum to 1, so the coefficient of
  score i is the predicted loss with all weight on score i, with a confidence interval;
* ``ridge``: scikit-learn ``Ridge``;
* ``quadratic``: ridge on the weights and their pairwise products and squares (scikit-learn
  ``PolynomialFeatures(2)`` + ``RidgeCV``, its penalty chosen by efficient leave-one-out inside
  each fit): the loss surface's curvature and the interactions between scores, which a linear
  model cannot bend to and boosted trees need many more runs to approximate.

Optimal weights (paper): predict many Dirichlet candidates, average the ``top_k`` with the lowest
predicted loss. The predicted loss at the optimum gets a bootstrap interval (refit on resampled
proxy runs).
"""
from __future__ import annotations

import warnings
from typing import Sequence

import functools

import numpy as np

REGRESSION_VERSION = "3"
MODEL_NAMES = ("lightgbm", "gbr", "linear", "ridge", "quadratic")


@functools.cache
def _ols_class():
    """statsmodels OLS (no intercept: the weights sum to one) behind the sklearn API (built on
    first use: sklearn and statsmodels are imported only when a regressor is fitted)."""
    from sklearn.base import BaseEstimator, RegressorMixin

    class OLSRegressor(RegressorMixin, BaseEstimator):
        def __init__(self, alpha: float = 0.05):
            self.alpha = alpha

        def fit(self, X, y):
            import statsmodels.api as sm

            with warnings.catch_warnings():  # fewer runs than scores in a CV fold: pinv solution
                warnings.simplefilter("ignore")
                self.result_ = sm.OLS(np.asarray(y, float), np.asarray(X, float)).fit()
            self.coef_ = self.result_.params
            return self

        def predict(self, X):
            return np.asarray(X, float) @ self.coef_

        def coefficients(self, names: Sequence[str]) -> list[dict]:
            ci = self.result_.conf_int(self.alpha)
            p = self.result_.pvalues
            se = self.result_.bse
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return [{"score": n, "coef": float(self.coef_[i]), "std_err": float(se[i]),
                         "ci_low": float(ci[i][0]), "ci_high": float(ci[i][1]), "p_value": float(p[i])}
                        for i, n in enumerate(names)]

    return OLSRegressor


def make_model(name: str, seed: int = 0):
    if name == "lightgbm":
        import lightgbm

        return lightgbm.LGBMRegressor(n_estimators=400, learning_rate=0.03, num_leaves=15, min_child_samples=5,
                                      subsample=0.8, subsample_freq=1, colsample_bytree=0.9, reg_lambda=1.0,
                                      random_state=seed, n_jobs=1, deterministic=True, force_row_wise=True,
                                      verbose=-1)
    if name == "gbr":
        from sklearn.ensemble import GradientBoostingRegressor

        return GradientBoostingRegressor(n_estimators=300, learning_rate=0.05, max_depth=3,
                                         subsample=0.8, random_state=seed)
    if name == "linear":
        return _ols_class()()
    if name == "ridge":
        from sklearn.linear_model import Ridge

        return Ridge(alpha=1e-3)
    if name == "quadratic":
        from sklearn.linear_model import RidgeCV
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import PolynomialFeatures, StandardScaler

        return make_pipeline(PolynomialFeatures(2, include_bias=False), StandardScaler(),
                             RidgeCV(alphas=np.logspace(-3, 4, 15)))
    raise ValueError(f"unknown regressor {name!r}; known: {MODEL_NAMES}")


def _rho(a, b) -> float:
    from scipy.stats import spearmanr

    if np.std(a) == 0 or np.std(b) == 0:
        return float("nan")
    return float(spearmanr(a, b).statistic)


def cross_validate(X: np.ndarray, y: np.ndarray, folds: int = 5, seed: int = 0,
                   models: Sequence[str] = MODEL_NAMES) -> dict[str, dict]:
    """Out-of-fold predictions per model and their Spearman rho, R^2, MAE."""
    from sklearn.metrics import mean_absolute_error, r2_score
    from sklearn.model_selection import KFold

    n = len(y)
    if n < 4:
        raise ValueError(f"need at least 4 proxy runs to cross-validate, got {n}")
    k = min(folds, n)
    kf = KFold(n_splits=k, shuffle=True, random_state=seed)
    out = {}
    for name in models:
        pred = np.empty(n)
        for tr, te in kf.split(X):
            pred[te] = make_model(name, seed).fit(X[tr], y[tr]).predict(X[te])
        out[name] = {"spearman": _rho(pred, y), "r2": float(r2_score(y, pred)),
                     "mae": float(mean_absolute_error(y, pred)), "oof_pred": pred.tolist()}
    return out


def pick_best(cv: dict[str, dict]) -> str:
    return max(cv, key=lambda m: (np.nan_to_num(cv[m]["spearman"], nan=-2.0), -cv[m]["mae"]))


def holdout_split(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(fit indices, held-out indices): a seeded ``fraction`` of the runs the chosen model never
    sees while it is chosen and fitted (the paper's 80/20)."""
    order = np.random.default_rng(seed).permutation(n)
    k = int(round(fraction * n))
    return np.sort(order[k:]), np.sort(order[:k])


def select_and_test(X: np.ndarray, y: np.ndarray, *, models: Sequence[str] = MODEL_NAMES, folds: int = 5,
                    holdout: float = 0.2, seed: int = 0) -> dict:
    """Choose the model by k-fold CV Spearman on the fit part only, refit it there and report its
    Spearman / R^2 / MAE on the held-out runs (an honest estimate: the held-out runs played no part
    in the choice). Without a hold-out (``holdout`` 0 or fewer than 10 runs) the CV figures are all
    there is, and the chosen model's is optimistic (the best of several on the same folds)."""
    from sklearn.metrics import mean_absolute_error, r2_score

    n = len(y)
    if holdout > 0 and n >= 10:
        fit, test = holdout_split(n, holdout, seed)
    else:
        fit, test = np.arange(n), np.arange(0)
    cv = cross_validate(X[fit], y[fit], folds=folds, seed=seed, models=models)
    best = pick_best(cv)
    out = {"cv": cv, "best": best, "fit_runs": fit.tolist(), "heldout_runs": test.tolist(), "heldout": None}
    if len(test) >= 3:
        pred = make_model(best, seed).fit(X[fit], y[fit]).predict(X[test])
        out["heldout"] = {"spearman": _rho(pred, y[test]), "r2": float(r2_score(y[test], pred)),
                          "mae": float(mean_absolute_error(y[test], pred)), "n": int(len(test)),
                          "pred": pred.tolist()}
    return out


def optimal_weights(model, n_scores: int, *, candidates: int = 200_000, top_k: int = 128,
                    seed: int = 0, batch: int = 50_000) -> tuple[np.ndarray, float]:
    """Average of the ``top_k`` Dirichlet candidates with the lowest predicted loss."""
    rng = np.random.default_rng(seed)
    best_w = np.empty((0, n_scores))
    best_y = np.empty(0)
    for start in range(0, candidates, batch):
        W = rng.dirichlet(np.ones(n_scores), size=min(batch, candidates - start))
        yhat = model.predict(W)
        best_w = np.concatenate([best_w, W])
        best_y = np.concatenate([best_y, yhat])
        keep = np.argsort(best_y, kind="stable")[:top_k]
        best_w, best_y = best_w[keep], best_y[keep]
    w = best_w.mean(axis=0)
    w = w / w.sum()
    return w, float(model.predict(w[None, :])[0])


def bootstrap_prediction(name: str, X: np.ndarray, y: np.ndarray, w: np.ndarray,
                         n_boot: int = 50, seed: int = 0, alpha: float = 0.1) -> tuple[float, float, np.ndarray]:
    """(low, high) percentile interval of the predicted loss at ``w`` over bootstrap refits,
    plus the ensemble's per-model predictions (used for uncertainty in adaptive rounds)."""
    rng = np.random.default_rng(seed)
    preds = []
    n = len(y)
    for b in range(n_boot):
        idx = rng.integers(0, n, size=n)
        if len(np.unique(idx)) < 3:
            continue
        preds.append(float(make_model(name, seed + b).fit(X[idx], y[idx]).predict(w[None, :])[0]))
    preds = np.asarray(preds)
    return float(np.quantile(preds, alpha / 2)), float(np.quantile(preds, 1 - alpha / 2)), preds


def propose_adaptive(name: str, X: np.ndarray, y: np.ndarray, k: int, *, n_boot: int = 20,
                     candidates: int = 20_000, seed: int = 0, explore: float = 1.0) -> np.ndarray:
    """Next ``k`` weight vectors: lowest lower-confidence-bound (mean - explore * std) under a
    bootstrap ensemble, so both promising and uncertain regions are sampled."""
    rng = np.random.default_rng(seed)
    C = rng.dirichlet(np.ones(X.shape[1]), size=candidates)
    preds = []
    n = len(y)
    for b in range(n_boot):
        idx = rng.integers(0, n, size=n)
        preds.append(make_model(name, seed + b).fit(X[idx], y[idx]).predict(C))
    P = np.stack(preds)
    lcb = P.mean(0) - explore * P.std(0)
    chosen = []
    for i in np.argsort(lcb):
        if all(np.abs(C[i] - C[j]).sum() > 0.05 for j in chosen):
            chosen.append(i)
        if len(chosen) == k:
            break
    return C[chosen]


# ---- proxy runs made elsewhere: `metarater regress` -------------------------------------------

def read_table(uri: str):
    """A CSV (optionally compressed) or Parquet table as pandas, through fsspec."""
    import pandas as pd

    from . import storage as st

    fs, path = st.fs_and_path(uri)
    name = uri.lower()
    if name.endswith((".parquet", ".pq")):
        with fs.open(path, "rb") as f:
            return pd.read_parquet(f)
    if any(name.endswith(ext) for ext in (".csv", ".csv.gz", ".csv.zst", ".csv.bz2", ".csv.xz", ".tsv")):
        with fs.open(path, "rb", compression="infer") as f:
            return pd.read_csv(f, sep="\t" if name.endswith(".tsv") else ",")
    raise ValueError(f"{uri}: unknown table format (expected .csv[.gz|.zst|...], .tsv or .parquet)")


#: column names never taken for weights when the weight columns are found automatically
KEY_NAMES = {"index", "id", "key", "run", "run_id", "seed", "step"}


def runs_table(weights_uri: str, targets: Sequence[str], *, losses_uri: str | None = None,
               on: str | None = None, weight_columns: Sequence[str] | None = None):
    """(run keys, weight names, X, y) from a table of proxy runs made elsewhere: one table holding
    the weight and the loss columns, or a weight table and a loss table joined on ``on`` (RegMix's
    layout: ``index`` plus one column per domain, and ``index`` plus one loss column per
    validation set). ``y`` is the mean of the ``targets`` columns; the weights are every numeric
    column of the weight table that is not the key, a target or a key-like name (``KEY_NAMES``),
    or exactly ``weight_columns``; each row normalised to sum to one."""
    W = read_table(weights_uri)
    targets = list(targets)
    if not targets:
        raise ValueError("name the loss column(s) with --target")
    if losses_uri:
        if not on:
            raise ValueError("--losses needs --on KEY, the column the two tables share")
        L = read_table(losses_uri)
        for name, t in (("weights", W), ("losses", L)):
            if on not in t.columns:
                raise ValueError(f"the {name} table has no column {on!r} (it has: {', '.join(map(str, t.columns[:20]))})")
        absent = [c for c in targets if c not in L.columns]
        if absent:
            raise ValueError(f"no target column(s) {', '.join(map(repr, absent))} in {losses_uri}; it has: "
                             f"{', '.join(map(str, L.columns[:30]))}")
        L = L[[on, *targets]]
        df = W.merge(L, on=on, how="inner", validate="one_to_one", suffixes=("", "_loss"))
        if len(df) < len(W) or len(df) < len(L):
            lost = (len(W) - len(df), len(L) - len(df))
            print(f"note: {lost[0]} weight row(s) and {lost[1]} loss row(s) have no partner on {on!r}; "
                  f"using the {len(df)} joined runs")
    else:
        df = W
    missing = [c for c in targets if c not in df.columns]
    if missing:
        raise ValueError(f"no target column(s) {', '.join(map(repr, missing))}; the table has: "
                         f"{', '.join(map(str, df.columns[:30]))}")
    if weight_columns:
        names = list(weight_columns)
        absent = [c for c in names if c not in W.columns]
        if absent:
            raise ValueError(f"no weight column(s) {', '.join(absent)} in {weights_uri}")
    else:
        skip = {on, *targets}
        names = [c for c in W.columns if c not in skip and str(c).lower() not in KEY_NAMES
                 and not str(c).startswith("Unnamed: ") and np.issubdtype(W[c].dtype, np.number)]
    if len(names) < 2:
        raise ValueError(f"need at least two weight columns, found {names}")
    X = df[names].to_numpy(float)
    y = df[targets].to_numpy(float).mean(axis=1)
    ok = np.isfinite(X).all(axis=1) & np.isfinite(y)
    if not ok.all():
        print(f"note: {int((~ok).sum())} run(s) with a missing or non-finite weight or loss left out")
        X, y, df = X[ok], y[ok], df[ok]
    if (X < 0).any():
        raise ValueError("weights must be non-negative")
    s = X.sum(axis=1, keepdims=True)
    if (s <= 0).any():
        raise ValueError("a run's weights sum to zero")
    X = X / s
    keys = [str(k) for k in (df[on] if on and on in df.columns else df.index)]
    return keys, [str(n) for n in names], X, y


def regress(X: np.ndarray, y: np.ndarray, names: Sequence[str], *, models: Sequence[str] = MODEL_NAMES,
            folds: int = 5, holdout: float = 0.2, seed: int = 0, candidates: int = 200_000, top_k: int = 128,
            X_test: np.ndarray | None = None, y_test: np.ndarray | None = None) -> dict:
    """What the ``regressor`` and ``optimal_weights`` assets compute, from arrays: the model chosen
    by CV Spearman on the fit part, its held-out Spearman, the model refit on every run, the
    Spearman of its predictions on separate test runs (when given), and the optimal weights."""
    sel = select_and_test(X, y, models=models, folds=folds, holdout=holdout, seed=seed)
    best = sel["best"]
    model = make_model(best, seed).fit(X, y)
    w, pred = optimal_weights(model, X.shape[1], candidates=candidates, top_k=top_k, seed=seed)
    test = None
    if X_test is not None and y_test is not None and len(y_test):
        test = _rho(model.predict(X_test), y_test)
    cv = {m: {k: v for k, v in c.items() if k != "oof_pred"} for m, c in sel["cv"].items()}
    return {"runs": int(len(y)), "cv": cv, "best": best,
            "heldout_spearman": sel["heldout"]["spearman"] if sel["heldout"] else None,
            "heldout_runs": len(sel["heldout_runs"]), "test_spearman": test,
            "test_runs": int(len(y_test)) if y_test is not None else 0,
            "predicted_loss": pred, "weights": {n: float(x) for n, x in zip(names, w)},
            "best_observed_loss": float(np.min(y))}
