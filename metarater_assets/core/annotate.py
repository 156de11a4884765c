"""PRRC annotation with any OpenAI-compatible chat endpoint.

* ``RUBRICS``: Meta-rater's four PRRC dimensions, each scored 0..5 (a paraphrase of the paper's
  prompts).
* ``ChatAnnotator``: POSTs ``{base_url}/chat/completions`` (temperature 0), retries with
  exponential backoff on 429 / 5xx / connection errors (urllib3 ``Retry`` through a requests
  adapter), parses the score robustly and caches each (model, dimension, rubric, text) answer in a
  JSONL file on any fsspec URI (rewritten atomically every 50 answers and at the end), so an
  interrupted job never pays twice. The API key is read from an environment variable that must
  be set (checked before the first request), sent only in the ``Authorization`` header, and never
  appears in logs, errors, reprs or the cache. A refused key (HTTP 401 / 403) stops the job; a
  reply that stays unusable after the retries (5xx, a connection failure, no score in the
  answer) leaves that label missing with its cause, which the caller quarantines.
* ``sample_pool``: the stable sample of pool documents to annotate, drawn by a hash of (seed,
  shard, doc id): doc ids are unique within a shard only, so each document is qualified by its
  shard (``sample_id``) in the hash and in the annotation row's id.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping, Sequence

ANNOTATE_VERSION = "1"  # part of every cache key: a bump re-asks (and re-pays) every answer
#: how the annotation sample is drawn (2: documents qualified by their shard)
SAMPLE_VERSION = "2"
DIMENSIONS = ("professionalism", "readability", "reasoning", "cleanliness")

RUBRICS: dict[str, str] = {
    "professionalism": (
        "Rate how much expertise is needed to understand the text, 0-5. 0: no meaningful content; "
        "1: trivial, anyone understands it; 2: popular level; 3: moderate expertise (detailed "
        "articles, introductions to a specialised topic); 4: significant expertise (academic "
        "papers, technical references); 5: deep specialist knowledge (advanced research, patents)."),
    "readability": (
        "Rate the clarity and coherence of the language, 0-5. 0: unreadable (garbled, markup "
        "soup); 1: barely readable, many errors; 2: mostly understandable with hard passages; "
        "3: clear with minor slips; 4: very clear, few or no errors; 5: outstanding clarity."),
    "reasoning": (
        "Rate the depth of reasoning the reader must follow, 0-5. 0: none (lists, bare "
        "definitions, boilerplate); 1: a single causal link; 2: basic reasoning with examples; "
        "3: several steps or interrelated arguments; 4: multi-layered analysis of alternatives; "
        "5: complex multidimensional reasoning (models, algorithm design, strategy)."),
    "cleanliness": (
        "Rate whether the text reads as clean, human-edited text, 0-5 (formatting, no ads or "
        "links interrupting it, complete sentences). 0: pure noise; 1: serious problems that ruin "
        "fluency; 2: obvious problems; 3: some problems; 4: minor problems; 5: perfectly clean."),
}
_INSTRUCTION = ("Judge the text on its own merits; `$TRUNCATED$` marks a cut, do not penalise it. "
                "Answer with the score only, as: Score: N")


class AnnotationError(RuntimeError):
    """The endpoint failed after retries, or answered without a usable score."""


class AnnotationAuthError(AnnotationError):
    """No key, or the endpoint refused it: every request would fail the same way."""


_PATTERNS = (
    re.compile(r'"score"\s*:\s*"?([0-5])\b'),
    re.compile(r"\bscore\s*(?:is|:|=)?\s*\**\s*([0-5])\b", re.IGNORECASE),
    re.compile(r"^\s*\**([0-5])\**\s*(?:/\s*5)?\s*$", re.MULTILINE),
    re.compile(r"\b([0-5])\s*/\s*5\b"),
)


def parse_score(answer: str) -> int | None:
    """The 0..5 score in a model's answer ("Score: 4", '{"score": 4}', "**4**", "4/5"), or None."""
    for pat in _PATTERNS:
        found = pat.findall(answer or "")
        if found:
            return int(found[-1])
    return None


