"""A PostgreSQL-backed Dagster instance (dagster-postgres) running a real materialisation.

The test starts its own throwaway PostgreSQL server on 127.0.0.1 (initdb + pg_ctl from the
Debian `postgresql` package, which .ci/run installs when it is missing).
"""
import os
import sys

import dagster as dg
import pytest

from metarater_assets.report import build_report
from metarater_assets.runner import run_pipeline
from resources import Settings
from conftest import REPO, write_config, write_small_shards


@pytest.fixture
def postgres():
    """A throwaway PostgreSQL server on 127.0.0.1 (bench/common.py's, which bench/control.py uses too)."""
    sys.path.insert(0, str(REPO / "bench"))
    from common import PostgresServer, pg_bin

    if not pg_bin("initdb") or not pg_bin("pg_ctl"):
        if os.environ.get("METARATER_REQUIRE_SERVERS") == "1":  # .ci/run: required, never skipped
            raise RuntimeError("METARATER_REQUIRE_SERVERS=1 but the PostgreSQL server binaries are not installed")
        pytest.skip("PostgreSQL server binaries not installed (apt-get install postgresql)")
    with PostgresServer() as pg:
        # SQLAlchemy 2.1 maps plain postgresql:// to psycopg 3; dagster-postgres ships psycopg2
        yield pg.database("metarater")


def test_materialise_on_a_postgres_backed_instance(postgres, tmp_path):
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text(
        f"storage:\n  postgres:\n    postgres_url: \"{postgres}\"\ntelemetry:\n  enabled: false\n")
    raw = write_small_shards(tmp_path / "raw", n=25)
    settings = Settings(home=str(tmp_path / "home"), raw_uri=str(raw),
                        config_path=str(write_config(tmp_path / "c.yaml")))
    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        summary = run_pipeline(settings, "scores", instance=instance, echo=lambda m: None)
        assert not summary.failed
        rep = build_report(settings, instance)
        assert rep["ingest"]["rows_ok"] == 50 and rep["ingest"]["shards"] == 2
        # the run history lives in PostgreSQL: a second run finds everything fresh
        assert run_pipeline(settings, "scores", instance=instance, echo=lambda m: None).materialised == []
