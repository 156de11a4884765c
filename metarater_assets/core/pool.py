"""The pool as a merge of per-shard summaries: statistics, normalisation and global cuts.

Nothing here ever holds the pool. A pool-level quantity is ``merge(summarise(shard) ...)``:

* ``ShardSummary``: per score count / nulls / min / max / mean / M2 (Chan's parallel update) and an
  Apache DataSketches KLL sketch (quantiles and histograms, rank error ~1.65% at k=200); documents,
  tokens and per-source counts. ``merge`` is exact for every field but the sketch.
* ``Normalisation``: each score min-max scaled to [0, 5] over the pool (nulls -> 0, a constant score
  -> 0), optionally flipped (``5 - s``) for a lower-is-better score; stored once, read by every
  consumer. Normalised scores are quantised to multiples of 2**-20 and weights to multiples of
  2**-24, so a combined score ``sum_i w_i s_i`` is an integer number of 2**-44 units computed
  exactly in float64 whatever the summation order (BLAS matrix product, one vector or many): every
  step that recomputes a document's combined score gets the same bits.
* ``find_cuts``: the global threshold of each weight vector of a plan, from per-shard
  token-weighted histograms of the combined score (one matrix product per shard serves every
  vector), summed, then an exact pass over the boundary bin (refined while it is too full). The
  result keeps exactly the documents an exact sort by (combined score desc, pool order) keeps,
  where pool order is (shard key, row in the shard).
"""
from __future__ import annotations

import base64
import math
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np

POOL_VERSION = "2"
SCALE = 5.0
SCORE_BITS = 20  # normalised scores in units of 2**-20
WEIGHT_BITS = 24  # weights in units of 2**-24
UNIT = 2.0 ** -(SCORE_BITS + WEIGHT_BITS)  # one unit of a combined score
KLL_K = 200


# ------------------------------------------------------------------------------------------
# Per-shard summaries


def _kll():
    import datasketches

    return datasketches.kll_doubles_sketch(KLL_K)


@dataclass
class ScoreSummary:
    """One score over some documents: exact counts, extremes and moments, plus a KLL sketch."""

    count: int = 0  # finite values
    nulls: int = 0  # null or non-finite
    min: float = math.inf
    max: float = -math.inf
    mean: float = 0.0
    m2: float = 0.0  # sum of squared deviations from the mean
    sketch: bytes = b""

    @classmethod
    def of(cls, values: np.ndarray, sketch: bool = True) -> "ScoreSummary":
        v = np.asarray(values, dtype=np.float64)
        f = v[np.isfinite(v)]
        s = cls(count=int(f.size), nulls=int(v.size - f.size))
        if f.size:
            s.min, s.max = float(f.min()), float(f.max())
            s.mean = float(f.mean())
            s.m2 = float(((f - s.mean) ** 2).sum())
            if sketch:
                k = _kll()
                k.update(f)
                s.sketch = bytes(k.serialize())
        return s

    def merge(self, other: "ScoreSummary") -> "ScoreSummary":
        if not self.count and not self.nulls and not self.sketch:  # nothing yet: the other, exactly
            return ScoreSummary(**vars(other))
        n = self.count + other.count
        out = ScoreSummary(count=n, nulls=self.nulls + other.nulls, min=min(self.min, other.min),
                           max=max(self.max, other.max))
        if n:
            d = other.mean - self.mean
            out.mean = self.mean + d * other.count / n
            out.m2 = self.m2 + other.m2 + d * d * self.count * other.count / n
        if self.sketch and other.sketch:
            import datasketches

            k = datasketches.kll_doubles_sketch.deserialize(self.sketch)
            k.merge(datasketches.kll_doubles_sketch.deserialize(other.sketch))
            out.sketch = bytes(k.serialize())
        else:
            out.sketch = self.sketch or other.sketch
        return out

    @property
    def std(self) -> float:
        return math.sqrt(self.m2 / self.count) if self.count else math.nan

    def quantiles(self, qs: Sequence[float]) -> list[float]:
        if not self.sketch:
            return [math.nan] * len(qs)
        import datasketches

        k = datasketches.kll_doubles_sketch.deserialize(self.sketch)
        return [float(x) for x in k.get_quantiles(list(qs))]

    def histogram(self, bins: int = 40) -> tuple[np.ndarray, np.ndarray]:
        """(counts, edges) over [min, max] from the sketch (approximate counts, exact range)."""
        if not self.sketch or not self.max > self.min:
            return np.array([float(self.count)]), np.array([self.min, self.min + 1.0])
        import datasketches

        edges = np.linspace(self.min, self.max, bins + 1)
        k = datasketches.kll_doubles_sketch.deserialize(self.sketch)
        pmf = np.asarray(k.get_pmf(list(edges[1:-1])))
        return pmf * self.count, edges

    def to_dict(self) -> dict:
        return {"count": self.count, "nulls": self.nulls, "min": _f(self.min), "max": _f(self.max),
                "mean": self.mean, "m2": self.m2, "sketch": base64.b64encode(self.sketch).decode()}

    @classmethod
    def from_dict(cls, d: Mapping) -> "ScoreSummary":
        return cls(count=int(d["count"]), nulls=int(d["nulls"]), min=_unf(d["min"], math.inf),
                   max=_unf(d["max"], -math.inf), mean=float(d["mean"]), m2=float(d["m2"]),
                   sketch=base64.b64decode(d["sketch"]))


