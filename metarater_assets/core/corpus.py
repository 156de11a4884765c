"""Reading raw shards through fsspec: formats, streaming, doc ids and quarantine reasons.

A shard is one file, or (with ``ingest.pack_bytes``) a pack of small files read as one shard.
Files are ``.jsonl``, ``.jsonl.gz``, ``.jsonl.zst`` (JSON object per line with a ``text`` field
and optional ``id``, ``meta``/``source``) or ``.parquet`` (a ``text`` column and optional ``id``,
``source``, ``meta`` columns). Rows are decoded one line / one record batch at a
time. A row that cannot be used becomes a quarantine row ``(raw_row, reason, preview)``; nothing
is dropped silently, so ``rows_in == rows_ok + rows_quarantined`` always holds.

Doc-id policy: a row's own ``id`` (string or integer) is used when it is present and unique in
the shard. Rows without one, and every row whose id occurs more than once in the shard, get a
content id ``h-<xxh3_64(text)>``; if the same text occurs more than once too, ``-r<raw_row>`` is
appended, so ids are always unique within a shard.
"""
from __future__ import annotations

import hashlib
import io
import json
import re
from collections import Counter
from dataclasses import dataclass
from typing import Iterator

import pyarrow as pa
import pyarrow.parquet as pq
import xxhash

from .storage import fs_and_path

#: File endings we ingest, with the compression fsspec should apply.
FORMATS: dict[str, tuple[str, str | None]] = {
    ".jsonl": ("jsonl", None),
    ".ndjson": ("jsonl", None),
    ".jsonl.gz": ("jsonl", "gzip"),
    ".jsonl.zst": ("jsonl", "zstd"),
    ".jsonl.zstd": ("jsonl", "zstd"),
    ".parquet": ("parquet", None),
}
#: Names that are never shards: partial uploads, editor backups, temporary files.
IGNORED_SUFFIXES = (".part", ".tmp", "~", ".crdownload", ".incomplete", ".swp")

QUARANTINE_REASONS = (
    "invalid_utf8",
    "invalid_json",
    "not_an_object",
    "missing_text",
    "null_text",
    "non_string_text",
    "empty_text",
    "blank_line",
    "bad_score_value",
)

RAW_SCHEMA = pa.schema(
    [
        ("doc_id", pa.string()),
        ("text", pa.string()),
        ("source", pa.string()),
        ("meta", pa.string()),
        ("raw_row", pa.int64()),
    ]
)
QUARANTINE_SCHEMA = pa.schema(
    [("raw_row", pa.int64()), ("reason", pa.string()), ("preview", pa.string())]
)
PREVIEW_CHARS = 200
_BOM = b"\xef\xbb\xbf"


class ShardError(Exception):
    """A shard that cannot be read at all (corrupt, truncated, wrong schema, unsupported)."""


@dataclass(frozen=True)
class Fields:
    """Where a row keeps its text, id and metadata (``ingest.text_field`` / ``id_field`` /
    ``meta_fields``): dotted paths into nested JSON (``meta.url``), or column names (and struct
    fields) of a Parquet file. ``meta`` None keeps today's rule: every other field of a JSONL row,
    and a Parquet file's ``source`` / ``meta`` columns, become the document's meta (a dotted
    ``text`` path's top-level field is left out, so the text is not copied into meta)."""

    text: str = "text"
    id: str = "id"
    meta: tuple[str, ...] | None = None

    @property
    def default(self) -> bool:
        return self == DEFAULT_FIELDS

    def tops(self) -> set[str]:
        """The top-level fields the text and id paths live under."""
        return {self.text.split(".")[0], self.id.split(".")[0]}


DEFAULT_FIELDS = Fields()
_MISSING = object()


