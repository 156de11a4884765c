"""UPath IO managers: every asset output is a plain file a user can open (Parquet or JSON).

Layout under ``$METARATER_HOME/storage`` (any fsspec URI)::

    <asset_key>/<partition_key>.parquet    partitioned tables (one file per shard / proxy run)
    <asset_key>.parquet                    pool-level tables
    <asset_key>.json                       small structured results (plans, regressor, weights)

Writes are atomic: the file is written under a temporary name and then moved into place, so a
crash never leaves a file that looks complete.
"""
from __future__ import annotations

import dagster as dg
import pyarrow as pa
from dagster import InputContext, OutputContext
from dagster._core.storage.upath_io_manager import escape_dotdot_segments
from upath import UPath

from metarater_assets.core import storage as st


class _SafeUPath(dg.UPathIOManager):
    def make_safe_partition_path(self, base_path: UPath, partition: str) -> UPath:
        return base_path / escape_dotdot_segments(partition.replace("/", "_"))

    def handle_output(self, context: OutputContext, obj) -> None:
        """A batched backfill run (several partitions, see metarater_assets/batched.py) returns
        ``{partition: value}``: each partition's file is written on its own, atomically."""
        if not (context.has_asset_partitions and len(context.asset_partition_keys) > 1):
            return super().handle_output(context, obj)
        paths = self._get_paths_for_partitions(context)
        if not isinstance(obj, dict) or set(obj) != set(paths):
            raise TypeError(f"{context.asset_key.to_user_string()}: a run over {len(paths)} partitions must "
                            f"return {{partition: value}} for exactly those partitions")
        for key, path in paths.items():
            self.make_directory(path.parent)
            self.dump_to_path(context=context, obj=obj[key], path=path)
        rows = [self.get_metadata(context, v).get("rows") for v in obj.values()]
        context.add_output_metadata({"partitions": len(paths),
                                     **({"rows": int(sum(rows))} if all(r is not None for r in rows) else {})})

    def unlink(self, path: UPath) -> None:
        if path.exists():
            path.unlink()


class _ParquetUPath(_SafeUPath):
    extension = ".parquet"

    def dump_to_path(self, context: OutputContext, obj, path: UPath) -> None:
        if isinstance(obj, st.StagedFile):  # streamed to a local file by the asset
            st.put_atomic(obj.local_path, str(path))
        elif isinstance(obj, pa.Table):
            st.write_parquet(obj, str(path))
        else:
            raise TypeError(f"{context.asset_key.to_user_string()}: expected a pyarrow Table, got {type(obj)}")

    def load_from_path(self, context: InputContext, path: UPath) -> pa.Table:
        return st.read_parquet(str(path))

    def get_metadata(self, context: OutputContext, obj):
        if isinstance(obj, st.StagedFile):
            return {"rows": obj.rows}
        return {"rows": obj.num_rows, "columns": ", ".join(obj.column_names)}


class _JsonUPath(_SafeUPath):
    extension = ".json"

    def dump_to_path(self, context: OutputContext, obj, path: UPath) -> None:
        st.write_json(obj, str(path))

    def load_from_path(self, context: InputContext, path: UPath):
        return st.read_json(str(path))


class ParquetIOManager(dg.ConfigurableIOManagerFactory):
    base_path: str

    def create_io_manager(self, context) -> _ParquetUPath:
        return _ParquetUPath(base_path=UPath(self.base_path))


class JsonIOManager(dg.ConfigurableIOManagerFactory):
    base_path: str

    def create_io_manager(self, context) -> _JsonUPath:
        return _JsonUPath(base_path=UPath(self.base_path))


class _CuratedUPath(_ParquetUPath):
    """The curated corpus goes straight to the user's output URI: ``<uri>/<shard>.parquet``."""

    def _get_path_without_extension(self, context):
        return self._base_path


class CuratedIOManager(dg.ConfigurableIOManagerFactory):
    base_path: str

    def create_io_manager(self, context) -> _CuratedUPath:
        return _CuratedUPath(base_path=UPath(self.base_path))


class _ManifestUPath(_JsonUPath):
    """``<curated uri>/manifest.json``."""

    def _get_path_without_extension(self, context):
        return self._base_path / "manifest"


class CuratedManifestIOManager(dg.ConfigurableIOManagerFactory):
    base_path: str

    def create_io_manager(self, context) -> _ManifestUPath:
        return _ManifestUPath(base_path=UPath(self.base_path))
