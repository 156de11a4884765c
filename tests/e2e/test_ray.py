"""`compute.engine: ray` on a real local Ray cluster of two worker nodes (``ray.cluster_utils``):
the pool scored (with a model score on a Ray actor), indexed and cut through Ray equals the local
run bit for bit, and a node killed mid-run (SIGKILL of its raylet and workers) costs a retry of its
batch on the other node, with every row accounted for and the same result."""
import sys
import threading
import time
from pathlib import Path

import dagster as dg
import pyarrow.parquet as pq

from metarater_assets.runner import ACTOR_TAG, BATCH_TAG, NODE_TAG, run_pipeline
from resources import Settings
from conftest import save_tiny_rater, write_config, write_small_shards

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "harness"))
import differential  # noqa: E402

PER_SHARD = ("raw_docs", "raw_quarantine", "rpv2_scores", "dsir_counts", "dsir_scores", "score_fineweb_edu",
             "doc_tokens", "shard_index")


def _pool(tmp: Path) -> Path:
    raw = write_small_shards(tmp / "raw", n=150)
    for name in ("shard-0000.jsonl.gz", "shard-0002.parquet"):  # four shards: two in flight at once
        (raw / f"b-{name}").write_bytes((raw / name).read_bytes())
    return raw


def _run(home: Path, raw: Path, cfg: Path, instance: dg.DagsterInstance):
    settings = Settings(home=str(home), raw_uri=str(raw), config_path=str(cfg))
    return run_pipeline(settings, "curated", instance=instance, echo=lambda m: None)


def test_a_pool_through_ray_equals_the_local_run_also_when_a_node_dies(tmp_path, monkeypatch):
    """Two worker nodes: one holds the stand-in GPU (a custom resource), where the model score's
    batches go to one actor that loads its model once; the other is killed as soon as a batch
    runs on it. The run completes and every output equals the local engine's."""
    import yaml

    raw = _pool(tmp_path)
    registry = tmp_path / "raters.yaml"
    registry.write_text(yaml.safe_dump({"scores": {"fineweb_edu": {
        "model": save_tiny_rater(tmp_path, "tiny-edu", 1, 1), "max_tokens": 64, "head": {"kind": "regression"}}}}))
    over = {"model_raters": {"registry": str(registry), "scores": ["fineweb_edu"]}, "evaluation": {"seeds": [0]}}
    local_cfg = write_config(tmp_path / "local.yaml", compute={"shards_per_run": 1, "workers": 1}, **over)
    ray_cfg = write_config(tmp_path / "ray.yaml", compute={
        "shards_per_run": 1, "workers": 2, "engine": "ray",
        "ray": {"num_cpus": 1, "max_retries": 3, "gpu_resource": "fake_gpu"}}, **over)
    with dg.DagsterInstance.ephemeral() as instance:
        local = _run(tmp_path / "local", raw, local_cfg, instance)
    assert not local.failed

    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    try:
        keeper = cluster.add_node(num_cpus=2, resources={"fake_gpu": 1})  # one stand-in GPU: one model worker
        victim_node = cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        monkeypatch.setenv("RAY_ADDRESS", cluster.address)
        dagster_home = tmp_path / "dagster"
        dagster_home.mkdir()
        killed: dict = {}
        victim = victim_node.node_id
        with dg.DagsterInstance.local_temp(str(dagster_home)) as instance:
            def killer():  # as soon as a batch runs on the second node, that node dies
                with dg.DagsterInstance.from_config(str(dagster_home)) as watch:
                    deadline = time.time() + 240
                    while time.time() < deadline:
                        started = watch.get_runs(filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED],
                                                                       tags={NODE_TAG: victim}))
                        if started:
                            cluster.remove_node(victim_node, allow_graceful=False)
                            killed["runs"] = [r.run_id for r in started]
                            return
                        time.sleep(0.02)

            t = threading.Thread(target=killer, daemon=True)
            t.start()
            through_ray = _run(tmp_path / "ray", raw, ray_cfg, instance)
            t.join(timeout=5)
            assert killed, "no batch ever ran on the second node: it was not killed mid-run"
            assert not through_ray.failed, through_ray.failed
            runs = instance.get_runs(filters=dg.RunsFilter(tags={"metarater/cli": "run"}))
            assert not [r for r in runs if r.status in (dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.STARTING)]
            dead = [r for r in runs if r.status == dg.DagsterRunStatus.FAILURE and BATCH_TAG in r.tags]
            assert {r.run_id for r in dead} == set(killed["runs"]), "the killed node's batch run is marked failed"
            redone = {r.tags[BATCH_TAG] for r in runs if r.status == dg.DagsterRunStatus.SUCCESS and BATCH_TAG in r.tags}
            assert {r.tags[BATCH_TAG] for r in dead} <= redone, "the killed batch was retried and finished"

            # the model score: four batches on one actor, on the node with the stand-in GPU, one model load
            model_runs = [r for r in runs if r.status == dg.DagsterRunStatus.SUCCESS
                          and "score_fineweb_edu" in (r.tags.get("metarater/assets") or "")]
            assert len(model_runs) == 4, [r.tags.get("metarater/assets") for r in runs]
            actors = {r.tags.get(ACTOR_TAG) for r in model_runs}
            assert len(actors) == 1 and None not in actors, "every batch of the model score on the one actor"
            assert {r.tags[NODE_TAG] for r in model_runs} == {keeper.node_id}
            first_step = [r for r in runs if "raw_docs" in (r.tags.get("metarater/assets") or "").split(",")]
            assert first_step and all(ACTOR_TAG not in r.tags for r in first_step)  # no model: Ray tasks
            loads = [e.asset_materialization.metadata["model_loads"].value
                     for e in instance.fetch_materializations(dg.AssetKey("score_fineweb_edu"), limit=100).records]
            assert sorted(loads) == [0, 0, 0, 1], "the model is loaded once, by the first batch"
    finally:
        cluster.shutdown()

    a, b = tmp_path / "local", tmp_path / "ray"
    shards = sorted(p.name for p in (a / "storage" / "shard_index").iterdir())
    assert len(shards) == 4
    for asset in PER_SHARD:  # every row, once: the same files, row for row
        for name in shards:
            ta, tb = pq.read_table(a / "storage" / asset / name), pq.read_table(b / "storage" / asset / name)
            assert ta.equals(tb), (asset, name)
    sa, sb = differential.snapshot(a), differential.snapshot(b)
    for snap in (sa, sb):
        snap["manifest"].pop("config")  # the two config files differ in compute.engine only
    assert differential.differences(sb, sa) == []
    files = sorted(p.name for p in (a / "curated").glob("*.parquet"))
    assert len(files) == 4
    for f in files:
        assert pq.read_table(b / "curated" / f).equals(pq.read_table(a / "curated" / f)), f