def _f(x: float):
    return None if not math.isfinite(x) else float(x)


def _unf(x, default: float) -> float:
    return default if x is None else float(x)


@dataclass
class ShardSummary:
    """What pool-level steps need of one shard (or, merged, of the pool)."""

    docs: int = 0
    tokens: int = 0
    shards: int = 0
    scores: dict[str, ScoreSummary] = field(default_factory=dict)
    sources: dict[str, list[int]] = field(default_factory=dict)  # source -> [docs, tokens]

    @classmethod
    def of(cls, columns: Mapping[str, np.ndarray], tokens: np.ndarray, sources: Sequence[str],
           sketch: bool = True) -> "ShardSummary":
        tokens = np.asarray(tokens, dtype=np.int64)
        out = cls(docs=int(len(tokens)), tokens=int(tokens.sum()), shards=1,
                  scores={n: ScoreSummary.of(v, sketch) for n, v in columns.items()})
        if len(tokens):
            import pyarrow as pa

            g = pa.table({"source": pa.array(list(sources), pa.string()), "t": pa.array(tokens)}).group_by(
                "source").aggregate([("t", "count"), ("t", "sum")])
            for s, c, t in zip(g.column("source").to_pylist(), g.column("t_count").to_pylist(),
                               g.column("t_sum").to_pylist()):
                out.sources[s] = [int(c), int(t)]
        return out

    def merge(self, other: "ShardSummary") -> "ShardSummary":
        names = list(self.scores) + [n for n in other.scores if n not in self.scores]
        scores = {n: self.scores.get(n, ScoreSummary()).merge(other.scores.get(n, ScoreSummary())) for n in names}
        sources = {k: list(v) for k, v in self.sources.items()}
        for k, (d, t) in other.sources.items():
            cur = sources.setdefault(k, [0, 0])
            cur[0] += d
            cur[1] += t
        return ShardSummary(docs=self.docs + other.docs, tokens=self.tokens + other.tokens,
                            shards=self.shards + other.shards, scores=scores, sources=sources)

    def to_dict(self) -> dict:
        return {"docs": self.docs, "tokens": self.tokens, "shards": self.shards, "sources": self.sources,
                "scores": {n: s.to_dict() for n, s in self.scores.items()}}

    @classmethod
    def from_dict(cls, d: Mapping) -> "ShardSummary":
        return cls(docs=int(d["docs"]), tokens=int(d["tokens"]), shards=int(d.get("shards", 1)),
                   scores={n: ScoreSummary.from_dict(s) for n, s in d["scores"].items()},
                   sources={k: [int(v[0]), int(v[1])] for k, v in d["sources"].items()})


