"""Per-shard summaries merge exactly; the normalisation; the histogram cut keeps exactly the
documents an exact sort keeps (ties by pool order), at any number of passes."""
import numpy as np
import pytest

from metarater_assets.core import pool


def _exact(shards, p, counting, target):
    """The reference: one global sort by (combined desc, shard, row), independent of find_cuts."""
    c = np.concatenate([s[1][:, p] for s in shards])
    t = np.concatenate([s[2] for s in shards])
    shard = np.concatenate([np.full(len(s[2]), i) for i, s in enumerate(shards)])
    row = np.concatenate([np.arange(len(s[2])) for s in shards])
    order = np.lexsort((row, shard, -c))
    amount = t[order] if counting == "tokens" else np.ones(len(order))
    k = min(int(np.searchsorted(np.cumsum(amount), target - 1e-9)) + 1, len(order))
    keep = np.zeros(len(c), dtype=bool)
    keep[order[:k]] = True
    return keep


@pytest.mark.parametrize("seed", range(12))
def test_histogram_cut_equals_exact_sort_with_ties_and_token_weights(seed):
    rng = np.random.default_rng(seed)
    P = 4
    shards = []
    for s in range(int(rng.integers(1, 9))):
        n = int(rng.integers(0, 80))
        levels = int(rng.integers(1, 40))  # few distinct values: many ties
        c = rng.integers(0, levels, size=(n, P)) * int(rng.integers(1, 10 ** 9))
        shards.append((f"s{s:03d}", c.astype(np.int64), rng.integers(1, 500, size=n)))
    if not sum(len(t) for *_, t in shards):
        shards.append(("s999", np.zeros((3, P), dtype=np.int64), np.array([5, 1, 2])))
    docs = sum(len(t) for *_, t in shards)
    tokens = int(sum(t.sum() for *_, t in shards))
    by = ("docs", "tokens")[seed % 2]
    counting, target = pool.target_amount(docs, tokens, fraction=float(rng.uniform(0.01, 1)), by=by, token_budget=None)

    def scan():
        for key, c, t in shards:
            yield pool.ShardScores(key, c, t)

    step = int(rng.integers(1, 9))  # a shard streamed in row batches of `step` rows

    def batched():
        for key, c, t in shards:
            for r0 in range(0, len(t), step):
                yield pool.ShardScores(key, c[r0:r0 + step], t[r0:r0 + step], r0)

    for bins, limit in ((2, 0), (7, 3), (2048, 10 ** 6)):  # forced refinements and a single pass
        cuts = pool.find_cuts(scan, [target] * P, counting, bins=bins, collect_limit=limit)
        assert pool.find_cuts(batched, [target] * P, counting, bins=bins, collect_limit=limit) == cuts
        for p in range(P):
            want = _exact(shards, p, counting, target)
            got = np.concatenate([cuts[p].keep(k, c[:, p]) for k, c, _ in shards])
            assert (got == want).all(), (seed, bins, limit, p)
            in_batches = [cuts[p].keep(k, c[r0:r0 + step, p], r0) for k, c, t in shards for r0 in range(0, len(t), step)]
            assert (np.concatenate(in_batches or [np.zeros(0, bool)]) == want).all(), (seed, step, p)
            tt = np.concatenate([t for *_, t in shards])
            assert cuts[p].docs == want.sum() and cuts[p].tokens == tt[want].sum()


def test_token_budget_and_tiny_targets():
    shards = [("a", np.array([[10], [30], [20]]), np.array([5, 5, 5])), ("b", np.array([[30], [0]]), np.array([7, 1]))]
    scan = lambda: (pool.ShardScores(k, c, t) for k, c, t in shards)  # noqa: E731
    cut = pool.find_cuts(scan, [6.0], "tokens")[0]  # 30@a (5 tokens) then 30@b (7): reaches 6 at b
    assert cut.keep("a", shards[0][1][:, 0]).tolist() == [False, True, False]
    assert cut.keep("b", shards[1][1][:, 0]).tolist() == [True, False]
    one = pool.find_cuts(scan, [0.5], "docs")[0]
    assert one.docs == 1 and one.tie_shard == "a" and one.tie_row == 1
    everything = pool.find_cuts(scan, [1e9], "tokens")[0]
    assert everything.docs == 5 and everything.tokens == 23


def test_summaries_merge_exactly():
    rng = np.random.default_rng(0)
    a = {"x": rng.normal(size=300), "y": np.where(rng.random(300) < 0.1, np.nan, rng.random(300))}
    b = {"x": rng.normal(3, 2, size=500), "y": rng.random(500)}
    ta, tb = rng.integers(1, 100, 300), rng.integers(1, 100, 500)
    sa = pool.ShardSummary.of(a, ta, ["p"] * 100 + ["q"] * 200)
    sb = pool.ShardSummary.of(b, tb, ["q"] * 500)
    whole = pool.ShardSummary.of({k: np.concatenate([a[k], b[k]]) for k in a}, np.concatenate([ta, tb]),
                                 ["p"] * 100 + ["q"] * 700)
    m = sa.merge(sb)
    assert (m.docs, m.tokens) == (whole.docs, whole.tokens) == (800, int(ta.sum() + tb.sum()))
    assert m.sources == whole.sources == {"p": [100, int(ta[:100].sum())], "q": [700, int(ta[100:].sum() + tb.sum())]}
    for k in a:
        x, y = m.scores[k], whole.scores[k]
        assert (x.count, x.nulls, x.min, x.max) == (y.count, y.nulls, y.min, y.max)
        assert x.mean == pytest.approx(y.mean, rel=1e-12) and x.m2 == pytest.approx(y.m2, rel=1e-10)
        vals = np.concatenate([a[k], b[k]])
        vals = vals[np.isfinite(vals)]
        assert x.std == pytest.approx(vals.std(), rel=1e-10)
        # the KLL sketch: quantiles within its rank error (k=200: ~1.65%)
        q = x.quantiles([0.1, 0.5, 0.9])
        ranks = [np.mean(vals <= v) for v in q]
        assert np.allclose(ranks, [0.1, 0.5, 0.9], atol=0.03)
    again = pool.ShardSummary.from_dict(m.to_dict())
    assert again.to_dict() == m.to_dict()