def get_path(obj, path: str):
    """``obj[path]`` for a top-level key (a dot in a key's own name included), else the dotted path
    into nested objects (a JSON-encoded string on the way is decoded); ``_MISSING`` if absent."""
    if isinstance(obj, dict) and path in obj:
        return obj[path]
    cur = obj
    for part in path.split("."):
        if isinstance(cur, str) and cur.startswith("{"):
            try:
                cur = json.loads(cur)
            except ValueError:
                return _MISSING
        if not isinstance(cur, dict) or part not in cur:
            return _MISSING
        cur = cur[part]
    return cur


def canonical(obj: dict, fields: Fields, keep: frozenset | None = None) -> dict | None:
    """The row as ingest reads it (``text``, ``id``, ``source``/``meta`` and other fields), under
    the field mapping; None when the row has no text field. ``keep``: the only other top-level
    fields that may become meta (Parquet's ``source``/``meta`` columns), None for all (JSONL)."""
    if fields.default:
        return obj if "text" in obj else None
    text = get_path(obj, fields.text)
    if text is _MISSING:
        return None
    out: dict = {}
    if fields.meta is None:
        tops = fields.tops()
        out.update({k: v for k, v in obj.items() if k not in tops and (keep is None or k in keep)})
    else:
        meta = {}
        for path in fields.meta:
            v = get_path(obj, path)
            if v is _MISSING:
                continue
            meta[path] = v
            if path.rsplit(".", 1)[-1] in SOURCE_KEYS and v is not None and "source" not in out:
                out["source"] = v
        out["meta"] = meta
    out["text"] = text
    i = get_path(obj, fields.id)
    if i is not _MISSING:
        out["id"] = i
    else:
        out.pop("id", None)
    return out


def sample_rows(uri: str, name: str, n: int = 20) -> list[dict]:
    """The first ``n`` rows of a shard that are JSON objects (or Parquet records), as dicts."""
    kind, compression = shard_format(name) or (None, None)
    fs, path = fs_and_path(uri)
    if kind == "parquet":
        with fs.open(path, "rb") as f:
            for batch in pq.ParquetFile(f).iter_batches(batch_size=n):
                return batch.to_pylist()
        return []
    rows = []
    with fs.open(path, "rb", compression=compression) as f:
        for line in _iter_lines(f):
            try:
                obj = json.loads(line)
            except ValueError:
                continue
            if isinstance(obj, dict):
                rows.append(obj)
            if len(rows) >= n:
                break
    return rows


def field_values(rows: list[dict]) -> dict[str, list]:
    """Every field of ``rows`` (and one level into objects, as dotted paths) with its values."""
    out: dict[str, list] = {}
    for r in rows:
        for k, v in r.items():
            out.setdefault(k, []).append(v)
            if isinstance(v, dict):
                for k2, v2 in v.items():
                    out.setdefault(f"{k}.{k2}", []).append(v2)
    return out


def peek_fields(uri: str, name: str, rows: int = 5) -> list[str]:
    """The fields of a shard's first ``rows`` rows: what a field-mapping error shows. A file that
    cannot be read for this hint gives none (the error being reported is the shard's own)."""
    try:
        return list(field_values(sample_rows(uri, name, rows)))
    except (OSError, EOFError, ValueError, pa.ArrowException):
        return []


@dataclass(frozen=True)
class ShardFile:
    key: str
    uri: str
    name: str  # path relative to the raw root
    fingerprint: str  # size + mtime/etag: changes when the file changes
    size: int | None = None  # bytes, when the filesystem says


def shard_format(name: str) -> tuple[str, str | None] | None:
    low = name.lower()
    for ext in sorted(FORMATS, key=len, reverse=True):
        if low.endswith(ext):
            return FORMATS[ext]
    return None


def is_shard_name(name: str) -> bool:
    if not name or name.startswith((".", "_", "~")):
        return False
    if name.lower().endswith(IGNORED_SUFFIXES) or ".tmp-" in name:
        return False
    return shard_format(name) is not None


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_SAFE_PART = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
SEP = "__"  # a folder separator in a partition key: train/chunk1/a.jsonl -> train__chunk1__a.jsonl
MAX_KEY = 200