class ShardSummaryBuilder:
    """One shard's ``ShardSummary`` built batch by batch (memory: one batch): exact counts and
    extremes, moments merged per batch (Chan), and one KLL sketch per score fed every batch in
    order, as one sketch of the whole shard would be."""

    def __init__(self, names: Sequence[str]):
        self.names = list(names)
        self.part = ShardSummary(shards=1, scores={n: ScoreSummary() for n in self.names})
        self.sketches = {n: None for n in self.names}

    def add(self, columns: Mapping[str, np.ndarray], tokens: np.ndarray, sources: Sequence[str]) -> None:
        batch = ShardSummary.of(columns, tokens, sources, sketch=False)
        batch.shards = 0
        self.part = self.part.merge(batch)
        for n in self.names:
            v = np.asarray(columns[n], dtype=np.float64)
            f = v[np.isfinite(v)]
            if f.size:
                if self.sketches[n] is None:
                    self.sketches[n] = _kll()
                self.sketches[n].update(f)

    def finish(self) -> ShardSummary:
        for n, k in self.sketches.items():
            self.part.scores[n].sketch = bytes(k.serialize()) if k is not None else b""
        return self.part


def merge_all(summaries: Iterable[ShardSummary]) -> ShardSummary:
    out = ShardSummary()
    for s in summaries:
        out = out.merge(s)
    return out


# ------------------------------------------------------------------------------------------
# Hash sampling (seeded, per document, no state)

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLD = np.uint64(0x9E3779B97F4A7C15)


def mix64(x: np.ndarray, seed: int) -> np.ndarray:
    """splitmix64 finaliser of ``x ^ f(seed)``: a seeded, uniform 64-bit hash of 64-bit ids."""
    with np.errstate(over="ignore"):
        z = np.asarray(x, dtype=np.uint64) ^ (np.uint64(seed & 0xFFFFFFFFFFFFFFFF) * _GOLD + _GOLD)
        z = (z ^ (z >> np.uint64(30))) * _M1
        z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


def uniform(doc_hash: np.ndarray, seed: int) -> np.ndarray:
    """A seeded uniform number in [0, 1) per document (from its stored 64-bit hash)."""
    return (mix64(doc_hash, seed) >> np.uint64(11)).astype(np.float64) * 2.0 ** -53


def doc_hashes(shard: str, doc_ids: Sequence[str]) -> np.ndarray:
    """The 64-bit identity hash of each document (shard key + doc id), stored in the shard index."""
    import xxhash

    prefix = shard.encode() + b"\0"
    return np.fromiter((xxhash.xxh3_64_intdigest(prefix + d.encode("utf-8", "surrogatepass")) for d in doc_ids),
                       dtype=np.uint64, count=len(doc_ids))


# ------------------------------------------------------------------------------------------
# Normalisation and combined scores


@dataclass(frozen=True)
class Normalisation:
    """Pool min-max to [0, 5] per score (nulls -> 0; constant -> 0), ``flip``: ``5 - s``."""

    names: tuple[str, ...]
    lo: tuple[float, ...]
    hi: tuple[float, ...]
    flip: tuple[bool, ...]

    @classmethod
    def from_summary(cls, summary: ShardSummary, names: Sequence[str],
                     flip: Mapping[str, bool] | None = None) -> "Normalisation":
        missing = [n for n in names if n not in summary.scores]
        if missing:
            raise ValueError(f"no pool statistics for score(s) {missing}")
        lo = tuple(summary.scores[n].min if summary.scores[n].count else 0.0 for n in names)
        hi = tuple(summary.scores[n].max if summary.scores[n].count else 0.0 for n in names)
        return cls(tuple(names), lo, hi, tuple(bool((flip or {}).get(n, False)) for n in names))

    def flipping(self, scores: Iterable[str]) -> "Normalisation":
        """The same normalisation with ``scores`` flipped as well (those already flipped stay so)."""
        extra = set(scores)
        return Normalisation(self.names, self.lo, self.hi, tuple(f or n in extra for n, f in zip(self.names, self.flip)))

    def units(self, columns: Mapping[str, np.ndarray]) -> np.ndarray:
        """(n, S) normalised scores as exact integers (float64) in units of 2**-20, 0..5 * 2**20."""
        mats = []
        for name, lo, hi, fl in zip(self.names, self.lo, self.hi, self.flip):
            v = np.asarray(columns[name], dtype=np.float64)
            ok = np.isfinite(v)
            z = np.zeros_like(v)
            if hi > lo:
                z[ok] = np.clip((v[ok] - lo) / (hi - lo) * SCALE, 0.0, SCALE)
                if fl:
                    z[ok] = SCALE - z[ok]
            mats.append(np.round(z * 2.0 ** SCORE_BITS))
        return np.stack(mats, axis=1) if mats else np.zeros((0, 0))

    def matrix(self, columns: Mapping[str, np.ndarray]) -> np.ndarray:
        """(n, S) normalised scores in [0, 5] (what ``units`` holds, as floats)."""
        return self.units(columns) * 2.0 ** -SCORE_BITS

    def to_dict(self) -> dict:
        return {"names": list(self.names), "lo": list(self.lo), "hi": list(self.hi), "flip": list(self.flip),
                "version": POOL_VERSION}

    @classmethod
    def from_dict(cls, d: Mapping) -> "Normalisation":
        return cls(tuple(d["names"]), tuple(map(float, d["lo"])), tuple(map(float, d["hi"])),
                   tuple(map(bool, d["flip"])))


