"""A backfill as the UI launches it (`launchPartitionBackfill`) over every shard of the ingest
asset, through a running `metarater ui`, completed by the backfill daemon in runs of
compute.shards_per_run partitions (fixture and helpers: tests/e2e/uihelpers.py)."""
import json

import dagster as dg

from uihelpers import prepare, ui, wait_for  # noqa: F401 (ui: the fixture)


def test_a_backfill_launched_through_graphql_runs_in_batches(ui):
    start, tmp = ui
    raw, cfg, env = prepare(tmp, n=12, compute={"shards_per_run": 4})
    for i in range(8):  # ten shards in all
        (raw / f"extra-{i}.jsonl").write_text("".join(json.dumps({"id": f"e{i}-{j}", "text": f"Extra document {j} of {i}."}) + "\n"
                                                    for j in range(3)))
    dagster_home = tmp / "home" / "dagster"
    dagster_home.mkdir(parents=True)
    from resources.settings import _DAGSTER_YAML

    (dagster_home / "dagster.yaml").write_text(_DAGSTER_YAML)
    keys = sorted(p.name for p in raw.iterdir())  # what the sensor registers (plain names are the keys)
    with dg.DagsterInstance.from_config(str(dagster_home)) as inst:
        inst.add_dynamic_partitions("shards", keys)
    graphql, env = start(raw, cfg)
    q = ("mutation($p: LaunchBackfillParams!) { launchPartitionBackfill(backfillParams: $p) { __typename "
         "... on LaunchBackfillSuccess { backfillId } ... on PythonError { message } } }")
    d = graphql(q, {"p": {"partitionNames": keys, "assetSelection": [{"path": ["raw_docs"]}, {"path": ["raw_quarantine"]}]}})
    assert d["launchPartitionBackfill"]["__typename"] == "LaunchBackfillSuccess", d
    bid = d["launchPartitionBackfill"]["backfillId"]

    def finished():
        r = graphql("query($id: String!) { partitionBackfillOrError(backfillId: $id) { ... on PartitionBackfill { status } } }",
                    {"id": bid})
        return r["partitionBackfillOrError"]["status"] in ("COMPLETED", "COMPLETED_SUCCESS", "FAILED", "CANCELED",
                                                            "COMPLETED_FAILED") and r
    status = wait_for(finished, 420, "the backfill daemon did not complete the backfill")
    assert status["partitionBackfillOrError"]["status"] in ("COMPLETED", "COMPLETED_SUCCESS")
    with dg.DagsterInstance.from_config(str(dagster_home)) as inst:
        runs = inst.get_runs(filters=dg.RunsFilter(tags={"dagster/backfill": bid}))
        assert len(runs) == 3  # ten shards in batches of four: the asset's BackfillPolicy
        assert all(r.status == dg.DagsterRunStatus.SUCCESS for r in runs)
        for key in ("raw_docs", "raw_quarantine"):
            recs = inst.fetch_materializations(dg.AssetKey(key), limit=100).records
            assert sorted(r.partition_key for r in recs) == keys, key  # every shard, once
    for k in keys:
        assert (tmp / "home" / "storage" / "raw_docs" / f"{k}.parquet").exists()