def partition_key(relpath: str) -> str:
    """Stable, safe, unique partition key from a file's path relative to the raw root.

    Keys keep ``[A-Za-z0-9._-]`` and write folders as ``__`` (``train/chunk1/a.jsonl.zst`` ->
    ``train__chunk1__a.jsonl.zst``), so a key names its file. A path that cannot be written that
    way (other characters, ``__`` inside a name, over 200 characters) has them replaced by ``_``
    and a short hash of the original path appended: such a key no longer ends with a shard
    extension, so it is never mistaken for a readable path.
    """
    parts = relpath.strip("/").split("/")
    plain = SEP.join(parts)
    if all(_SAFE_PART.fullmatch(p) and SEP not in p and not p.endswith("_") for p in parts) and len(plain) <= MAX_KEY:
        return plain
    safe = SEP.join(_UNSAFE.sub("_", p).strip("._-") or "x" for p in parts)
    return f"{safe[:MAX_KEY - 9]}-{hashlib.sha1(relpath.encode('utf-8')).hexdigest()[:8]}"


def relpath_of(key: str) -> str | None:
    """The relative path a plain key names (``None`` for a hashed key: look it up in a listing)."""
    return key.replace(SEP, "/") if shard_format(key) is not None else None


def _fingerprint(info: dict) -> str:
    size = info.get("size")
    stamp = (
        info.get("ETag")
        or info.get("etag")
        or info.get("mtime")
        or info.get("LastModified")
        or info.get("created")
        or info.get("md5Hash")
    )
    if hasattr(stamp, "isoformat"):
        stamp = stamp.isoformat()
    return f"{size}:{stamp}"


def _protocol(fs) -> str:
    return fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]


def _file_uri(fs, full: str) -> str:
    protocol = _protocol(fs)
    if protocol in ("file", "local"):
        return full
    if protocol == "memory":
        return f"memory://{full}"
    return f"{protocol}://{full.lstrip('/')}"


def _shard_file(fs, root: str, info: dict) -> ShardFile | None:
    full = info["name"].rstrip("/")
    rel = full[len(root.rstrip("/")):].lstrip("/")
    *folders, name = rel.split("/")
    if any(f.startswith((".", "_")) for f in folders) or not is_shard_name(name):
        return None
    size = info.get("size")
    return ShardFile(partition_key(rel), _file_uri(fs, full), rel, _fingerprint(info),
                     int(size) if isinstance(size, (int, float)) else None)


def list_shards(uri: str, fresh: bool = True) -> list[ShardFile]:
    """Data files under ``uri``, in sub-folders too (sorted by relative path). Names and folders
    starting with ``.`` or ``_`` and partial uploads are ignored. ``fresh`` drops the filesystem's
    listing cache first (s3fs / gcsfs cache listings), so new files are seen."""
    fs, root = fs_and_path(uri)
    if fresh:
        fs.invalidate_cache()
    if not fs.exists(root):
        raise ShardError(f"raw shard folder {uri!r} does not exist")
    out = []
    for info in fs.find(root, detail=True, withdirs=False).values():
        if info.get("type", "file") != "file":
            continue
        shard = _shard_file(fs, root, info)
        if shard is not None:
            out.append(shard)
    out.sort(key=lambda s: s.name)
    keys = Counter(s.key for s in out)
    dup = [k for k, c in keys.items() if c > 1]
    if dup:
        raise ShardError(f"file names map to the same partition key: {dup}")
    return out


def shard_at(uri: str, relpath: str) -> ShardFile:
    """The file at ``relpath`` under the raw root ``uri`` (one ``info`` call), or a ShardError."""
    fs, root = fs_and_path(uri)
    try:
        info = fs.info(f"{root.rstrip('/')}/{relpath}")
    except FileNotFoundError:
        info = None
    shard = _shard_file(fs, root, info) if info is not None and info.get("type", "file") == "file" else None
    if shard is None:
        raise ShardError(f"{relpath}: no such shard file under {uri!r} (was it removed?)")
    return shard


