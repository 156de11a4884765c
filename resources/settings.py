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
#: the config `metarater init` writes, read from the current folder when METARATER_CONFIG is unset
LOCAL_CONFIG = "metarater.yaml"


def config_raw_uri(config_path: str) -> str | None:
    """The config's ``raw:`` (the pool's location; relative to the config's folder), if it has one."""
    import yaml

    try:
        with open(config_path) as f:
            raw = (yaml.safe_load(f) or {}).get("raw")
    except (OSError, AttributeError, yaml.YAMLError):
        return None  # the config loader reports a bad config with its own error
    if not raw:
        return None
    raw = str(raw)
    if "://" in raw or os.path.isabs(raw):
        return raw
    return str((Path(config_path).resolve().parent / raw).resolve())

_DAGSTER_YAML = """# written by metarater
telemetry:
  enabled: false
nux:
  enabled: false
# runs stuck starting or cancelling are marked failed by the daemon (runs of a killed `metarater run`
# worker are marked failed by the next `metarater run` / `report`: metarater_assets/runs.py)
run_monitoring:
  enabled: true
  start_timeout_seconds: 180
  cancel_timeout_seconds: 180
  poll_interval_seconds: 60
"""


_SYNC_MODES = ("OFF", "NORMAL", "FULL", "EXTRA")


class _SqliteCommits:
    """Cheap commits on the Dagster instance's SQLite files, through a SQLAlchemy ``connect``
    listener (public API). Dagster opens a new connection per operation (several per event, a few
    events per partition) on files in WAL mode, and SQLite then pays for durability on each one:
    ``synchronous=FULL`` fsyncs the log at every commit, and the close of the last connection to a
    file checkpoints it (more fsyncs) and deletes its ``-wal`` and ``-shm`` files, which the next
    connection creates again. On a local disk that was most of the per-shard cost of a run. Here
    every connection gets ``PRAGMA synchronous=NORMAL`` (WAL stays consistent through a crash or a
    power loss; a power loss can drop the last commits, so a run shows as not done and reruns), and
    from a file's second connection on, this process keeps one idle connection to it open (the
    last ``KEEP`` files), so closing the others neither checkpoints nor deletes the log; SQLite
    still checkpoints it every 1,000 pages. ``METARATER_SQLITE_SYNCHRONOUS`` picks the mode."""

    KEEP = 8

    def __init__(self):
        import threading
        from collections import OrderedDict

        self.mode = "NORMAL"
        self.seen: set[str] = set()
        self.keepers: OrderedDict = OrderedDict()
        self.lock = threading.Lock()

    def on_connect(self, dbapi_connection, _record) -> None:
        import sqlite3

        if not isinstance(dbapi_connection, sqlite3.Connection):
            return
        dbapi_connection.execute(f"PRAGMA synchronous={self.mode}")
        rows = dbapi_connection.execute("PRAGMA database_list").fetchall()
        path = next((r[2] for r in rows if r[1] == "main"), "")
        if not path:  # in-memory
            return
        with self.lock:
            if path in self.keepers:
                self.keepers.move_to_end(path)
                return
            if path not in self.seen:  # the first connection may still be creating the file
                self.seen.add(path)
                return
            keeper = sqlite3.connect(path, timeout=30, check_same_thread=False)
            keeper.execute("SELECT count(*) FROM sqlite_master").fetchall()  # maps the WAL index
            self.keepers[path] = keeper
            while len(self.keepers) > self.KEEP:
                self.keepers.popitem(last=False)[1].close()


_SQLITE: _SqliteCommits | None = None


def sqlite_commit_mode() -> str:
    """Install (once per process) the SQLite commit settings of :class:`_SqliteCommits` for the
    Dagster instance; return the ``synchronous`` mode. PostgreSQL instances are not touched."""
    global _SQLITE
    mode = os.environ.get("METARATER_SQLITE_SYNCHRONOUS", "NORMAL").upper()
    if mode not in _SYNC_MODES:
        raise ValueError(f"METARATER_SQLITE_SYNCHRONOUS={mode!r}: expected one of {', '.join(_SYNC_MODES)}")
    if _SQLITE is None:
        from sqlalchemy import event
        from sqlalchemy.engine import Engine

        _SQLITE = _SqliteCommits()
        event.listen(Engine, "connect", _SQLITE.on_connect)
    _SQLITE.mode = mode
    return mode


@dataclass(frozen=True)
class Settings:
    home: str
    raw_uri: str
    config_path: str

    @classmethod
    def from_env(cls) -> "Settings":
        """``METARATER_CONFIG``, else ``./metarater.yaml`` when there is one (``metarater init``
        writes it), else the demo config; the raw pool from ``METARATER_RAW_URI``, else the config's
        ``raw:``, else the bundled sample; the state in ``METARATER_HOME``, else ``./.metarater``."""
        home = os.environ.get("METARATER_HOME") or str(Path.cwd() / ".metarater")
        if "://" not in home:
            home = str(Path(home).resolve())
        local = Path.cwd() / LOCAL_CONFIG
        config = os.environ.get("METARATER_CONFIG") or (str(local) if local.is_file() else DEFAULT_CONFIG)
        return cls(
            home=home,
            raw_uri=os.environ.get("METARATER_RAW_URI") or config_raw_uri(config) or DEFAULT_RAW_URI,
            config_path=config,
        )

    def export(self) -> None:
        """Put these settings in the environment, for processes started from another folder."""
        os.environ.update(METARATER_HOME=self.home, METARATER_CONFIG=self.config_path, METARATER_RAW_URI=self.raw_uri)

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
        sqlite_commit_mode()
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