def cache_key(model: str, dimension: str, text: str) -> str:
    h = hashlib.sha256()
    for part in (ANNOTATE_VERSION, model, dimension, RUBRICS[dimension], text):
        h.update(part.encode("utf-8", "surrogatepass") + b"\0")
    return h.hexdigest()


@dataclass
class ChatAnnotator:
    base_url: str
    model: str
    api_key_env: str = "OPENAI_API_KEY"
    cache_path: str | None = None  # any fsspec URI
    timeout: float = 60.0
    max_retries: int = 5
    backoff: float = 0.5
    flush_every: int = 50
    _cache: dict = field(default_factory=dict, repr=False)

    def __post_init__(self):
        import requests
        from requests.adapters import HTTPAdapter
        from urllib3.util.retry import Retry

        if not os.environ.get(self.api_key_env):
            raise AnnotationAuthError(f"the environment variable {self.api_key_env} (prrc.annotate.api_key_env) "
                                      "is not set: export the endpoint's API key there")
        self._session = requests.Session()
        retry = Retry(total=self.max_retries, backoff_factor=self.backoff, allowed_methods=["POST"],
                      status_forcelist=(429, 500, 502, 503, 504), raise_on_status=False,
                      respect_retry_after_header=True)
        self._session.mount("http://", HTTPAdapter(max_retries=retry))
        self._session.mount("https://", HTTPAdapter(max_retries=retry))
        self._pending = 0
        if self.cache_path:
            from .storage import exists, fs_and_path

            if exists(self.cache_path):
                fs, p = fs_and_path(self.cache_path)
                with fs.open(p, "r", encoding="utf-8") as f:
                    for line in f:
                        if line.strip():
                            rec = json.loads(line)
                            self._cache[rec["key"]] = rec["score"]

    def __repr__(self) -> str:  # never the key
        return f"ChatAnnotator(base_url={self.base_url!r}, model={self.model!r}, api_key_env={self.api_key_env!r})"

    def _headers(self) -> dict:
        return {"Authorization": f"Bearer {os.environ[self.api_key_env]}"}

    def flush(self) -> None:
        """Write the whole cache (atomically: temporary file, then move)."""
        if not self.cache_path or not self._pending:
            return
        from .storage import atomic_open

        with atomic_open(self.cache_path, "w") as f:
            for k, v in self._cache.items():
                f.write(json.dumps({"key": k, "score": v}) + "\n")
        self._pending = 0

    def rate(self, text: str, dimension: str) -> int:
        key = cache_key(self.model, dimension, text)
        if key in self._cache:
            return self._cache[key]
        body = {"model": self.model, "temperature": 0,
                "messages": [{"role": "system", "content": f"{RUBRICS[dimension]} {_INSTRUCTION}"},
                             {"role": "user", "content": text}]}
        import requests

        url = f"{self.base_url.rstrip('/')}/chat/completions"
        try:
            resp = self._session.post(url, json=body, headers=self._headers(), timeout=self.timeout)
        except requests.RequestException as e:
            raise AnnotationError(f"{url}: {type(e).__name__} after {self.max_retries} retries") from None
        if resp.status_code in (401, 403):
            raise AnnotationAuthError(f"{url}: HTTP {resp.status_code}: the endpoint refused the key in "
                                      f"${self.api_key_env}")
        if resp.status_code != 200:
            raise AnnotationError(f"{url}: HTTP {resp.status_code} after {self.max_retries} retries")
        try:
            answer = resp.json()["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            raise AnnotationError(f"{url}: not an OpenAI-style chat completion") from None
        score = parse_score(answer)
        if score is None:
            raise AnnotationError(f"no 0..5 score in the answer: {answer[:80]!r}")
        self._cache[key] = score
        self._pending += 1
        if self._pending >= self.flush_every:
            self.flush()
        return score

    def annotate(self, texts: Sequence[str], dimensions: Sequence[str] = DIMENSIONS,
                 progress: Callable[[int, int], None] | None = None) -> tuple[list[dict], list[dict]]:
        """(labels, errors): one dict of scores per text (None where the answer could not be used)
        and one dict ``{dimension: cause}`` per text. A batch never dies on one reply; a refused
        key (``AnnotationAuthError``) stops it. The cache is flushed on the way out."""
        labels, errors = [], []
        try:
            for i, t in enumerate(texts):
                row: dict[str, int | None] = {}
                err: dict[str, str] = {}
                for d in dimensions:
                    try:
                        row[d] = self.rate(t, d)
                    except AnnotationAuthError:
                        raise
                    except AnnotationError as e:
                        row[d] = None
                        err[d] = str(e)
                labels.append(row)
                errors.append(err)
                if progress:
                    progress(i + 1, len(texts))
        finally:
            self.flush()
        return labels, errors


def validate_labels(rows: Sequence[Mapping], dimensions: Sequence[str] = DIMENSIONS) -> list[str]:
    """Problems in an annotation table: missing dimensions, labels outside 0..5 (empty = fine)."""
    problems = []
    for i, r in enumerate(rows):
        for d in dimensions:
            v = r.get(d)
            if v is None:
                problems.append(f"row {i} ({r.get('id', '?')}): missing {d}")
            elif not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= 5:
                problems.append(f"row {i} ({r.get('id', '?')}): {d}={v!r} outside 0..5")
    return problems


def sample_id(shard: str, doc_id: str) -> str:
    """A pool document's id in annotation rows, ``<shard>/<doc id>``: doc ids are unique within a
    shard only (a pool whose files number their rows 0..N repeats every id in every shard), and
    shard keys never contain ``/`` (``corpus.partition_key``), so the first ``/`` splits it back."""
    return f"{shard}/{doc_id}"


def sample_pool(shards: Iterable[str], read_ids: Callable[[str], Sequence[str]],
                read_texts: Callable[[str, list[int]], Sequence[str]], n: int, seed: int,
                max_chars: int) -> list[dict]:
    """The ``n`` pool documents with the smallest hash of (seed, shard, doc id), best first: a
    stable sample that keeps its members when shards are added, drawn evenly from every shard.
    Two passes: ``read_ids(shard)`` (a shard's doc ids, in row order; a heap of ``n``), then
    ``read_texts(shard, rows)`` (the texts of those rows, in that order) for the winners only.

    A row: ``{"id": sample_id(shard, doc_id), "shard", "doc_id", "source": "pool", "text"}``, the
    text cut at ``max_chars`` (+ `` $TRUNCATED$``). A text that occurs in more than one shard is
    annotated once (its first row by hash), so the sample holds no two rows with the same text
    and can be a little smaller than ``n`` where the pool holds copies."""
    import heapq

    import xxhash

    best: list[tuple[int, str, str, int]] = []  # (-hash, shard, doc id, row): a max-heap of the n smallest
    for shard in shards:
        for row, doc_id in enumerate(read_ids(shard)):
            h = -xxhash.xxh3_64_intdigest(f"{seed}:{shard}:{doc_id}".encode("utf-8", "surrogatepass"))
            item = (h, shard, str(doc_id), row)
            if len(best) < n:
                heapq.heappush(best, item)
            elif item > best[0]:
                heapq.heapreplace(best, item)
    rows_of: dict[str, list[int]] = {}
    for _, shard, _, row in best:
        rows_of.setdefault(shard, []).append(row)
    texts: dict[tuple[str, int], str] = {}
    for shard, rows in rows_of.items():
        rows = sorted(rows)
        got = list(read_texts(shard, rows))
        if len(got) != len(rows):
            raise ValueError(f"read_texts({shard!r}) gave {len(got)} texts for {len(rows)} rows")
        texts.update({(shard, r): t for r, t in zip(rows, got)})
    out, seen = [], set()
    for _, shard, doc_id, row in sorted(best, reverse=True):
        text = texts[(shard, row)]
        digest = hashlib.sha1(text.encode("utf-8", "surrogatepass")).digest()
        if digest in seen:
            continue
        seen.add(digest)
        if len(text) > max_chars:
            text = text[:max_chars] + " $TRUNCATED$"
        out.append({"id": sample_id(shard, doc_id), "shard": shard, "doc_id": doc_id, "source": "pool",
                    "text": text})
    return out