#: key of a pack's member list (file key, relative path, rows) in its raw_docs Parquet footer
PACK_META = b"metarater.pack"


def find_shard(uri: str, key: str) -> ShardFile:
    """The file behind a partition key: one ``info`` call for a plain key, a listing otherwise."""
    rel = relpath_of(key)
    if rel is not None:
        try:
            shard = shard_at(uri, rel)
        except ShardError:
            shard = None
        if shard is not None and shard.key == key:
            return shard
    for shard in list_shards(uri):
        if shard.key == key:
            return shard
    raise ShardError(f"no shard with partition key {key!r} under {uri!r} (was the file removed?)")


# --------------------------------------------------------------------------------------------
# Row parsing


@dataclass
class IngestResult:
    docs: pa.Table
    quarantine: pa.Table
    rows_in: int
    scores: pa.Table | None = None  # precomputed scores (doc_id + one column per score), aligned with docs

    @property
    def rows_ok(self) -> int:
        return self.docs.num_rows

    @property
    def rows_quarantined(self) -> int:
        return self.quarantine.num_rows


def _preview(raw: bytes | str) -> str:
    if isinstance(raw, bytes):
        raw = raw[: PREVIEW_CHARS * 4].decode("utf-8", errors="replace")
    return raw[:PREVIEW_CHARS]


def _check_text(text) -> str | None:
    """Quarantine reason for a text value, or None if usable."""
    if text is None:
        return "null_text"
    if not isinstance(text, str):
        return "non_string_text"
    if not text.strip():
        return "empty_text"
    return None


#: where a source name can sit in a row's ``meta`` (SlimPajama: ``redpajama_set_name``)
SOURCE_KEYS = ("source", "redpajama_set_name")


def _source_meta(obj: dict, skip: frozenset = frozenset()) -> tuple[str, str]:
    meta = obj.get("meta")
    if isinstance(meta, str) and meta.startswith("{"):
        try:
            meta = json.loads(meta)
        except ValueError:
            pass
    source = obj.get("source")
    if source is None and isinstance(meta, dict):
        source = next((meta[k] for k in SOURCE_KEYS if meta.get(k) is not None), None)
    extra = {k: v for k, v in obj.items() if k not in ("text", "id", "meta", "source") and k not in skip}
    if isinstance(meta, dict):
        extra = {**meta, **extra}
    elif meta is not None:
        extra["meta"] = meta
    return (str(source) if source is not None else "unknown"), json.dumps(
        extra, ensure_ascii=False, sort_keys=True, default=str
    ) if extra else "{}"


def _given_id(value) -> str | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (str, int)):
        s = str(value)
        return s if s.strip() else None
    return None


def score_schema(names) -> pa.Schema:
    return pa.schema([("doc_id", pa.string())] + [(n, pa.float64()) for n in names])


class _Builder:
    def __init__(self, score_names=()) -> None:
        self.given: list[str | None] = []
        self.text: list[str] = []
        self.source: list[str] = []
        self.meta: list[str] = []
        self.raw_row: list[int] = []
        self.scores: list[dict] = []
        self.score_names = list(score_names)
        self.q_row: list[int] = []
        self.q_reason: list[str] = []
        self.q_preview: list[str] = []

    def ok(self, row: int, given: str | None, text: str, source: str, meta: str, scores=None) -> None:
        self.given.append(given)
        self.text.append(text)
        self.source.append(source)
        self.meta.append(meta)
        self.raw_row.append(row)
        self.scores.append(scores or {})

    def bad(self, row: int, reason: str, preview: str) -> None:
        self.q_row.append(row)
        self.q_reason.append(reason)
        self.q_preview.append(preview)

    def finish(self, rows_in: int) -> IngestResult:
        hashes = [content_hash(t) for t in self.text]
        ids = assign_ids(self.given, hashes, self.raw_row)
        docs = pa.table(
            [ids, self.text, self.source, self.meta, self.raw_row], schema=RAW_SCHEMA
        )
        quarantine = pa.table([self.q_row, self.q_reason, self.q_preview], schema=QUARANTINE_SCHEMA)
        scores = None
        if self.score_names:
            scores = pa.table([ids] + [[r.get(n) for r in self.scores] for n in self.score_names],
                              schema=score_schema(self.score_names))
        return IngestResult(docs, quarantine, rows_in, scores)


