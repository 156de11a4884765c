"""Where asset outputs live: every output is a plain file a user can open (Parquet or JSON).

Layout under ``$METARATER_HOME/storage`` (any fsspec URI)::

    <asset_key>/<partition_key>.parquet    per-shard tables (written by the assets, one shard at
                                           a time, see ``ShardFiles``)
    <asset_key>.json                       pool-level results (plans, statistics, selections)
    <asset_key>/<partition_key>.json       per proxy run results

Writes are atomic: the file is written under a temporary name and then moved into place, so a
crash never leaves a file that looks complete.
"""
from __future__ import annotations

import re

import dagster as dg
import pyarrow as pa
from dagster import InputContext, OutputContext
from upath import UPath

from metarater_assets.core import storage as st

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def safe_name(partition: str) -> str:
    """A partition key as one path segment: no separators, never ``.`` or ``..``."""
    name = _UNSAFE.sub("_", partition)
    return f"_{name}" if name in (".", "..") or name.startswith("..") else name


class ShardFiles:
    """The per-shard files of ``storage/<asset>/``: per-shard assets read their inputs and write
    their outputs one shard at a time through this (a batched run over 64 shards never holds 64
    shards), and pool-level steps scan the same files."""

    def __init__(self, storage_uri: str):
        self.base = storage_uri.rstrip("/")

    def uri(self, asset: str, key: str, ext: str = ".parquet") -> str:
        return f"{self.base}/{asset}/{safe_name(key)}{ext}"

    def read(self, asset: str, key: str, columns: list[str] | None = None) -> pa.Table:
        uri = self.uri(asset, key)
        if not st.exists(uri):
            raise FileNotFoundError(f"{asset}[{key}] has not been materialised ({uri} is missing)")
        return st.read_parquet(uri, columns)

    def batches(self, asset: str, key: str, columns: list[str] | None = None, rows: int | None = None):
        """A per-shard table as tables of ``rows`` rows (``SHARD_BATCH_ROWS`` by default), streamed
        (the file is opened at the first batch)."""
        return st.iter_parquet(self.uri(asset, key), columns, rows or st.SHARD_BATCH_ROWS)

    def stream(self, asset: str, key: str, schema: pa.Schema, row_group_size: int | None = None):
        """Write a per-shard table batch by batch (``core.storage.parquet_stream``): atomic."""
        return st.parquet_stream(self.uri(asset, key), schema, row_group_size)

    def schema(self, asset: str, key: str) -> pa.Schema:
        """A per-shard file's schema, with its footer's metadata (the footer alone is read)."""
        import pyarrow.parquet as pq

        uri = self.uri(asset, key)
        fs, path = st.fs_and_path(uri)
        if not fs.exists(path):
            raise FileNotFoundError(f"{asset}[{key}] has not been materialised ({uri} is missing)")
        with fs.open(path, "rb") as f:
            return pq.read_schema(f)

    def write(self, asset: str, key: str, table: pa.Table, metadata: dict[bytes, bytes] | None = None,
              row_group_size: int | None = None) -> str:
        uri = self.uri(asset, key)
        st.write_parquet(table.replace_schema_metadata({**(table.schema.metadata or {}), **(metadata or {})})
                         if metadata else table, uri, row_group_size=row_group_size)
        return uri

    def put(self, asset: str, key: str, local_path: str) -> str:
        uri = self.uri(asset, key)
        st.put_atomic(local_path, uri)
        return uri

    def exists(self, asset: str, key: str) -> bool:
        return st.exists(self.uri(asset, key))


class _JsonUPath(dg.UPathIOManager):
    extension = ".json"

    def make_safe_partition_path(self, base_path: UPath, partition: str) -> UPath:
        return base_path / safe_name(partition)

    def dump_to_path(self, context: OutputContext, obj, path: UPath) -> None:
        st.write_json(obj, str(path))

    def load_from_path(self, context: InputContext, path: UPath):
        return st.read_json(str(path))

    def unlink(self, path: UPath) -> None:
        if path.exists():
            path.unlink()


class JsonIOManager(dg.ConfigurableIOManagerFactory):
    base_path: str

    def create_io_manager(self, context) -> _JsonUPath:
        return _JsonUPath(base_path=UPath(self.base_path))
