"""Beyond one process: a new shard's ingest + scores run as `shard_job_celery`, every step executed
by a real Celery worker (`dagster-celery worker start`), with kombu's filesystem broker and a file
result backend on this machine. On a cluster the broker is Redis/RabbitMQ and the workers run
elsewhere (README "From the demo to a cluster"); the job, the code and the commands are these."""
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

import dagster as dg

from metarater_assets.runner import run_pipeline
from resources import Settings
from conftest import REPO, TEST_DATA, stop_group, write_config, write_small_shards

pytest.importorskip("dagster_celery")
NEW = "shard-0008.jsonl.gz"
BIN = Path(sys.executable).parent


def _celery_yaml(root: Path) -> Path:
    for d in ("broker", "processed", "results", "control"):
        (root / d).mkdir(parents=True)
    y = root / "celery.yaml"
    y.write_text(f"""execution:
  config:
    broker: "filesystem://"
    backend: "file://{root / 'results'}"
    config_source:
      broker_transport_options:
        data_folder_in: {root / 'broker'}
        data_folder_out: {root / 'broker'}
        data_folder_processed: {root / 'processed'}
        control_folder: {root / 'control'}
      worker_hijack_root_logger: false
""")
    return y


def test_shard_steps_run_on_a_celery_worker(tmp_path):
    raw = write_small_shards(tmp_path / "raw", n=40)
    cfg = write_config(tmp_path / "config.yaml")
    home, dghome = tmp_path / "home", tmp_path / "dagster"
    dghome.mkdir()
    (dghome / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    settings = Settings(home=str(home), raw_uri=str(raw), config_path=str(cfg))
    with dg.DagsterInstance.from_config(str(dghome)) as instance:
        # the pool-level fits a shard's scores read (DSIR raw distribution, tokenizer) exist already
        assert not run_pipeline(settings, "scores", instance=instance, echo=lambda m: None).failed
        from metarater_assets.defs import build_definitions

        defs = build_definitions(settings)
        assert dg.materialize(list(defs.assets), resources=defs.resources, instance=instance,
                              selection=["tokenizer"]).success
        shutil.copy(TEST_DATA / NEW, raw / NEW)
        instance.add_dynamic_partitions("shards", [NEW])
    env = {**os.environ, "METARATER_HOME": str(home), "METARATER_RAW_URI": str(raw), "METARATER_CONFIG": str(cfg),
           "DAGSTER_HOME": str(dghome), "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    conf = _celery_yaml(tmp_path / "celery")
    log = open(tmp_path / "worker.log", "w")
    worker = subprocess.Popen([str(BIN / "dagster-celery"), "worker", "start", "-y", str(conf),
                               "-A", "dagster_celery.app"], env=env, cwd=REPO, stdout=log,
                              stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 120
        while "ready." not in (tmp_path / "worker.log").read_text():
            assert worker.poll() is None and time.time() < deadline, (tmp_path / "worker.log").read_text()[-3000:]
            time.sleep(0.5)
        # what a user types to run one shard's job on the workers
        done = subprocess.run([str(BIN / "dagster"), "job", "execute", "-f", str(REPO / "definitions.py"),
                               "-j", "shard_job_celery", "-c", str(conf), "--tags",
                               f'{{"dagster/partition": "{NEW}"}}'],
                              env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    finally:
        stop_group(worker)
        log.close()
    wlog = (tmp_path / "worker.log").read_text()
    steps = ["raw_shard", "rpv2_scores", "dsir_counts", "dsir_scores", "model_scores", "doc_tokens"]
    assert wlog.count("Task execute_plan[") >= len(steps) and "succeeded" in wlog
    store = home / "storage"
    n = pq.read_metadata(store / "raw_docs" / f"{NEW}.parquet").num_rows
    assert n == 60
    for a in ("rpv2_scores", "dsir_scores", "doc_tokens"):
        assert pq.read_metadata(store / a / f"{NEW}.parquet").num_rows == n, a
    with dg.DagsterInstance.from_config(str(dghome)) as instance:
        run = instance.get_runs(limit=1)[0]
        assert run.job_name == "shard_job_celery" and run.status == dg.DagsterRunStatus.SUCCESS
        assert NEW in instance.get_materialized_partitions(dg.AssetKey("rpv2_scores"))
