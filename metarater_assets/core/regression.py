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
