"""Declarative automation end to end: a new shard file -> the shard sensor registers it and runs
ingest + scores for that shard only -> AutomationCondition ticks bring the pool statistics, the
pool index and the curated output up to date with the current weights. Proxies, the regressor and
the other pool-level fits are never requested."""
import shutil

import dagster as dg

from metarater_assets.defs import automated, build_definitions
from metarater_assets.runner import run_pipeline
from resources import Settings
from conftest import TEST_DATA, write_config, write_small_shards

NEW = "shard-0008.jsonl.gz"
NEVER = {"dsir_model", "prrc_annotations", "prrc_rater", "tokenizer", "validation_tokens", "proxy_plan",
         "proxy_data", "proxy_run", "regressor", "optimal_weights", "evaluation", "raw_docs", "raw_quarantine"}


def _materialise(defs, instance, requested: dict[str, set]) -> None:
    """What the automation daemon would launch: one run per partition (or unpartitioned set)."""
    by_partition: dict = {}
    for key, parts in requested.items():
        for p in parts:
            by_partition.setdefault(p, []).append(key)
    # the pool-level (unpartitioned) run first, as its shard runs depend on it
    for p, keys in sorted(by_partition.items(), key=lambda kv: (kv[0] is not None, kv[0] or "")):
        res = dg.materialize(list(defs.assets), resources=defs.resources, instance=instance,
                             partition_key=p, selection=keys)
        assert res.success, (p, keys)


def _tick(defs, instance, cursor):
    res = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=cursor)
    requested = {k.to_user_string(): set(res.get_requested_partitions(k))
                 for k in defs.resolve_asset_graph().get_all_asset_keys()
                 if res.get_requested_partitions(k)}
    return res.cursor, requested


def test_new_shard_flows_through_sensor_and_automation_conditions(tmp_path):
    raw = write_small_shards(tmp_path / "raw", n=80)
    settings = Settings(home=str(tmp_path / "home"), raw_uri=str(raw),
                        config_path=str(write_config(tmp_path / "config.yaml")))
    with dg.DagsterInstance.ephemeral() as instance:
        assert not run_pipeline(settings, "curated", instance=instance, echo=lambda m: None).failed
        defs = build_definitions(settings)
        # a settled graph: the automation asks for nothing
        cursor, requested = _tick(defs, instance, None)
        assert requested == {}

        # a new file arrives; the sensor registers it and asks for ingest + scores of that shard
        shutil.copy(TEST_DATA / NEW, raw / NEW)
        sensor = defs.get_sensor_def("shard_sensor")
        ctx = dg.build_sensor_context(instance=instance, definitions=defs)
        result = sensor(ctx)
        for req in result.dynamic_partitions_requests:
            instance.add_dynamic_partitions(req.partitions_def_name, list(req.partition_keys))
        assert [r.partition_key for r in result.run_requests] == [NEW]
        shard_job = defs.resolve_job_def("shard_job")
        before = {k: instance.get_latest_materialization_event(dg.AssetKey(k)).run_id
                  for k in ("proxy_run", "regressor")}
        assert shard_job.execute_in_process(instance=instance, partition_key=NEW).success

        # automation ticks until the graph settles; record everything it asks for
        asked: dict[str, set] = {}
        for _ in range(8):
            cursor, requested = _tick(defs, instance, cursor)
            if not requested:
                break
            assert not ("curated_selection" in requested and "curated_corpus" in requested), requested
            for k, parts in requested.items():
                asked.setdefault(k, set()).update(parts)
            _materialise(defs, instance, requested)
        assert requested == {}, f"automation did not settle: {requested}"
        # pool statistics, pool index and the curated output follow the new data ...
        assert {"score_stats", "curated_selection", "curated_manifest", "curated_corpus"} <= set(asked)
        assert asked["curated_corpus"] == {"shard-0000.jsonl.gz", "shard-0002.parquet", NEW}  # new threshold
        # ... per-shard scores were done by the sensor's run for the new shard only ...
        for k in ("rpv2_scores", "dsir_counts", "dsir_scores", "doc_tokens", "shard_index"):
            assert asked.get(k, set()) <= {NEW}, k
        # ... and nothing is refit: proxies, regressor, tokenizer, DSIR / PRRC fits stay as they were
        assert not (set(asked) & NEVER), set(asked) & NEVER
        assert set(asked) <= automated(defs)
        assert instance.get_latest_materialization_event(dg.AssetKey("proxy_run")).run_id == before["proxy_run"]
        assert instance.get_latest_materialization_event(dg.AssetKey("regressor")).run_id == before["regressor"]
        for k in ("raw_docs", "rpv2_scores", "dsir_scores"):  # old shards: materialised once, never again
            for p in ("shard-0000.jsonl.gz", "shard-0002.parquet"):
                recs = instance.fetch_materializations(
                    dg.AssetRecordsFilter(asset_key=dg.AssetKey(k), asset_partitions=[p]), limit=10).records
                assert len(recs) == 1, (k, p)
        import json
        import pyarrow.parquet as pq

        rows = sum(pq.read_metadata(f).num_rows for f in (tmp_path / "home" / "storage" / "raw_docs").glob("*.parquet"))
        stats = json.load(open(tmp_path / "home" / "storage" / "score_stats.json"))
        manifest = json.load(open(tmp_path / "home" / "curated" / "_manifest.json"))
        assert stats["docs"] == rows == manifest["pool_docs"] == 80 + 80 + 60  # the new shard is in the pool
        assert manifest["per_shard"][NEW]["pool_docs"] == 60
