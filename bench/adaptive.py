"""Adaptive rounds vs random sampling of proxy weight vectors, with the n-gram proxy as oracle.

The n-gram proxy (SPEC section 9: it ranks selections like the small transformer at this scale)
makes hundreds of proxy runs affordable on a CPU. For each budget of proxy runs we compare
(a) random Dirichlet vectors and (b) 16 random + rounds of 8 adaptive proposals
(`metarater propose`), on two measures: the Spearman rho of the regressor on 100 held-out random
vectors, and the oracle loss of the optimal weights the regressor picks (lower is better).

    python bench/adaptive.py            # prints a markdown table
"""
from __future__ import annotations

import sys

import numpy as np

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent))
from common import REPO, load_pool  # noqa: E402

from metarater_assets.core import corpus, dsir, pool as cp, proxy_lm, regression, selection, signals  # noqa: E402


def top_of_pool(units: np.ndarray, ntok: np.ndarray, w: np.ndarray, fraction: float) -> np.ndarray:
    """The documents the pipeline's selection keeps for ``w`` (its exact combined scores and
    global cut, the whole pool as one shard): a bool mask."""
    combined = cp.combined_units(units, cp.weight_units(w))
    counting, amount = cp.target_amount(len(ntok), int(ntok.sum()), fraction=fraction, by="tokens", token_budget=None)
    (cut,) = cp.find_cuts(lambda: iter([cp.ShardScores("pool", combined[:, None], ntok)]), [amount], counting)
    return cut.keep("pool", combined)


def build_oracle(seed: int = 0):
    pool = load_pool(REPO / "data" / "sample")
    texts = pool.column("text").to_pylist()
    cols = {k: np.asarray(vals.to_numpy(zero_copy_only=False), dtype=float)  # nulls read as nan
            for k, vals in signals.compute_signals(texts).items()}
    targets = {n: dsir.count_buckets(corpus.read_documents(str(REPO / "data" / "sample" / "targets" / f"{n}.jsonl.gz"))
                                     .column("text").to_pylist()) for n in ("books", "wiki", "math")}
    for n, v in dsir.DsirModel.fit(dsir.count_buckets(texts), targets).score(texts).items():
        cols[f"dsir_{n}"] = v
    names = list(cols)
    tok = proxy_lm.train_tokenizer(texts, 4096)
    ids = proxy_lm.encode(tok, texts)
    ntok = np.array([len(x) for x in ids], dtype=np.int64)
    summary = cp.ShardSummary.of(cols, ntok, pool.column("source").to_pylist())
    units = cp.Normalisation.from_summary(summary, names).units(cols)  # the pipeline's pool normalisation
    val = {}
    for name in ("validation", "reference"):
        d = corpus.read_documents(str(REPO / "data" / "sample" / f"{name}.jsonl.gz")).slice(0, 200)
        val[name] = proxy_lm.encode(tok, d.column("text").to_pylist())
    cfg = proxy_lm.get_preset("tiny", token_budget=100_000)
    eos, V = tok.eos_token_id, len(tok)

    def oracle(w: np.ndarray) -> float:
        docs = [ids[i] for i in np.flatnonzero(top_of_pool(units, ntok, w, 0.15))]
        m = proxy_lm.NgramProxy(V).fit(proxy_lm.pack(docs, eos, cfg, seed))
        return float(np.mean([m.evaluate(v, ["x"] * len(v), cfg.seq_len, eos)["loss"] for v in val.values()]))

    return names, oracle


def fit_and_measure(X, y, Xt, yt, oracle, seed=0):
    cv = regression.cross_validate(X, y, folds=5, seed=seed, models=("gbr", "ridge"))
    best = regression.pick_best(cv)
    model = regression.make_model(best, seed).fit(X, y)
    rho = regression._rho(model.predict(Xt), yt)
    w, _ = regression.optimal_weights(model, X.shape[1], candidates=50_000, top_k=128, seed=seed)
    return rho, oracle(w), best


def main(budgets=(16, 24, 32, 48, 64), start=16, k=8, seeds=(0, 1, 2)):
    names, oracle = build_oracle()
    K = len(names)
    Xt = selection.sample_weights(100, K, seed=999)
    yt = np.array([oracle(w) for w in Xt])
    rows = []
    for seed in seeds:
        pool_random = selection.sample_weights(max(budgets), K, seed=seed)
        y_random = np.array([oracle(w) for w in pool_random])
        X_ad, y_ad = pool_random[:start].copy(), y_random[:start].copy()
        for n in budgets:
            r_rho, r_loss, _ = fit_and_measure(pool_random[:n], y_random[:n], Xt, yt, oracle, seed)
            while len(y_ad) < n:
                cv = regression.cross_validate(X_ad, y_ad, folds=5, seed=seed, models=("gbr", "ridge"))
                P = regression.propose_adaptive(regression.pick_best(cv), X_ad, y_ad, k, seed=seed + len(y_ad))
                X_ad = np.vstack([X_ad, P])
                y_ad = np.concatenate([y_ad, [oracle(w) for w in P]])
            a_rho, a_loss, _ = fit_and_measure(X_ad[:n], y_ad[:n], Xt, yt, oracle, seed)
            rows.append((seed, n, r_rho, a_rho, r_loss, a_loss))
    print(f"held-out: 100 random vectors, oracle loss {yt.min():.4f} .. {yt.max():.4f} (best {yt.min():.4f})\n")
    print("| proxies | rho random | rho adaptive | optimum loss random | optimum loss adaptive |")
    print("|---|---|---|---|---|")
    for n in budgets:
        sel = [r for r in rows if r[1] == n]
        f = lambda i: f"{np.mean([r[i] for r in sel]):.3f} ± {np.std([r[i] for r in sel]):.3f}"
        g = lambda i: f"{np.mean([r[i] for r in sel]):.4f} ± {np.std([r[i] for r in sel]):.4f}"
        print(f"| {n} | {f(2)} | {f(3)} | {g(4)} | {g(5)} |")


if __name__ == "__main__":
    main()
