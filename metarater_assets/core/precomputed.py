"""Scores already in the shards (the released SlimPajama-Meta-rater layout, or any pool scored by
its own raters): a mapping from score names to a column and a reduction.

Reductions of a column's value ``v``:

* ``value``: ``v`` itself (a number);
* ``element`` (``index`` i): ``v[i]`` of a list;
* ``mean``: the mean of a list;
* ``expected_grade``: ``sum_k softmax(v)_k * k`` of a list of logits (grades 0..len-1);
* ``softmax_prob`` (``index`` i): ``softmax(v)_i`` of a list of logits;
* ``argmax``: the index of the largest element of a list.

``length`` (optional) is the list length every row must have. A row whose value has the wrong
length, is not a number (or not a list where one is needed) or is infinite is not used: ingest
quarantines it with reason ``bad_score_value`` and the column and cause in the preview. ``null``
(and NaN) stays null. A column the shard does not have fails the shard, naming the column.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass
from typing import Any, Mapping, Sequence

PRECOMPUTED_VERSION = "1"
REDUCTIONS = ("value", "element", "mean", "expected_grade", "softmax_prob", "argmax")
_NEEDS_INDEX = ("element", "softmax_prob")


@dataclass(frozen=True)
class ScoreSource:
    score: str
    column: str
    reduce: str = "value"
    index: int | None = None
    length: int | None = None

    def __post_init__(self):
        if self.reduce not in REDUCTIONS:
            raise ValueError(f"score {self.score!r}: unknown reduce {self.reduce!r}; known: {list(REDUCTIONS)}")
        if self.reduce in _NEEDS_INDEX and self.index is None:
            raise ValueError(f"score {self.score!r}: reduce {self.reduce!r} needs an index")
        if self.index is not None and self.index < 0:
            raise ValueError(f"score {self.score!r}: index must be >= 0")
        if self.length is not None and self.index is not None and self.index >= self.length:
            raise ValueError(f"score {self.score!r}: index {self.index} outside a list of length {self.length}")


class BadValue(ValueError):
    """A row's value that the mapping cannot turn into a score (quarantined, not guessed)."""


def parse(raw: Mapping[str, Any]) -> tuple[ScoreSource, ...]:
    """``{score: {column, reduce, index, length}}`` (a bare string is ``{column: it}``)."""
    out = []
    for score, entry in (raw or {}).items():
        if isinstance(entry, str):
            entry = {"column": entry}
        if not isinstance(entry, Mapping) or not entry.get("column"):
            raise ValueError(f"score {score!r}: needs a column")
        unknown = sorted(set(entry) - {"column", "reduce", "index", "length"})
        if unknown:
            raise ValueError(f"score {score!r}: unknown key(s) {unknown}")
        out.append(ScoreSource(score=str(score), column=str(entry["column"]), reduce=str(entry.get("reduce", "value")),
                               index=None if entry.get("index") is None else int(entry["index"]),
                               length=None if entry.get("length") is None else int(entry["length"])))
    return tuple(out)


def digest(sources: Sequence[ScoreSource]) -> str:
    return hashlib.sha1(json.dumps([asdict(s) for s in sources], sort_keys=True).encode()).hexdigest()[:10]


def _number(x: Any, what: str) -> float | None:
    if x is None:
        return None
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        raise BadValue(f"{what}: not a number ({type(x).__name__})")
    x = float(x)
    if math.isnan(x):
        return None
    if math.isinf(x):
        raise BadValue(f"{what}: not finite")
    return x


def _numbers(v: Any, src: ScoreSource) -> list[float] | None:
    if v is None:
        return None
    if isinstance(v, (str, bytes)) or not hasattr(v, "__len__"):
        raise BadValue(f"column {src.column!r}: expected a list, got {type(v).__name__}")
    xs = list(v)
    if src.length is not None and len(xs) != src.length:
        raise BadValue(f"column {src.column!r}: list of {len(xs)}, expected {src.length}")
    if not xs:
        raise BadValue(f"column {src.column!r}: empty list")
    out = []
    for i, x in enumerate(xs):
        n = _number(x, f"column {src.column!r}[{i}]")
        if n is None:
            return None  # a null element: the score is null
        out.append(n)
    return out


def _softmax(xs: list[float]) -> list[float]:
    m = max(xs)
    e = [math.exp(x - m) for x in xs]
    s = sum(e)
    return [x / s for x in e]


def reduce_value(src: ScoreSource, v: Any) -> float | None:
    """The score of one row's value (None: null), or ``BadValue``."""
    if src.reduce == "value":
        return _number(v, f"column {src.column!r}")
    xs = _numbers(v, src)
    if xs is None:
        return None
    if src.index is not None and src.index >= len(xs):
        raise BadValue(f"column {src.column!r}: list of {len(xs)} has no element {src.index}")
    if src.reduce == "element":
        return xs[src.index]
    if src.reduce == "mean":
        return sum(xs) / len(xs)
    if src.reduce == "argmax":
        return float(max(range(len(xs)), key=lambda i: xs[i]))
    p = _softmax(xs)
    if src.reduce == "softmax_prob":
        return p[src.index]
    return sum(k * pk for k, pk in enumerate(p))  # expected_grade


class Extractor:
    """Every configured score of one row, or the reason the row cannot be used."""

    def __init__(self, sources: Sequence[ScoreSource]):
        self.sources = tuple(sources)
        self.names = [s.score for s in self.sources]
        self.columns = sorted({s.column for s in self.sources})

    def extract(self, row: Mapping[str, Any]) -> dict[str, float | None]:
        missing = [c for c in self.columns if c not in row]
        if missing:
            raise KeyError(missing[0])
        return {s.score: reduce_value(s, row[s.column]) for s in self.sources}