def test_normalisation_scales_flips_and_handles_constant_and_nulls():
    s = pool.ShardSummary.of({"a": np.array([1.0, 2.0, 3.0]), "b": np.array([4.0, 4.0, 4.0]),
                              "c": np.array([np.nan, 0.0, 10.0])}, np.ones(3, dtype=int), ["x"] * 3)
    norm = pool.Normalisation.from_summary(s, ["a", "b", "c"], {"c": True})
    m = norm.matrix({"a": np.array([1.0, 2.0, 3.0]), "b": np.array([4.0, 4.0, 4.0]), "c": np.array([np.nan, 0.0, 10.0])})
    np.testing.assert_allclose(m[:, 0], [0, 2.5, 5])
    np.testing.assert_allclose(m[:, 1], [0, 0, 0])  # constant: no information
    np.testing.assert_allclose(m[:, 2], [0, 5, 0])  # flipped (lower is better); null stays at the bottom


def test_combined_scores_are_exact_whatever_the_product():
    rng = np.random.default_rng(1)
    units = np.round(rng.random((500, 25)) * 5 * 2 ** 20)
    W = rng.dirichlet(np.ones(25), size=64).T
    Wu = pool.weight_units(W)
    many = pool.combined_units(units, Wu)  # one BLAS matrix product for 64 vectors
    for p in (0, 17, 63):
        one = pool.combined_units(units, Wu[:, p])
        exact = [sum(int(u) * int(w) for u, w in zip(row, Wu[:, p])) for row in units[:20]]
        assert (many[:, p] == one).all() and one[:20].tolist() == exact


def test_seeded_uniform_is_stable_and_uniform():
    h = pool.doc_hashes("shard-0", [f"d{i}" for i in range(20000)])
    u = pool.uniform(h, 3)
    assert (u == pool.uniform(h, 3)).all() and not (u == pool.uniform(h, 4)).all()
    assert abs(u.mean() - 0.5) < 0.01 and 0 <= u.min() and u.max() < 1


def test_a_cut_inside_a_huge_block_of_ties_holds_one_shard_not_the_block():
    """Half a million documents share the boundary value (a saturating score): the cut is still
    exact (pool order), and the pass holds about one shard, not the tied block."""
    import tracemalloc

    n_shards, per = 50, 10_000
    target = 123_457.0  # documents: the boundary falls inside shard 12 of the tied block

    def scan():
        for s in range(n_shards):
            c = np.full((per, 1), 7, dtype=np.int64)
            c[:5] = 9  # a few documents above the block in each shard
            yield pool.ShardScores(f"s{s:03d}", c, np.ones(per, dtype=np.int64))

    tracemalloc.start()
    cut = pool.find_cuts(scan, [target], "docs", bins=16, collect_limit=1000, hi_units=16)[0]
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    above = 5 * n_shards
    # independent arithmetic: after the 250 documents above, the block is taken in pool order
    need = int(target) - above
    assert cut.threshold == 7 and cut.docs == int(target)
    assert cut.tie_shard == f"s{need // (per - 5):03d}"
    assert cut.tie_row == 5 + need % (per - 5) - 1
    assert peak < 8 * per * 8 * 4, peak  # a few shard-sized arrays; the block would be ~16 MB


def test_random_selection_has_the_target_size_and_is_the_smallest_hashes(tmp_path):
    """The evaluation's random arm: per seed, the documents with the smallest seeded hash until
    their tokens reach the target (checked against an independent sort), so it has the compared
    selection's size up to its last document, and another seed draws other documents."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from metarater_assets.core import scan

    rng = np.random.default_rng(3)
    keys, uris, tables = [], [], []
    for s in range(4):
        n = int(rng.integers(20, 60))
        t = pa.table({"n_tokens": rng.integers(1, 400, size=n), "doc_hash": rng.integers(0, 2 ** 63, size=n, dtype=np.uint64)})
        keys.append(f"k{s}")
        uris.append(str(tmp_path / f"k{s}.parquet"))
        pq.write_table(t, uris[-1])
        tables.append(t)
    files = scan.PoolFiles(tuple(keys), tuple(uris))
    target = 9000
    masks = scan.random_selections(files, [target, target], [11, 12])
    picked = []
    for seed, mask in zip([11, 12], masks):
        got = np.concatenate([mask(k, 0, None, t) for k, t in zip(keys, tables)])
        h = np.concatenate([t.column("doc_hash").to_numpy() for t in tables])
        n = np.concatenate([t.column("n_tokens").to_numpy() for t in tables])
        order = np.argsort(pool.uniform(h, seed), kind="stable")
        k = int(np.searchsorted(np.cumsum(n[order]), target, side="left")) + 1
        want = np.zeros(len(h), dtype=bool)
        want[order[:k]] = True
        assert (got == want).all()
        assert n[got].sum() >= target > n[got].sum() - n[order[k - 1]]
        picked.append(got)
    assert (picked[0] != picked[1]).any()
