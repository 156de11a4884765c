"""Streaming passes over the pool's shard index files: cuts, kept counts and training data.

A pool-level step never loads the pool, nor a whole shard: it walks the per-shard index files
(``doc_id``, ``source``, ``n_tokens``, ``doc_hash`` and every raw score, one Parquet file per shard)
in pool order, in row batches sized so one batch's (rows x weight vectors) matrix stays about 32 MB,
reading only the columns it needs, a few batches ahead on a thread (pyarrow decodes without the
GIL). Per batch, one matrix product gives the combined scores of every weight vector of a plan at
once.
"""
from __future__ import annotations

from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from . import pool
from . import storage
from .storage import fs_and_path, iter_parquet

PREFETCH = 4


@dataclass(frozen=True)
class PoolFiles:
    """The shards of the pool in pool order, with their index (and token) files."""

    keys: tuple[str, ...]
    index: tuple[str, ...]
    tokens: tuple[str, ...] = ()

    def __post_init__(self):
        if list(self.keys) != sorted(self.keys):
            raise ValueError("pool files must be in pool order (sorted shard keys)")


#: the most (rows x weight vectors) a scan holds per batch: 4M int64 combined scores, 32 MB
BATCH_CELLS = 1 << 22
#: rows per scan batch, at least and at most
MIN_BATCH_ROWS, MAX_BATCH_ROWS = 1024, 65536


