"""Reading raw shards through fsspec: formats, streaming, doc ids and quarantine reasons.

A shard is one file: ``.jsonl``, ``.jsonl.gz``, ``.jsonl.zst`` (JSON object per line with a
``text`` field and optional ``id``, ``meta``/``source``) or ``.parquet`` (a ``text`` column and
optional ``id``, ``source``, ``meta`` columns). Rows are decoded one line / one record batch at a
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
class ShardFile:
    key: str
    uri: str
    name: str
    fingerprint: str  # size + mtime/etag: changes when the file changes


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


def partition_key(name: str) -> str:
    """Stable, safe partition key from a file name.

    Keys keep ``[A-Za-z0-9._-]``; anything else becomes ``_``. When that changed the name, a
    short hash of the original name is appended, so two names never map to the same key.
    """
    safe = _UNSAFE.sub("_", name).strip("._-") or "shard"
    if safe != name:
        safe = f"{safe}-{hashlib.sha1(name.encode('utf-8')).hexdigest()[:8]}"
    return safe[:200]


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


def list_shards(uri: str) -> list[ShardFile]:
    """Data files directly under ``uri`` (sorted by name); dot-files and partial files ignored."""
    fs, root = fs_and_path(uri)
    if not fs.exists(root):
        raise ShardError(f"raw shard folder {uri!r} does not exist")
    out: list[ShardFile] = []
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    for info in fs.ls(root, detail=True):
        if info.get("type") != "file":
            continue
        name = info["name"].rstrip("/").rsplit("/", 1)[-1]
        if not is_shard_name(name):
            continue
        full = info["name"]
        file_uri = full if protocol in ("file", "local") else f"{protocol}://{full.lstrip('/')}" if protocol != "memory" else f"memory://{full}"
        out.append(ShardFile(partition_key(name), file_uri, name, _fingerprint(info)))
    out.sort(key=lambda s: s.name)
    keys = Counter(s.key for s in out)
    dup = [k for k, c in keys.items() if c > 1]
    if dup:
        raise ShardError(f"file names map to the same partition key: {dup}")
    return out


def find_shard(uri: str, key: str) -> ShardFile:
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


def _source_meta(obj: dict) -> tuple[str, str]:
    meta = obj.get("meta")
    source = obj.get("source")
    if source is None and isinstance(meta, dict):
        source = meta.get("source")
    extra = {k: v for k, v in obj.items() if k not in ("text", "id", "meta", "source")}
    if isinstance(meta, dict):
        extra = {**meta, **extra}
    elif meta is not None:
        extra["meta"] = meta
    return (str(source) if source is not None else "unknown"), json.dumps(
        extra, ensure_ascii=False, sort_keys=True, default=str
    )


def _given_id(value) -> str | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (str, int)):
        s = str(value)
        return s if s.strip() else None
    return None


class _Builder:
    def __init__(self) -> None:
        self.given: list[str | None] = []
        self.text: list[str] = []
        self.source: list[str] = []
        self.meta: list[str] = []
        self.raw_row: list[int] = []
        self.q_row: list[int] = []
        self.q_reason: list[str] = []
        self.q_preview: list[str] = []

    def ok(self, row: int, given: str | None, text: str, source: str, meta: str) -> None:
        self.given.append(given)
        self.text.append(text)
        self.source.append(source)
        self.meta.append(meta)
        self.raw_row.append(row)

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
        return IngestResult(docs, quarantine, rows_in)


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
        self.quarantined = 0

    def ok(self, row, given, text, source, meta) -> None:
        self.given.append(given)
        self.hashes.append(content_hash(text))
        self.raw_row.append(row)

    def bad(self, row, reason, preview) -> None:
        self.quarantined += 1


class _WriterSink:
    """Second streaming pass: rows go to Parquet writers in batches, never all in memory."""

    def __init__(self, ids: list[str], docs_path: str, quarantine_path: str, batch_rows: int):
        self.ids = ids
        self.k = 0
        self.batch_rows = batch_rows
        self.docs = pq.ParquetWriter(docs_path, RAW_SCHEMA, compression="zstd")
        self.quar = pq.ParquetWriter(quarantine_path, QUARANTINE_SCHEMA, compression="zstd")
        self.d: list[list] = [[], [], [], [], []]
        self.q: list[list] = [[], [], []]
        self.reasons: Counter = Counter()

    def ok(self, row, given, text, source, meta) -> None:
        for col, v in zip(self.d, (self.ids[self.k], text, source, meta, row)):
            col.append(v)
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

    def _flush_quarantine(self) -> None:
        self.quar.write_table(pa.table(self.q, schema=QUARANTINE_SCHEMA))
        self.q = [[], [], []]

    def close(self) -> None:
        self._flush_docs()
        self._flush_quarantine()
        self.docs.close()
        self.quar.close()


def _iter_lines(f) -> Iterator[bytes]:
    first = True
    for line in f:
        if first:
            first = False
            if line.startswith(_BOM):
                line = line[len(_BOM):]
        yield line


def _read_jsonl(f, b) -> int:
    n = 0
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
        if "text" not in obj:
            b.bad(row, "missing_text", _preview(s))
            continue
        reason = _check_text(obj["text"])
        if reason is None and "\ud800" <= max(obj["text"]) and _has_surrogate(obj["text"]):
            reason = "invalid_utf8"
        if reason:
            b.bad(row, reason, _preview(s))
            continue
        source, meta = _source_meta(obj)
        b.ok(row, _given_id(obj.get("id")), obj["text"], source, meta)
    return n


def _has_surrogate(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _read_parquet(f, b, name: str) -> int:
    pf = pq.ParquetFile(f)
    cols = pf.schema_arrow.names
    if "text" not in cols:
        raise ShardError(f"{name}: Parquet shard has no 'text' column (columns: {cols})")
    want = [c for c in ("id", "text", "source", "meta") if c in cols]
    row = 0
    for batch in pf.iter_batches(batch_size=4096, columns=want):
        data = batch.to_pydict()
        for i in range(batch.num_rows):
            text = data["text"][i]
            reason = _check_text(text)
            if reason:
                b.bad(row, reason, "" if text is None else _preview(str(text)))
            else:
                obj = {k: data[k][i] for k in want if k != "text"}
                source, meta = _source_meta(obj)
                b.ok(row, _given_id(obj.get("id")), text, source, meta)
            row += 1
    return row


def _scan(uri: str, name: str, sink) -> int:
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
                return _read_parquet(f, sink, name)
        with fs.open(path, "rb", compression=compression) as raw:
            f = io.BufferedReader(raw, buffer_size=1 << 20) if not isinstance(raw, io.BufferedReader) else raw
            return _read_jsonl(f, sink)
    except ShardError:
        raise
    except (EOFError, OSError, ValueError, pa.ArrowException) as e:
        what = f"{compression} stream" if compression else ("Parquet file" if kind == "parquet" else "file")
        raise ShardError(f"{name}: truncated or corrupt {what}: {type(e).__name__}: {e}") from e
    except Exception as e:  # zstandard.ZstdError and friends
        raise ShardError(f"{name}: cannot read: {type(e).__name__}: {e}") from e


def read_shard(uri: str, name: str | None = None) -> IngestResult:
    """Read one shard into in-memory docs + quarantine tables (small files, tests, the CLI)."""
    name = name or uri.rstrip("/").rsplit("/", 1)[-1]
    b = _Builder()
    rows = _scan(uri, name, b)
    return b.finish(rows)


@dataclass(frozen=True)
class IngestCounts:
    rows_in: int
    rows_ok: int
    rows_quarantined: int
    reasons: dict[str, int]


def ingest_shard(uri: str, name: str, docs_path: str, quarantine_path: str,
                 batch_rows: int = 10_000) -> IngestCounts:
    """Stream one shard into two local Parquet files (docs, quarantine) in batches.

    Two passes over the file: the first keeps only what the doc-id policy needs (own ids and
    16-character content hashes), the second writes rows ``batch_rows`` at a time, so memory
    stays bounded by one batch plus the ids, whatever the shard's size.
    """
    first = _IdSink()
    rows = _scan(uri, name, first)
    ids = assign_ids(first.given, first.hashes, first.raw_row)
    second = _WriterSink(ids, docs_path, quarantine_path, batch_rows)
    try:
        rows2 = _scan(uri, name, second)
    finally:
        second.close()
    if rows2 != rows or second.k != len(ids):
        raise ShardError(f"{name}: the file changed while it was being read ({rows} then {rows2} rows)")
    return IngestCounts(rows, len(ids), first.quarantined, dict(second.reasons))


def read_documents(uri: str) -> pa.Table:
    """A validation/target set or any single file: the usable documents, or a clear error."""
    res = read_shard(uri)
    if res.docs.num_rows == 0:
        raise ShardError(f"{uri}: no usable documents ({res.rows_quarantined} quarantined)")
    return res.docs
