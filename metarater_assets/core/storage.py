"""fsspec helpers: every path is a URI (plain path, file://, memory://, s3://, ...)."""
from __future__ import annotations

import json
import os
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq


def fs_and_path(uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
    fs, path = fsspec.core.url_to_fs(str(uri))
    return fs, path


def is_local(uri: str) -> bool:
    fs, _ = fs_and_path(uri)
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return protocol in ("file", "local")


def join(uri: str, *parts: str) -> str:
    out = str(uri).rstrip("/")
    for p in parts:
        out = f"{out}/{str(p).strip('/')}"
    return out


def crash_point(uri: str) -> None:
    """Fault injection for the crash-safety tests: when ``METARATER_CRASH_BEFORE_COMMIT`` is a
    substring of ``uri``, the process SIGKILLs itself here, at the worst moment (the output's
    bytes are written, the commit has not happened). Unset in normal use: a no-op."""
    marker = os.environ.get("METARATER_CRASH_BEFORE_COMMIT")
    if marker and marker in str(uri):
        import signal

        os.kill(os.getpid(), signal.SIGKILL)


@contextmanager
def atomic_open(uri: str, mode: str = "wb") -> Iterator[Any]:
    """Write to a temporary sibling, then move it into place: a crash leaves no file at ``uri``."""
    fs, path = fs_and_path(uri)
    parent = path.rsplit("/", 1)[0] if "/" in path else ""
    if parent:
        fs.makedirs(parent, exist_ok=True)
    tmp = f"{path}.tmp-{uuid.uuid4().hex}"
    try:
        with fs.open(tmp, mode) as f:
            yield f
        crash_point(uri)
        fs.mv(tmp, path)
    except BaseException:
        if fs.exists(tmp):
            fs.rm(tmp)
        raise


@dataclass(frozen=True)
class StagedFile:
    """A finished local file that an IO manager moves into place (large outputs, streamed)."""

    local_path: str
    rows: int


def put_atomic(local_path: str, uri: str) -> None:
    """Copy a local file to ``uri`` atomically (temporary name, then move)."""
    import shutil

    with open(local_path, "rb") as src, atomic_open(uri, "wb") as dst:
        shutil.copyfileobj(src, dst, length=1 << 20)


#: documents per batch in the per-shard steps: a step holds one batch of a shard (its text, scores,
#: token ids), never the whole shard, so its memory does not grow with the shard's size. A multiple
#: of 1,024 (``doc_tokens``' row groups).
SHARD_BATCH_ROWS = 8192


def rebatch(batches: Iterator, rows: int) -> Iterator[pa.Table]:
    """Tables of exactly ``rows`` rows (the last one shorter) from record batches of any size:
    streams from files with different row-group layouts line up batch for batch."""
    if rows < 1:
        raise ValueError("rows must be >= 1")
    pending: list = []
    have = 0
    for b in batches:
        while b.num_rows:
            take = min(rows - have, b.num_rows)
            pending.append(b.slice(0, take))
            have += take
            b = b.slice(take)
            if have == rows:
                yield pa.Table.from_batches(pending)
                pending, have = [], 0
    if have:
        yield pa.Table.from_batches(pending)


def iter_parquet(uri: str, columns: list[str] | None = None, rows: int = SHARD_BATCH_ROWS) -> Iterator[pa.Table]:
    """A Parquet file as tables of ``rows`` rows, read a row group's columns at a time."""
    fs, path = fs_and_path(uri)
    with fs.open(path, "rb") as f:
        pf = pq.ParquetFile(f)
        yield from rebatch(pf.iter_batches(batch_size=min(rows, 65536), columns=columns), rows)


def file_metadata(uri: str) -> dict[bytes, bytes]:
    """A Parquet file's key-value metadata (its footer only): the schema's and what a streaming
    writer added when it closed (``ParquetStream.footer``)."""
    fs, path = fs_and_path(uri)
    with fs.open(path, "rb") as f:
        return dict(pq.ParquetFile(f).metadata.metadata or {})


class ParquetStream:
    """Tables appended to one Parquet file; ``footer`` adds key-value metadata known only at the end
    (a content digest, a summary), written when the file closes."""

    def __init__(self, writer: pq.ParquetWriter, row_group_size: int | None):
        self._w = writer
        self._rgs = row_group_size
        self._footer: dict[bytes, bytes] = {}
        self.rows = 0

    def write(self, table: pa.Table) -> None:
        self._w.write_table(table, row_group_size=self._rgs)
        self.rows += table.num_rows

    def footer(self, metadata: dict[bytes, bytes]) -> None:
        self._footer.update(metadata)


@contextmanager
def parquet_stream(uri: str, schema: pa.Schema, row_group_size: int | None = None) -> Iterator[ParquetStream]:
    """Write a Parquet file batch by batch, atomically: nothing is at ``uri`` until the block ends
    without an error (a temporary sibling, then a move)."""
    with atomic_open(uri, "wb") as f:
        w = pq.ParquetWriter(f, schema, compression="zstd")
        out = ParquetStream(w, row_group_size)
        try:
            yield out
            if out._footer:
                w.add_key_value_metadata(out._footer)
        finally:
            w.close()


def write_parquet(table: pa.Table, uri: str, row_group_size: int | None = None) -> None:
    with atomic_open(uri, "wb") as f:
        pq.write_table(table, f, compression="zstd", row_group_size=row_group_size)


def read_parquet(uri: str, columns: list[str] | None = None) -> pa.Table:
    fs, path = fs_and_path(uri)
    with fs.open(path, "rb") as f:
        return pq.read_table(f, columns=columns)


def write_json(obj: Any, uri: str) -> None:
    with atomic_open(uri, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True, default=str)


class _JsonLines:
    def __init__(self, f):
        self._f = f

    def write(self, table: pa.Table) -> None:
        for batch in table.to_batches(10_000):
            for row in batch.to_pylist():
                self._f.write((json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8"))


@contextmanager
def jsonl_zst_stream(uri: str, level: int = 10) -> Iterator[_JsonLines]:
    """Tables appended as JSON lines (one object per row), zstd-compressed, atomically."""
    import zstandard

    with atomic_open(uri, "wb") as raw:
        with zstandard.ZstdCompressor(level=level).stream_writer(raw, closefd=False) as f:
            yield _JsonLines(f)


def write_jsonl_zst(table: pa.Table, uri: str, level: int = 10) -> None:
    """One JSON object per row, zstd-compressed (atomic)."""
    with jsonl_zst_stream(uri, level) as out:
        out.write(table)


#: table formats a table can be written as, by the extension of its URI
TABLE_FORMATS = (".parquet", ".jsonl", ".jsonl.gz", ".jsonl.zst")


def table_format(uri: str) -> str:
    """The format ``uri``'s extension names (one of ``TABLE_FORMATS``), or a ValueError."""
    low = uri.lower()
    for ext in sorted(TABLE_FORMATS, key=len, reverse=True):
        if low.endswith(ext):
            return ext
    raise ValueError(f"{uri}: unknown output format; the file name must end with one of {', '.join(TABLE_FORMATS)}")


def write_table(table: pa.Table, uri: str) -> None:
    """``table`` in the format its URI's extension names: Parquet, or JSON lines (plain, gzip or
    zstd), atomically."""
    fmt = table_format(uri)
    if fmt == ".parquet":
        write_parquet(table, uri)
    elif fmt == ".jsonl.zst":
        write_jsonl_zst(table, uri)
    else:
        import gzip

        with atomic_open(uri, "wb") as raw:
            f = gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) if fmt == ".jsonl.gz" else raw
            try:
                for batch in table.to_batches(10_000):
                    for row in batch.to_pylist():
                        f.write((json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8"))
            finally:
                if f is not raw:
                    f.close()


def read_json(uri: str) -> Any:
    fs, path = fs_and_path(uri)
    with fs.open(path, "r") as f:
        return json.load(f)


def exists(uri: str) -> bool:
    fs, path = fs_and_path(uri)
    return fs.exists(path)
