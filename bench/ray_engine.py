"""`make bench` (Ray part): the per-shard path (`metarater run --stage pool`: ingest, RPv2 + DSIR
scores, tokens, the shard index, with the pool-level fits between them) on the same pool, run four
ways on this machine, side by side:

* local engine, 1 worker process, and 2 worker processes;
* `compute.engine: ray` on a local Ray cluster (``ray.cluster_utils.Cluster``) of 1 worker node
  (1 CPU) and of 2 worker nodes (1 CPU each).

Ray 1 node vs 2 nodes is the scaling of the Ray engine; Ray 1 node vs local 1 worker is the
engine's overhead for the same work (task submission, a worker process per node, a Dagster run per
batch either way). The pool: the shared corpus's documents with fresh ids in shards of 1,250.

    python bench/ray_engine.py [--times 1]
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import machine, write_section  # noqa: E402
from scale import build_pool, config  # noqa: E402


def run(tmp: Path, raw: Path, name: str, workers: int, engine: str, stage: str) -> float:
    import dagster as dg

    from metarater_assets.runner import run_pipeline
    from resources import Settings

    (tmp / name).mkdir()
    cfg_path = config(tmp / name, workers)
    cfg = yaml.safe_load(cfg_path.read_text())
    cfg["compute"].update(shards_per_run=4, workers=workers, engine=engine, ray={"num_cpus": 1})
    cfg_path.write_text(yaml.safe_dump(cfg))
    (tmp / name / "dagster").mkdir()
    settings = Settings(home=str(tmp / name / "home"), raw_uri=str(raw), config_path=str(cfg_path))
    with dg.DagsterInstance.local_temp(str(tmp / name / "dagster")) as instance:
        t0 = time.perf_counter()
        summary = run_pipeline(settings, stage, instance=instance, echo=lambda m: None)
        wall = time.perf_counter() - t0
    if summary.failed:
        raise RuntimeError(f"{name}: {summary.failed[:3]}")
    return wall


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--times", type=int, default=1, help="copies of the shared corpus in the pool")
    ap.add_argument("--stage", default="scores",
                    help="run up to this stage (scores: ingest, RPv2 and DSIR, the scoring step; pool: "
                         "also tokens and the shard index)")
    args = ap.parse_args()
    os.environ.setdefault("METARATER_LOG_LEVEL", "CRITICAL")
    tmp = Path(tempfile.mkdtemp(prefix="metarater-ray-bench-"))
    rows = []
    try:
        docs, nbytes = build_pool(tmp / "raw", args.times)
        for name, workers in (("local-1", 1), ("local-2", 2)):
            rows.append((f"local engine, {workers} worker process(es)", run(tmp, tmp / "raw", name, workers, "local", args.stage)))
            print(rows[-1], flush=True)
        from ray.cluster_utils import Cluster

        for nodes in (1, 2):
            cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
            try:
                for _ in range(nodes):
                    cluster.add_node(num_cpus=1)
                cluster.wait_for_nodes()
                os.environ["RAY_ADDRESS"] = cluster.address
                rows.append((f"Ray engine, {nodes} worker node(s) of 1 CPU",
                             run(tmp, tmp / "raw", f"ray-{nodes}", nodes, "ray", args.stage)))
                print(rows[-1], flush=True)
            finally:
                os.environ.pop("RAY_ADDRESS", None)
                cluster.shutdown()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    w = dict(rows)
    l1, l2 = w["local engine, 1 worker process(es)"], w["local engine, 2 worker process(es)"]
    r1, r2 = w["Ray engine, 1 worker node(s) of 1 CPU"], w["Ray engine, 2 worker node(s) of 1 CPU"]
    lines = ["| how | wall s | MB/s of text |", "|---|---|---|"]
    lines += [f"| {n} | {t:.1f} | {nbytes / 1e6 / t:.2f} |" for n, t in rows]
    text = "\n".join([
        f"Machine: {machine()}. Pool: {docs:,} documents ({nbytes / 1e6:.1f} MB of text) in shards of 1,250, "
        f"4 shards per run; `metarater run --stage {args.stage}` "
        f"({'ingest, RPv2 and DSIR: the scoring step' if args.stage == 'scores' else 'up to ' + args.stage}) "
        "from an empty home each time.",
        "", *lines, "",
        f"Ray, 2 nodes vs 1: {r1 / r2:.2f}x faster (local, 2 workers vs 1: {l1 / l2:.2f}x). "
        f"Ray's overhead, 1 node vs the local engine's 1 worker: {100 * (r1 / l1 - 1):+.0f}% wall time. "
        "The machine has 2 cores, so 2 workers is all the parallelism it has; the pool-level fits between "
        "the per-shard steps run in the driver either way."])
    print(text)
    write_section("ray", "## Ray engine: 1 vs 2 worker nodes, and against the local engine (`bench/ray_engine.py`)\n\n" + text)


if __name__ == "__main__":
    main()