def weight_units(W: np.ndarray) -> np.ndarray:
    """Weights (S,) or (S, P) as exact integers (float64) in units of 2**-24."""
    W = np.asarray(W, dtype=np.float64)
    if (W < 0).any() or not np.isfinite(W).all():
        raise ValueError("weights must be finite and non-negative")
    return np.round(W * 2.0 ** WEIGHT_BITS)


def combined_units(units: np.ndarray, W_units: np.ndarray) -> np.ndarray:
    """Exact combined scores as int64 units of 2**-44: (n, S) @ (S,) -> (n,), or (S, P) -> (n, P).
    Every product and partial sum is an integer below 2**53, so BLAS gives the exact result."""
    if units.shape[1] != W_units.shape[0]:
        raise ValueError(f"{W_units.shape[0]} weights for {units.shape[1]} scores")
    if units.shape[1] > 100:
        raise ValueError("exact combined scores support at most 100 scores")
    return (units @ W_units).astype(np.int64)


def to_score(units: np.ndarray) -> np.ndarray:
    return np.asarray(units, dtype=np.float64) * UNIT


# ------------------------------------------------------------------------------------------
# Global cuts


@dataclass(frozen=True)
class Cut:
    """Keep a document iff ``c > threshold`` or ``c == threshold`` and (shard, row) <= (tie_shard,
    tie_row) in pool order; ``c`` and ``threshold`` in combined-score units (int)."""

    threshold: int
    tie_shard: str
    tie_row: int
    docs: int
    tokens: int

    def keep(self, shard: str, combined: np.ndarray, row0: int = 0) -> np.ndarray:
        """Which of a shard's documents are kept; ``combined`` holds its rows ``row0 ...``."""
        c = np.asarray(combined, dtype=np.int64)
        mask = c > self.threshold
        if shard < self.tie_shard:
            mask |= c == self.threshold
        elif shard == self.tie_shard:
            mask |= (c == self.threshold) & (np.arange(row0, row0 + len(c)) <= self.tie_row)
        return mask

    @property
    def threshold_score(self) -> float:
        return float(self.threshold * UNIT)

    def to_dict(self) -> dict:
        return {"threshold": int(self.threshold), "threshold_score": self.threshold_score,
                "tie_shard": self.tie_shard, "tie_row": int(self.tie_row), "docs": int(self.docs),
                "tokens": int(self.tokens)}

    @classmethod
    def from_dict(cls, d: Mapping) -> "Cut":
        return cls(int(d["threshold"]), str(d["tie_shard"]), int(d["tie_row"]), int(d["docs"]), int(d["tokens"]))


@dataclass
class ShardScores:
    """Rows ``row0 ...`` of one shard as a cut pass sees them (a whole shard, or one batch of it):
    combined scores (n, P) int64 units, tokens (n,). A scan yields a shard's batches in row order."""

    key: str
    combined: np.ndarray
    tokens: np.ndarray
    row0: int = 0


def target_amount(total_docs: int, total_tokens: int, *, fraction: float | None, by: str,
                  token_budget: int | None) -> tuple[str, float]:
    """(what is counted, how much to keep): a fraction of documents or tokens, or a token budget;
    selection keeps documents in order until the running count reaches it (at least one)."""
    if token_budget is not None:
        return "tokens", float(token_budget)
    if fraction is None or not (0.0 < fraction <= 1.0):
        raise ValueError(f"fraction must be in (0, 1], got {fraction!r}")
    if by == "docs":
        return "docs", float(max(1, math.ceil(fraction * total_docs - 1e-9)))
    if by == "tokens":
        return "tokens", fraction * total_tokens
    raise ValueError(f"by must be 'docs' or 'tokens', got {by!r}")