def content_hash(text: str) -> str:
    return "h-" + xxhash.xxh3_64_hexdigest(text.encode("utf-8", "surrogatepass"))


def assign_ids(given: list[str | None], hashes: list[str], raw_rows: list[int]) -> list[str]:
    """The doc-id policy (module docstring): own id if unique in the shard, else content id,
    else content id + row."""
    counts = Counter(g for g in given if g is not None)
    use_hash = [g is None or counts[g] > 1 for g in given]
    hcounts = Counter(h for h, u in zip(hashes, use_hash) if u)
    return [g if not u else (f"{h}-r{r}" if hcounts[h] > 1 else h)
            for g, h, r, u in zip(given, hashes, raw_rows, use_hash)]


class _IdSink:
    """First streaming pass: only what the id policy needs (own id, content hash, row)."""

    def __init__(self) -> None:
        self.given: list[str | None] = []
        self.hashes: list[str] = []
        self.raw_row: list[int] = []

    def ok(self, row, given, text, source, meta, scores=None) -> None:
        self.given.append(given)
        self.hashes.append(content_hash(text))
        self.raw_row.append(row)

    def bad(self, row, reason, preview) -> None:
        pass


class _WriterSink:
    """Second streaming pass: rows go to Parquet writers in batches, never all in memory."""

    def __init__(self, ids: list[str], docs_path: str, quarantine_path: str, batch_rows: int,
                 scores_path: str | None = None, score_names=(), docs_metadata: dict | None = None,
                 quarantine_metadata: dict | None = None, scores_metadata: dict | None = None):
        self.ids = ids
        self.k = 0
        self.batch_rows = batch_rows
        schema = RAW_SCHEMA.with_metadata(docs_metadata) if docs_metadata else RAW_SCHEMA
        self.docs = pq.ParquetWriter(docs_path, schema, compression="zstd")
        qschema = QUARANTINE_SCHEMA.with_metadata(quarantine_metadata) if quarantine_metadata else QUARANTINE_SCHEMA
        self.quar = pq.ParquetWriter(quarantine_path, qschema, compression="zstd")
        self.score_names = list(score_names)
        self.s_schema = score_schema(self.score_names)
        if scores_metadata:
            self.s_schema = self.s_schema.with_metadata(scores_metadata)
        self.scw = pq.ParquetWriter(scores_path, self.s_schema, compression="zstd") if scores_path else None
        self.d: list[list] = [[], [], [], [], []]
        self.q: list[list] = [[], [], []]
        self.sc: list[list] = [[] for _ in range(len(self.score_names) + 1)]
        self.reasons: Counter = Counter()

    def ok(self, row, given, text, source, meta, scores=None) -> None:
        for col, v in zip(self.d, (self.ids[self.k], text, source, meta, row)):
            col.append(v)
        if self.scw is not None:
            self.sc[0].append(self.ids[self.k])
            for col, n in zip(self.sc[1:], self.score_names):
                col.append(scores.get(n))
        self.k += 1
        if len(self.d[0]) >= self.batch_rows:
            self._flush_docs()

    def bad(self, row, reason, preview) -> None:
        for col, v in zip(self.q, (row, reason, preview)):
            col.append(v)
        self.reasons[reason] += 1
        if len(self.q[0]) >= self.batch_rows:
            self._flush_quarantine()

    def _flush_docs(self) -> None:
        self.docs.write_table(pa.table(self.d, schema=RAW_SCHEMA))
        self.d = [[], [], [], [], []]
        if self.scw is not None:
            self.scw.write_table(pa.table(self.sc, schema=self.s_schema))
            self.sc = [[] for _ in range(len(self.score_names) + 1)]

    def _flush_quarantine(self) -> None:
        self.quar.write_table(pa.table(self.q, schema=QUARANTINE_SCHEMA))
        self.q = [[], [], []]

    def close(self) -> None:
        self._flush_docs()
        self._flush_quarantine()
        self.docs.close()
        self.quar.close()
        if self.scw is not None:
            self.scw.close()


