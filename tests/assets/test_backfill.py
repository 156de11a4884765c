"""Backfills in batches: the cheap per-shard assets carry BackfillPolicy.multi_run(8), and one run
over a range of shard partitions writes every shard's output, equal to per-shard runs."""
import shutil

import pyarrow.parquet as pq

import dagster as dg

from metarater_assets.defs import build_definitions
from metarater_assets.runner import run_pipeline
from resources import Settings
from conftest import TEST_DATA, write_config, write_small_shards

BATCHED = ["rpv2_scores", "dsir_counts", "dsir_scores", "doc_tokens"]


def test_cheap_shard_assets_backfill_several_partitions_per_run(tmp_path):
    raw = write_small_shards(tmp_path / "raw", n=50)
    shutil.copy(TEST_DATA / "shard-0008.jsonl.gz", raw / "shard-0008.jsonl.gz")
    settings = Settings(home=str(tmp_path / "home"), raw_uri=str(raw),
                        config_path=str(write_config(tmp_path / "config.yaml")))
    (tmp_path / "dg").mkdir()
    defs = build_definitions(settings)
    for key in BATCHED:
        policy = defs.get_assets_def(key).backfill_policy
        assert policy is not None and policy.max_partitions_per_run == 8, key
    assert defs.get_assets_def("model_scores").backfill_policy is None  # GPU work: one shard per run
    with dg.DagsterInstance.local_temp(str(tmp_path / "dg")) as instance:
        # per-shard runs first (what the CLI does), and a copy of what they wrote
        assert not run_pipeline(settings, "proxies", instance=instance, echo=lambda m: None).failed
        store = tmp_path / "home" / "storage"
        keys = instance.get_dynamic_partitions("shards")
        assert len(keys) == 3
        single = {(a, k): pq.read_table(store / a / f"{k}.parquet") for a in BATCHED for k in keys}
        for a in BATCHED:
            shutil.rmtree(store / a)
        # one run over the whole range, as the backfill daemon launches it for a batch
        res = dg.materialize(list(defs.assets), resources=defs.resources, instance=instance, selection=BATCHED,
                             tags={"dagster/asset_partition_range_start": keys[0],
                                   "dagster/asset_partition_range_end": keys[-1]})
        assert res.success
        for a in BATCHED:
            recs = instance.fetch_materializations(dg.AssetKey(a), limit=100).records
            latest = [r for r in recs if r.run_id == res.run_id]
            assert sorted(r.partition_key for r in latest) == sorted(keys), a  # three shards, one run
            for k in keys:
                assert pq.read_table(store / a / f"{k}.parquet").equals(single[(a, k)]), (a, k)
        checks = [e for e in res.get_asset_check_evaluations() if e.asset_key.to_user_string() == "rpv2_scores"]
        assert checks and all(c.passed for c in checks)
        assert checks[0].metadata["shards"].value == 3