def batch_rows(vectors: int = 1) -> int:
    """Rows per scan batch for ``vectors`` weight vectors: one batch's (rows, vectors) matrix stays
    about ``BATCH_CELLS`` cells, whatever the shard's size."""
    return int(max(MIN_BATCH_ROWS, min(MAX_BATCH_ROWS, BATCH_CELLS // max(1, vectors))))


def _prefetch(it: Iterator, depth: int) -> Iterator:
    """``it`` run ``depth`` items ahead on one thread (pyarrow reads and decodes without the GIL);
    the thread's ``next`` calls run one at a time, in order."""
    if depth <= 0:
        yield from it
        return
    end = object()
    ex = ThreadPoolExecutor(1)
    try:
        window = deque(ex.submit(next, it, end) for _ in range(depth))
        while (x := window.popleft().result()) is not end:
            window.append(ex.submit(next, it, end))
            yield x
    finally:
        ex.shutdown(wait=True, cancel_futures=True)


def _batches(keys: Sequence[str], uris: Sequence[str], columns: Sequence[str], rows: int,
             depth: int = PREFETCH) -> Iterator[tuple[str, int, pa.Table]]:
    """(shard, first row, table of up to ``rows`` rows) for every shard in order, streamed."""
    def gen():
        for key, uri in zip(keys, uris):
            row0 = 0
            for t in iter_parquet(uri, list(columns), rows):
                yield key, row0, t
                row0 += t.num_rows

    return _prefetch(gen(), depth)


def _units(t: pa.Table, norm: pool.Normalisation) -> np.ndarray:
    cols = {n: t.column(n).to_numpy(zero_copy_only=False) for n in norm.names}
    return norm.units(cols)


def combined(files: PoolFiles, norm: pool.Normalisation, W: np.ndarray, extra: Sequence[str] = (),
             rows: int | None = None) -> Iterator[tuple[str, int, np.ndarray, pa.Table]]:
    """(key, first row, (n, P) combined-score units, the batch's ``n_tokens`` + ``extra`` columns)
    per batch of every shard, in pool order (``rows`` per batch, at most; default ``batch_rows``)."""
    Wu = pool.weight_units(np.asarray(W, dtype=np.float64).reshape(len(norm.names), -1))
    cols = list(dict.fromkeys([*norm.names, "n_tokens", *extra]))
    n = min(rows, batch_rows(Wu.shape[1])) if rows else batch_rows(Wu.shape[1])
    for key, row0, t in _batches(files.keys, files.index, cols, n):
        yield key, row0, pool.combined_units(_units(t, norm), Wu), t


def cuts(files: PoolFiles, norm: pool.Normalisation, W: np.ndarray, *, totals: tuple[int, int],
         fraction: float | None, by: str, token_budget: int | None, bins: int = 2048,
         collect_limit: int = 200_000) -> list[pool.Cut]:
    """The exact global cut of each column of ``W`` (S, P) for one selection rule."""
    counting, target = pool.target_amount(totals[0], totals[1], fraction=fraction, by=by, token_budget=token_budget)
    P = np.asarray(W).reshape(len(norm.names), -1).shape[1]

    def scan():
        for key, row0, c, t in combined(files, norm, W):
            yield pool.ShardScores(key, c, t.column("n_tokens").to_numpy(), row0)

    return pool.find_cuts(scan, [target] * P, counting, bins=bins, collect_limit=collect_limit)


def kept_counts(files: PoolFiles, norm: pool.Normalisation, w: np.ndarray, cut: pool.Cut) -> tuple[dict, dict]:
    """Per shard and per source: kept and pool documents and tokens under one cut (group_by
    per batch, merged)."""
    per_shard: dict[str, dict] = {}
    per_source: dict[str, dict] = {}
    for key, row0, c, t in combined(files, norm, w, extra=["source"]):
        kept = cut.keep(key, c[:, 0], row0)
        g = pa.table({"source": t.column("source"), "n": t.column("n_tokens"), "k": pa.array(kept)}).append_column(
            "kn", pa.array(np.where(kept, t.column("n_tokens").to_numpy(), 0)))
        agg = g.group_by("source").aggregate([("n", "count"), ("n", "sum"), ("k", "sum"), ("kn", "sum")])
        for src, pd_, pt, kd, kt in zip(*(agg.column(c).to_pylist() for c in ("source", "n_count", "n_sum", "k_sum", "kn_sum"))):
            cur = per_source.setdefault(src, {"docs": 0, "tokens": 0, "pool_docs": 0, "pool_tokens": 0})
            for k, v in (("docs", kd), ("tokens", kt), ("pool_docs", pd_), ("pool_tokens", pt)):
                cur[k] += int(v or 0)
        n = t.column("n_tokens").to_numpy()
        cur = per_shard.setdefault(key, {"docs": 0, "tokens": 0, "pool_docs": 0, "pool_tokens": 0})
        for k, v in (("docs", kept.sum()), ("tokens", n[kept].sum()), ("pool_docs", len(n)), ("pool_tokens", n.sum())):
            cur[k] += int(v)
    return per_shard, per_source


@dataclass(frozen=True)
class Sample:
    """Sample a selection down to ``budget`` tokens by a seeded per-document hash: the selected
    documents with the smallest hash until their tokens reach the budget (an exact cut on the
    hash, so a few long documents are sampled as faithfully as many short ones)."""

    budget: int | None
    seed: int


HASH_UNITS = 1 << 40


def _selected(key, row0, c, t, cuts_, masks) -> list[np.ndarray]:
    return [masks[p](key, row0, c[:, p], t) if masks and masks[p] else cuts_[p].keep(key, c[:, p], row0)
            for p in range(len(cuts_))]


def _hash_units(doc_hash: np.ndarray, seed: int) -> np.ndarray:
    """A document's seeded hash as cut units: a lower uniform number ranks first (kept first)."""
    return HASH_UNITS - 1 - np.floor(pool.uniform(doc_hash, seed) * HASH_UNITS).astype(np.int64)


def random_selections(files: PoolFiles, tokens: Sequence[int], seeds: Sequence[int]) -> list[Callable]:
    """Per (token target, seed): a uniformly random selection of the pool of that many tokens (the
    documents with the smallest seeded hash until their tokens reach it, an exact cut on the hash
    in one pass), as a mask ``(key, row0, c, t) -> bool array`` for ``write_stores``: a random arm
    of the same size as the selection it is compared with."""
    P = len(tokens)

    def scan_():
        for key, row0, t in _batches(files.keys, files.index, ["n_tokens", "doc_hash"], batch_rows(P)):
            h = t.column("doc_hash").to_numpy()
            cc = np.stack([_hash_units(h, s) for s in seeds], axis=1) if len(h) else np.zeros((0, P), np.int64)
            yield pool.ShardScores(key, cc, t.column("n_tokens").to_numpy(), row0)

    cuts_ = pool.find_cuts(scan_, [float(x) for x in tokens], "tokens", hi_units=HASH_UNITS)
    return [(lambda cut, seed: lambda key, row0, c, t: cut.keep(
        key, _hash_units(t.column("doc_hash").to_numpy(), seed), row0))(cut, s) for cut, s in zip(cuts_, seeds)]


def sample_cuts(files: PoolFiles, norm: pool.Normalisation, W: np.ndarray, cuts_: Sequence[pool.Cut],
                samples: Sequence[Sample], masks: Sequence[Callable] | None = None) -> list[pool.Cut]:
    """Per vector, the cut in hash space that keeps the selected documents with the smallest
    seeded hash until ``budget`` tokens (all of them when the selection is smaller)."""
    P = len(cuts_)
    targets = [float(s.budget) if s.budget else float("inf") for s in samples]

    def scan():
        for key, row0, c, t in combined(files, norm, W, extra=["doc_hash"]):
            h = t.column("doc_hash").to_numpy()
            sel = _selected(key, row0, c, t, cuts_, masks)
            cc = np.empty((len(h), P), dtype=np.int64)
            for p in range(P):
                cc[:, p] = np.where(sel[p], _hash_units(h, samples[p].seed), -1)
            yield pool.ShardScores(key, cc, t.column("n_tokens").to_numpy(), row0)

    return pool.find_cuts(scan, targets, "tokens", hi_units=HASH_UNITS)


def write_stores(files: PoolFiles, norm: pool.Normalisation, W: np.ndarray, cuts_: Sequence[pool.Cut],
                 samples: Sequence[Sample], writers: Sequence, masks: Sequence[Callable] | None = None,
                 log: Callable[[str], None] | None = None) -> list[dict]:
    """Every shard's selected and hash-sampled documents appended to each vector's token store
    writer, in pool order (after the passes that fix the sample). Only the row groups of
    ``doc_tokens`` that hold a written document are read. ``masks[p]`` (optional) replaces vector
    p's cut (e.g. a random selection). Returns per vector the documents and tokens written, and
    under ``selected`` those of its whole selection (before the sample)."""
    if len(files.tokens) != len(files.keys):
        raise ValueError("write_stores needs the token file of every shard")
    P = len(writers)
    scuts = sample_cuts(files, norm, W, cuts_, samples, masks)
    counts = [{"docs": 0, "tokens": 0, "selected": {"docs": 0, "tokens": 0}} for _ in range(P)]
    tok_uri = dict(zip(files.keys, files.tokens))
    step, started = max(1, len(files.keys) // 10), 0
    # batches of a shard step's size: the pass also holds the token ids of a batch's kept documents
    for key, row0, c, t in combined(files, norm, W, extra=["doc_hash"], rows=storage.SHARD_BATCH_ROWS):
        started += row0 == 0  # a shard's first batch
        if log and row0 == 0 and started % step == 0:
            log(f"training data: shard {started}/{len(files.keys)}")
        h = t.column("doc_hash").to_numpy()
        n = t.column("n_tokens").to_numpy()
        sel = _selected(key, row0, c, t, cuts_, masks)
        take = []
        for p in range(P):
            counts[p]["selected"]["docs"] += int(sel[p].sum())
            counts[p]["selected"]["tokens"] += int(n[sel[p]].sum())
            hu = _hash_units(h, samples[p].seed)
            take.append(np.flatnonzero(sel[p] & scuts[p].keep(key, np.where(sel[p], hu, -1), row0)))
        rows = np.unique(np.concatenate(take)) if take else np.zeros(0, dtype=np.int64)
        if len(rows):
            ids = _token_rows(tok_uri[key], rows + row0)
            for p in range(P):
                for r in take[p]:
                    writers[p].add(ids[int(r) + row0])
                counts[p]["docs"] += len(take[p])
                counts[p]["tokens"] += int(n[take[p]].sum())
    return counts


def _token_rows(uri: str, rows: np.ndarray) -> dict[int, np.ndarray]:
    """Token ids of some rows of one doc_tokens file, reading only the row groups holding them."""
    fs, path = fs_and_path(uri)
    out: dict[int, np.ndarray] = {}
    with fs.open(path, "rb") as f:
        pf = pq.ParquetFile(f)
        starts = np.cumsum([0] + [pf.metadata.row_group(g).num_rows for g in range(pf.num_row_groups)])
        groups = np.unique(np.searchsorted(starts, rows, side="right") - 1)
        for g in groups:
            col = pf.read_row_group(int(g), columns=["ids"]).column("ids").combine_chunks()
            lo = starts[g]
            sel = rows[(rows >= lo) & (rows < starts[g + 1])]
            values = col.values.to_numpy()
            offs = col.offsets.to_numpy()
            for r in sel:
                j = int(r - lo)
                out[int(r)] = values[offs[j]:offs[j + 1]]
    return out


def hash_sample(files: PoolFiles, columns: Sequence[str], k: int, seed: int, total_docs: int) -> pa.Table:
    """About ``k`` pool documents chosen by a seeded hash (the same documents whatever the shard
    layout), with ``columns``: a fixed-rate filter per shard, so memory is O(k)."""
    rate = min(1.0, k / max(total_docs, 1))
    parts = []
    for _, _, t in _batches(files.keys, files.index, list(dict.fromkeys([*columns, "doc_hash"])), batch_rows()):
        u = pool.uniform(t.column("doc_hash").to_numpy(), seed)
        parts.append(t.filter(pa.array(u < rate)).select(list(columns)))
    return pa.concat_tables(parts) if parts else pa.table({c: [] for c in columns})


def find_doc(files: PoolFiles, doc_id: str) -> list[tuple[str, int]]:
    """(shard, row) of every document with this id (a scan of the id column only)."""
    import pyarrow.compute as pc

    hits = []
    for key, row0, t in _batches(files.keys, files.index, ["doc_id"], batch_rows()):
        for r in np.flatnonzero(np.asarray(pc.equal(t.column("doc_id"), doc_id))):
            hits.append((key, row0 + int(r)))
    return hits
