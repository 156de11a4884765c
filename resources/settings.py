"""Environment settings (METARATER_HOME, METARATER_RAW_URI, METARATER_CONFIG) and the config resource."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import dagster as dg

from metarater_assets.core.config import Config, load_config

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_RAW_URI = str(REPO_ROOT / "data" / "sample" / "raw")
DEFAULT_CONFIG = str(REPO_ROOT / "configs" / "demo.yaml")

_DAGSTER_YAML = """# written by metarater
telemetry:
  enabled: false
nux:
  enabled: false
"""


@dataclass(frozen=True)
class Settings:
    home: str
    raw_uri: str
    config_path: str

    @classmethod
    def from_env(cls) -> "Settings":
        home = os.environ.get("METARATER_HOME") or str(Path.cwd() / ".metarater")
        if "://" not in home:
            home = str(Path(home).resolve())
        return cls(
            home=home,
            raw_uri=os.environ.get("METARATER_RAW_URI") or DEFAULT_RAW_URI,
            config_path=os.environ.get("METARATER_CONFIG") or DEFAULT_CONFIG,
        )

    @property
    def storage_uri(self) -> str:
        return f"{self.home.rstrip('/')}/storage"

    @property
    def artifacts_uri(self) -> str:
        return f"{self.home.rstrip('/')}/artifacts"

    @property
    def dagster_home(self) -> str:
        if "://" in self.home:
            # The Dagster instance itself needs a local folder even when storage is remote.
            return os.environ.get("DAGSTER_HOME") or str(Path.cwd() / ".metarater" / "dagster")
        return str(Path(self.home) / "dagster")

    def ensure_dagster_home(self) -> str:
        """Create DAGSTER_HOME with a dagster.yaml that turns telemetry off; export it."""
        d = Path(os.environ.get("DAGSTER_HOME") or self.dagster_home)
        d.mkdir(parents=True, exist_ok=True)
        y = d / "dagster.yaml"
        if not y.exists():
            y.write_text(_DAGSTER_YAML)
        os.environ["DAGSTER_HOME"] = str(d)
        return str(d)

    def prepare_instance(self) -> str:
        """Create the instance's storage (SQLite tables) once, under a file lock, before any process
        that shares it starts: ``dagster dev``'s webserver and daemon would otherwise both migrate a
        fresh SQLite instance at once and one of them fails (``table jobs already exists``)."""
        import fcntl

        home = self.ensure_dagster_home()
        with open(Path(home) / ".metarater-instance.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            dg.DagsterInstance.get().dispose()  # opening the instance creates its run, event and schedule tables
        return home


class MetaraterConfig(dg.ConfigurableResource):
    """The run configuration file (YAML) and the raw shard folder."""

    config_path: str
    raw_uri: str
    artifacts_uri: str
    curated_uri: str
    storage_uri: str = ""

    def load(self) -> Config:
        return load_config(self.config_path)

    @property
    def files(self):
        """Per-shard files under the storage root (``storage/<asset>/<shard>.parquet``)."""
        from .storage import ShardFiles

        return ShardFiles(self.storage_uri)