def _iter_lines(f) -> Iterator[bytes]:
    first = True
    for line in f:
        if first:
            first = False
            if line.startswith(_BOM):
                line = line[len(_BOM):]
        yield line


def _scores_of(extractor, obj, row: int, name: str, b, preview: str):
    """(ok, scores) for one row: a bad value is quarantined here; a missing column fails the shard."""
    if extractor is None:
        return True, None
    from .precomputed import BadValue

    try:
        return True, extractor.extract(obj)
    except KeyError as e:
        raise ShardError(f"{name}: column {e.args[0]!r} of the precomputed scores is missing "
                         f"(row {row}; the mapping is precomputed.scores in the config)") from None
    except BadValue as e:
        b.bad(row, "bad_score_value", f"{e}: {preview}"[:PREVIEW_CHARS])
        return False, None


def _read_jsonl(f, b, name: str = "", extractor=None, fields: Fields = DEFAULT_FIELDS) -> int:
    n = 0
    skip = frozenset(extractor.columns) if extractor is not None else frozenset()
    for row, line in enumerate(_iter_lines(f)):
        n = row + 1
        line = line.rstrip(b"\n").rstrip(b"\r")
        if not line.strip():
            b.bad(row, "blank_line", "")
            continue
        try:
            s = line.decode("utf-8")
        except UnicodeDecodeError as e:
            b.bad(row, "invalid_utf8", f"{e.reason} at byte {e.start}: " + _preview(line))
            continue
        try:
            obj = json.loads(s)
        except ValueError as e:
            b.bad(row, "invalid_json", f"{e}: " + _preview(s))
            continue
        if not isinstance(obj, dict):
            b.bad(row, "not_an_object", _preview(s))
            continue
        doc = canonical(obj, fields)
        if doc is None:
            b.bad(row, "missing_text", _preview(s))
            continue
        reason = _check_text(doc["text"])
        if reason is None and not doc["text"].isascii() and _has_surrogate(doc["text"]):
            reason = "invalid_utf8"
        if reason:
            b.bad(row, reason, _preview(s))
            continue
        ok, scores = _scores_of(extractor, obj, row, name, b, _preview(s))
        if not ok:
            continue
        source, meta = _source_meta(doc, skip)
        b.ok(row, _given_id(doc.get("id")), doc["text"], source, meta, scores)
    return n


