"""Batched runs: every per-shard asset carries BackfillPolicy.multi_run(compute.shards_per_run), and
one run over a range of shard partitions writes every shard's output, byte-equal to per-shard runs."""
import shutil

import pyarrow.parquet as pq

import dagster as dg

from metarater_assets.defs import build_definitions, shard_assets
from metarater_assets.runner import run_pipeline
from resources import Settings
from conftest import TEST_DATA, write_config, write_small_shards


def test_every_shard_asset_runs_in_batches_equal_to_single_runs(tmp_path):
    raw = write_small_shards(tmp_path / "raw", n=50)
    shutil.copy(TEST_DATA / "shard-0008.jsonl.gz", raw / "shard-0008.jsonl.gz")
    settings = Settings(home=str(tmp_path / "home"), raw_uri=str(raw),
                        config_path=str(write_config(tmp_path / "config.yaml", compute={"shards_per_run": 1})))
    defs = build_definitions(settings)
    from metarater_assets.core.config import load_config

    per_shard = shard_assets(load_config(settings.config_path))
    assert per_shard == ["raw_docs", "raw_quarantine", "rpv2_scores", "dsir_counts", "dsir_scores", "doc_tokens",
                         "shard_index"]
    for key in per_shard + ["curated_corpus"]:
        policy = defs.get_assets_def(key).backfill_policy
        assert policy is not None and policy.max_partitions_per_run == 1, key
    with dg.DagsterInstance.ephemeral() as instance:
        # one shard per run first (shards_per_run: 1), and a copy of what they wrote
        summary = run_pipeline(settings, "pool", instance=instance, echo=lambda m: None)
        assert not summary.failed
        store = tmp_path / "home" / "storage"
        keys = instance.get_dynamic_partitions("shards")
        assert len(keys) == 3
        single = {(a, k): pq.read_table(store / a / f"{k}.parquet") for a in per_shard for k in keys}
        for a in per_shard:
            shutil.rmtree(store / a)
        # one run over the whole range, as the backfill daemon launches a batch
        res = dg.materialize(list(defs.assets), resources=defs.resources, instance=instance, selection=per_shard,
                             tags={"dagster/asset_partition_range_start": keys[0],
                                   "dagster/asset_partition_range_end": keys[-1]})
        assert res.success
        for a in per_shard:
            recs = instance.fetch_materializations(dg.AssetKey(a), limit=100).records
            latest = [r for r in recs if r.run_id == res.run_id]
            assert sorted(r.partition_key for r in latest) == sorted(keys), a  # three shards, one run
            for k in keys:
                assert pq.read_table(store / a / f"{k}.parquet").equals(single[(a, k)]), (a, k)
        checks = [e for e in res.get_asset_check_evaluations() if e.asset_key.to_user_string() == "rpv2_scores"]
        assert checks and all(c.passed for c in checks) and checks[0].metadata["shards"].value == 3