def find_cuts(scan: Callable[[], Iterator[ShardScores]], targets: Sequence[float], counting: str, *,
              bins: int = 2048, collect_limit: int = 200_000, hi_units: int | None = None) -> list[Cut]:
    """Exact global cuts for P weight vectors in a few streaming passes over the pool.

    ``scan()`` yields every shard in pool order (sorted shard keys) with its (n, P) combined scores
    and token counts, whole or in row batches (``ShardScores.row0``); it is called once per pass.
    ``targets[p]``: how many documents or tokens
    (``counting``) vector p keeps; documents are taken by (combined desc, shard, row) until the
    running count reaches the target. Pass 1 sums per-shard (P, bins) histograms of the count over
    [0, hi); the bin holding each vector's boundary is refined by another histogram pass while it
    holds more than ``collect_limit`` documents and more than one distinct value; then one pass
    collects the boundary bin's documents and sorts them exactly, or, where the boundary is one
    value (a block of ties of any size), counts them shard by shard in pool order. Memory:
    O(P * bins) plus the boundary documents of a multi-value bin (at most ``collect_limit`` per
    vector) and one batch, never the pool or a whole shard.
    """
    if bins < 2:
        raise ValueError("bins must be >= 2 (a one-bin histogram cannot narrow the boundary)")
    P = len(targets)
    hi = int(hi_units if hi_units is not None else round((SCALE * (1 + 1e-6)) / UNIT) + 1)
    lo_v = np.zeros(P, dtype=np.int64)
    hi_v = np.full(P, hi, dtype=np.int64)
    above = np.zeros(P, dtype=np.float64)  # amount kept strictly above the current range
    above_docs = np.zeros(P, dtype=np.int64)
    above_tok = np.zeros(P, dtype=np.int64)
    want = np.asarray(targets, dtype=np.float64)
    keep_all = None
    offsets = (np.arange(P, dtype=np.int64) * bins)[None, :]
    while True:
        nb = np.minimum(bins, hi_v - lo_v)  # bins per vector (a narrow range gets one per value)
        hist_c = np.zeros(P * bins, dtype=np.float64)  # what is counted (docs or tokens)
        hist_d = np.zeros(P * bins, dtype=np.float64)
        hist_t = np.zeros(P * bins, dtype=np.float64)
        for sh in scan():
            c = np.asarray(sh.combined, dtype=np.int64).reshape(len(sh.tokens), P)
            t = np.asarray(sh.tokens, dtype=np.float64)
            inside = (c >= lo_v) & (c < hi_v)
            if not inside.any():
                continue
            flat = (offsets + ((c - lo_v) * nb) // (hi_v - lo_v))[inside]
            tt = np.broadcast_to(t[:, None], c.shape)[inside]
            hist_d += np.bincount(flat, minlength=P * bins)
            hist_t += np.bincount(flat, weights=tt, minlength=P * bins)
            hist_c += np.bincount(flat, weights=tt if counting == "tokens" else None, minlength=P * bins)
        hist_c, hist_d, hist_t = (h.reshape(P, bins) for h in (hist_c, hist_d, hist_t))
        if keep_all is None:
            keep_all = want >= hist_c.sum(1) - 1e-9
            empty = hist_d.sum(1) == 0  # nothing to select (e.g. an empty random sample)
        refine = False
        for p in range(P):
            if empty[p]:
                continue
            n = int(nb[p])
            down = hist_c[p, :n][::-1]  # from the top bin down
            cum = np.cumsum(down)
            idx = int(np.searchsorted(cum, want[p] - above[p] - 1e-9, side="left"))
            if idx >= n:  # everything left is kept: the boundary is the lowest non-empty bin
                idx = int(np.flatnonzero(hist_d[p, :n][::-1])[-1])
            b = n - 1 - idx
            width = int(hi_v[p] - lo_v[p])
            above[p] += hist_c[p, b + 1:n].sum()
            above_docs[p] += int(hist_d[p, b + 1:n].sum())
            above_tok[p] += int(hist_t[p, b + 1:n].sum())
            lo_v[p], hi_v[p] = lo_v[p] + -(-b * width // n), lo_v[p] + -(-(b + 1) * width // n)
            if hist_d[p, b] > collect_limit and hi_v[p] - lo_v[p] > 1:
                refine = True
        if not refine:
            break
    cuts = _collect(scan, want, counting, lo_v, hi_v, above, above_docs, above_tok, keep_all, empty)
    return [Cut(threshold=hi, tie_shard="", tie_row=-1, docs=0, tokens=0) if e else c for c, e in zip(cuts, empty)]


def _collect(scan, want, counting, lo_v, hi_v, above, above_docs, above_tok, keep_all, empty) -> list[Cut | None]:
    """The last pass. A boundary bin of several values: collect its documents and sort them
    exactly. A boundary of one value (a block of ties, however large): its documents are in pool
    order already, the order the scan yields them, so a running count over the shards finds the
    cut without holding them (memory: one shard)."""
    P = len(want)
    tie = (hi_v - lo_v) == 1
    rows: list[list[tuple[np.ndarray, ...]]] = [[] for _ in range(P)]
    keys: list[str] = []
    last_row = -1
    run = np.zeros(P, dtype=np.float64)  # one-value boundaries: amount, docs and tokens so far
    run_docs = np.zeros(P, dtype=np.int64)
    run_tok = np.zeros(P, dtype=np.int64)
    found: list[Cut | None] = [None] * P
    last: list[Cut | None] = [None] * P  # the last document at a one-value boundary (keep them all)
    for sh in scan():
        if not keys or keys[-1] != sh.key:
            keys.append(sh.key)
        r0 = int(sh.row0)
        if len(sh.tokens):
            last_row = r0 + len(sh.tokens) - 1
        c = sh.combined
        t = np.asarray(sh.tokens, dtype=np.int64)
        for p in range(P):
            if empty[p]:
                continue
            if tie[p]:
                if found[p] is not None:
                    continue
                m = np.flatnonzero(c[:, p] == lo_v[p])
                if not len(m):
                    continue
                tm = t[m]
                amount = tm.astype(np.float64) if counting == "tokens" else np.ones(len(m))
                cum = above[p] + run[p] + np.cumsum(amount)
                i = int(np.searchsorted(cum, want[p] - 1e-9, side="left"))
                if not keep_all[p] and i < len(m):
                    found[p] = Cut(threshold=int(lo_v[p]), tie_shard=sh.key, tie_row=r0 + int(m[i]),
                                   docs=int(above_docs[p] + run_docs[p] + i + 1),
                                   tokens=int(above_tok[p] + run_tok[p] + tm[:i + 1].sum()))
                run[p] += amount.sum()
                run_docs[p] += len(m)
                run_tok[p] += int(tm.sum())
                last[p] = Cut(threshold=int(lo_v[p]), tie_shard=sh.key, tie_row=r0 + int(m[-1]),
                              docs=int(above_docs[p] + run_docs[p]), tokens=int(above_tok[p] + run_tok[p]))
                continue
            m = np.flatnonzero((c[:, p] >= lo_v[p]) & (c[:, p] < hi_v[p]))
            if len(m):
                rows[p].append((c[m, p], np.full(len(m), len(keys) - 1, dtype=np.int64), m + r0, t[m]))
    if (not keys or last_row < 0) and not all(empty):
        raise ValueError("empty pool")
    cuts: list[Cut | None] = []
    for p in range(P):
        if empty[p]:
            cuts.append(None)
            continue
        if tie[p]:
            if last[p] is None:
                raise RuntimeError("the boundary value of a cut holds no document: the pool changed during the selection")
            cuts.append(found[p] or last[p])
            continue
        if not rows[p]:
            raise RuntimeError("the boundary bin of a cut is empty: the pool changed during the selection")
        c, s, r, t = (np.concatenate(x) for x in zip(*rows[p]))
        order = np.lexsort((r, s, -c))  # combined desc, then shard, then row
        amount = t[order].astype(np.float64) if counting == "tokens" else np.ones(len(order))
        cum = above[p] + np.cumsum(amount)
        i = len(order) - 1 if keep_all[p] else min(int(np.searchsorted(cum, want[p] - 1e-9, side="left")), len(order) - 1)
        j = order[i]
        cuts.append(Cut(threshold=int(c[j]), tie_shard=keys[int(s[j])], tie_row=int(r[j]),
                        docs=int(above_docs[p] + i + 1), tokens=int(above_tok[p] + t[order[:i + 1]].sum())))
    return cuts