def _has_surrogate(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _read_parquet(f, b, name: str, extractor=None, fields: Fields = DEFAULT_FIELDS) -> int:
    pf = pq.ParquetFile(f)
    cols = pf.schema_arrow.names
    text_col = fields.text.split(".")[0] if fields.text not in cols else fields.text
    if text_col not in cols:
        raise ShardError(f"{name}: Parquet shard has no {fields.text!r} column (columns: {cols}); "
                         "set ingest.text_field to the column that holds the text")
    if fields.meta is None:
        want = [c for c in dict.fromkeys([text_col, fields.id.split(".")[0], "id", "source", "meta"]) if c in cols]
    else:
        want = [c for c in dict.fromkeys([text_col, fields.id.split(".")[0],
                                          *(m.split(".")[0] if m not in cols else m for m in fields.meta)]) if c in cols]
    keep = frozenset({"source", "meta"}) if fields.meta is None else None
    score_cols = []
    if extractor is not None:
        missing = [c for c in extractor.columns if c not in cols]
        if missing:
            raise ShardError(f"{name}: column {missing[0]!r} of the precomputed scores is missing "
                             f"(columns: {cols}; the mapping is precomputed.scores in the config)")
        score_cols = [c for c in extractor.columns if c not in want]
    row = 0
    for batch in pf.iter_batches(batch_size=4096, columns=want + score_cols):
        data = batch.to_pydict()
        for i in range(batch.num_rows):
            obj = {k: data[k][i] for k in want}
            doc = canonical(obj, fields, keep) if not fields.default else obj
            text = doc.get("text", _MISSING) if doc is not None else _MISSING
            reason = "missing_text" if text is _MISSING else _check_text(text)
            if reason:
                b.bad(row, reason, "" if text is None or text is _MISSING else _preview(str(text)))
            else:
                full = {**obj, **{k: data[k][i] for k in score_cols}}
                ok, scores = _scores_of(extractor, full, row, name, b, _preview(str(text)))
                if ok:
                    source, meta = _source_meta({k: v for k, v in doc.items() if k != "text"})
                    b.ok(row, _given_id(doc.get("id")), text, source, meta, scores)
            row += 1
    return row


def _scan(uri: str, name: str, sink, extractor=None, fields: Fields = DEFAULT_FIELDS) -> int:
    """Feed every row of the file to ``sink.ok`` / ``sink.bad``; returns rows read. Raises
    ``ShardError`` naming the file and the cause when the file as a whole is unreadable."""
    fmt = shard_format(name)
    if fmt is None:
        raise ShardError(f"{name}: unsupported file type (expected one of {sorted(FORMATS)})")
    kind, compression = fmt
    fs, path = fs_and_path(uri)
    try:
        if kind == "parquet":
            with fs.open(path, "rb") as f:
                return _read_parquet(f, sink, name, extractor, fields)
        with fs.open(path, "rb", compression=compression) as raw:
            f = io.BufferedReader(raw, buffer_size=1 << 20) if not isinstance(raw, io.BufferedReader) else raw
            return _read_jsonl(f, sink, name, extractor, fields)
    except ShardError:
        raise
    except (EOFError, OSError, ValueError, pa.ArrowException) as e:
        what = f"{compression} stream" if compression else ("Parquet file" if kind == "parquet" else "file")
        raise ShardError(f"{name}: truncated or corrupt {what}: {type(e).__name__}: {e}") from e
    except Exception as e:  # zstandard.ZstdError and friends: named, never swallowed
        raise ShardError(f"{name}: cannot read: {type(e).__name__}: {e}") from e


def read_shard(uri: str, name: str | None = None, extractor=None, fields: Fields = DEFAULT_FIELDS) -> IngestResult:
    """Read one shard into in-memory docs + quarantine tables (small files, tests, the CLI)."""
    name = name or uri.rstrip("/").rsplit("/", 1)[-1]
    b = _Builder(extractor.names if extractor is not None else ())
    rows = _scan(uri, name, b, extractor, fields)
    return b.finish(rows)


def count_rows(uri: str, name: str) -> int:
    """Rows of a shard counted on their own, without parsing them: lines of a JSONL file (a
    final line without a newline counts), or the row count in a Parquet footer."""
    kind, compression = shard_format(name) or (None, None)
    fs, path = fs_and_path(uri)
    try:
        if kind == "parquet":
            with fs.open(path, "rb") as f:
                return pq.ParquetFile(f).metadata.num_rows
        n, last = 0, b"\n"
        with fs.open(path, "rb", compression=compression) as f:
            while chunk := f.read(1 << 20):
                n += chunk.count(b"\n")
                last = chunk[-1:]
        return n + (last != b"\n")
    except (EOFError, OSError, ValueError, pa.ArrowException) as e:
        raise ShardError(f"{name}: cannot count rows: {type(e).__name__}: {e}") from e


@dataclass(frozen=True)
class IngestCounts:
    rows_in: int
    rows_ok: int
    rows_quarantined: int
    reasons: dict[str, int]
    member_rows: tuple[int, ...] = ()  # rows read from each file of the shard, in order


class _Shifted:
    """A sink seen through a row offset: a pack's rows are numbered across its files."""

    def __init__(self, sink, offset: int):
        self.sink, self.offset = sink, offset

    def ok(self, row, *args) -> None:
        self.sink.ok(row + self.offset, *args)

    def bad(self, row, *args) -> None:
        self.sink.bad(row + self.offset, *args)


def _scan_all(files: list[tuple[str, str]], sink, extractor=None, fields: Fields = DEFAULT_FIELDS) -> list[int]:
    rows, offset = [], 0
    for uri, name in files:
        n = _scan(uri, name, _Shifted(sink, offset) if offset else sink, extractor, fields)
        rows.append(n)
        offset += n
    return rows


def ingest_shard(uri: str, name: str, docs_path: str, quarantine_path: str, batch_rows: int = 10_000,
                 extractor=None, scores_path: str | None = None, fields: Fields = DEFAULT_FIELDS) -> IngestCounts:
    """Stream one shard file into local Parquet files; see :func:`ingest_files`."""
    return ingest_files([(uri, name)], docs_path, quarantine_path, batch_rows, extractor, scores_path, fields=fields)


def ingest_files(files: list[tuple[str, str]], docs_path: str, quarantine_path: str, batch_rows: int = 10_000,
                 extractor=None, scores_path: str | None = None,
                 footers: dict[str, dict] | None = None, fields: Fields = DEFAULT_FIELDS) -> IngestCounts:
    """Stream a shard, one file or a pack of files ``[(uri, name), ...]``, into local Parquet files
    (docs, quarantine, and with an ``extractor`` the precomputed scores) in batches.

    Two passes over the files: the first keeps only what the doc-id policy needs (own ids and
    16-character content hashes), the second writes rows ``batch_rows`` at a time, so memory
    stays bounded by one batch plus the ids, whatever the shard's size. A pack is one shard: ids
    are unique across its files and ``raw_row`` counts on from one file to the next
    (``member_rows`` gives each file's rows). ``footers`` adds key/values to the footer of the
    ``docs`` / ``quarantine`` / ``scores`` file (the identity each output is written with).
    """
    footers = footers or {}
    first = _IdSink()
    rows = _scan_all(files, first, extractor, fields)
    ids = assign_ids(first.given, first.hashes, first.raw_row)
    meta = dict(footers.get("docs") or {})
    if len(files) > 1:  # which rows came from which file, in the docs file's own footer
        members = [{"key": partition_key(name), "name": name, "rows": n} for (_, name), n in zip(files, rows)]
        meta[PACK_META] = json.dumps(members)
    second = _WriterSink(ids, docs_path, quarantine_path, batch_rows, scores_path,
                         extractor.names if extractor is not None else (), meta or None,
                         footers.get("quarantine"), footers.get("scores"))
    try:
        rows2 = _scan_all(files, second, extractor, fields)
    finally:
        second.close()
    for (_, name), a, b in zip(files, rows, rows2):
        if a != b:
            raise ShardError(f"{name}: the file changed while it was being read ({a} then {b} rows)")
    if second.k != len(ids):
        raise ShardError(f"{files[0][1]}: the file changed while it was being read")
    ok = pq.ParquetFile(docs_path).metadata.num_rows
    quarantined = pq.ParquetFile(quarantine_path).metadata.num_rows
    return IngestCounts(sum(rows), ok, quarantined, dict(second.reasons), tuple(rows))


def read_documents(uri: str) -> pa.Table:
    """A validation/target set or any single file: the usable documents, or a clear error."""
    res = read_shard(uri)
    if res.docs.num_rows == 0:
        raise ShardError(f"{uri}: no usable documents ({res.rows_quarantined} quarantined)")
    return res.docs
