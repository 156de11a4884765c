"""A PostgreSQL-backed Dagster instance (dagster-postgres) running a real materialisation.

The test starts its own throwaway PostgreSQL server on 127.0.0.1 (initdb + pg_ctl from the
Debian `postgresql` package, which .ci/run installs when it is missing).
"""
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import dagster as dg
import pytest

from metarater_assets.report import build_report
from metarater_assets.runner import run_pipeline
from resources import Settings
from conftest import free_port, write_config, write_small_shards


def _pg_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    for d in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (d / name).exists():
            return str(d / name)
    return None


@pytest.fixture
def postgres(tmp_path):
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    if not initdb or not pg_ctl:
        if os.environ.get("METARATER_REQUIRE_SERVERS") == "1":  # .ci/run: required, never skipped
            raise RuntimeError("METARATER_REQUIRE_SERVERS=1 but the PostgreSQL server binaries are not installed")
        pytest.skip("PostgreSQL server binaries not installed (apt-get install postgresql)")
    # outside pytest's tmp tree (mode 0700): the server may run as another user
    data = Path(tempfile.mkdtemp(prefix="metarater-pg-"))
    run_as = []
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root
        run_as = ["runuser", "-u", "postgres", "--"]
        shutil.chown(data, "postgres", "postgres")
    port = free_port()
    subprocess.run(run_as + [initdb, "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8"],
                   check=True, capture_output=True)
    subprocess.run(run_as + [pg_ctl, "-D", str(data), "-w", "-l", str(data / "log"), "-o",
                             f"-p {port} -k {data} -c listen_addresses=127.0.0.1", "start"],
                   check=True, capture_output=True)
    try:
        subprocess.run(run_as + [_pg_bin("createdb") or "createdb", "-h", "127.0.0.1", "-p", str(port),
                                 "-U", "postgres", "metarater"], check=True, capture_output=True)
        # SQLAlchemy 2.1 maps plain postgresql:// to psycopg 3; dagster-postgres ships psycopg2
        yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/metarater"
    finally:
        subprocess.run(run_as + [pg_ctl, "-D", str(data), "-m", "fast", "stop"], capture_output=True)
        shutil.rmtree(data, ignore_errors=True)


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
