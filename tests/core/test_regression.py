import numpy as np

from metarater_assets.core import regression as reg
from metarater_assets.core.selection import sample_weights


def _synthetic(n=60, k=5, seed=0):
    """Loss is lowest when the weight is on score 2, with an interaction term and noise."""
    W = sample_weights(n, k, seed)
    rng = np.random.default_rng(seed)
    loss = 4.0 - 1.2 * W[:, 2] + 0.5 * W[:, 0] ** 2 + 0.3 * W[:, 1] * W[:, 3] + rng.normal(0, 0.01, n)
    return W, loss


def _truth(W):
    W = np.atleast_2d(W)
    return 4.0 - 1.2 * W[:, 2] + 0.5 * W[:, 0] ** 2 + 0.3 * W[:, 1] * W[:, 3]


def test_regressor_recovers_ranking_and_optimum():
    X, y = _synthetic()
    cv = reg.cross_validate(X, y, folds=5, seed=0)
    best = reg.pick_best(cv)
    assert cv[best]["spearman"] >= 0.95, cv
    model = reg.make_model(best).fit(X, y)
    w, pred = reg.optimal_weights(model, X.shape[1], candidates=200_000, top_k=128, seed=0)
    assert int(np.argmax(w)) == 2 and w[2] > 0.5
    assert abs(w.sum() - 1) < 1e-9
    lo, hi, preds = reg.bootstrap_prediction(best, X, y, w, n_boot=20)
    # a real interval: not degenerate, around the true loss at the optimum (noise sd 0.01)
    assert hi - lo > 1e-4 and lo - 0.05 < _truth(w)[0] < hi + 0.05 and len(preds) >= 15


def test_lightgbm_is_a_candidate_and_the_held_out_runs_are_never_seen():
    X, y = _synthetic(n=200, k=6)
    out = reg.select_and_test(X, y, models=("lightgbm", "linear"), folds=4, holdout=0.2, seed=1)
    assert set(out["cv"]) == {"lightgbm", "linear"}
    fit, test = set(out["fit_runs"]), set(out["heldout_runs"])
    assert len(test) == 40 and not fit & test and len(fit | test) == 200
    assert out["heldout"]["n"] == 40 and out["heldout"]["spearman"] > 0.9
    # the CV folds used the fit part only: rerunning CV on it alone gives the same figures
    again = reg.cross_validate(X[sorted(fit)], y[sorted(fit)], folds=4, seed=1, models=("lightgbm", "linear"))
    assert again["linear"]["spearman"] == out["cv"]["linear"]["spearman"]
    lgb = reg.make_model("lightgbm", 0).fit(X, y)
    assert np.corrcoef(lgb.predict(X), y)[0, 1] > 0.9


def test_linear_coefficients_have_intervals():
    X, y = _synthetic()
    ols = reg.make_model("linear").fit(X, y)
    coefs = ols.coefficients(list("abcde"))
    assert min(coefs, key=lambda c: c["coef"])["score"] == "c"
    assert all(c["ci_low"] <= c["coef"] <= c["ci_high"] for c in coefs)


def test_adaptive_proposals_are_distinct_points_on_simplex():
    X, y = _synthetic(n=20)
    P = reg.propose_adaptive("ridge", X, y, k=4, n_boot=5, candidates=2000)
    assert P.shape == (4, 5)
    np.testing.assert_allclose(P.sum(1), 1.0)
    assert len({tuple(np.round(p, 6)) for p in P}) == 4


def test_quadratic_ridge_fits_the_curvature_a_linear_model_cannot():
    """The loss has a square and an interaction term: the quadratic candidate predicts fresh
    weight vectors within the noise, ridge on the raw weights cannot, and CV says so."""
    X, y = _synthetic(n=200, k=5, seed=3)
    fresh = sample_weights(2000, 5, 99)
    truth = _truth(fresh)
    err = {m: float(np.abs(reg.make_model(m).fit(X, y).predict(fresh) - truth).mean()) for m in ("quadratic", "ridge")}
    assert err["quadratic"] < 0.01 < err["ridge"], err  # noise sd 0.01; the linear fit's bias is larger
    cv = reg.cross_validate(X, y, folds=5, seed=0, models=("quadratic", "ridge", "linear"))
    assert reg.pick_best(cv) == "quadratic", {m: v["spearman"] for m, v in cv.items()}
