"""The control plane at many partitions: 150 shards (Dagster stops tracking upstream partitions
past 100), 100+ proxy runs, a one-shard pool, nested raw folders."""
import gzip
import json
import re
import shutil

import dagster as dg

from metarater_assets.regression import propose_round
from metarater_assets.runner import run_pipeline
from metarater_assets.staleness import Staleness
from resources import Settings
from conftest import SAMPLE, TEST_DATA, read_jsonl_lines, write_config


def _tiny_shards(dest, n_shards: int, docs: int = 4):
    """``n_shards`` small JSONL.gz shards cut from the bundled sample (real documents)."""
    dest.mkdir(parents=True, exist_ok=True)
    lines = read_jsonl_lines(SAMPLE / "raw" / "shard-0000.jsonl.gz")
    for i in range(n_shards):
        with gzip.open(dest / f"s{i:04d}.jsonl.gz", "wt", encoding="utf-8") as f:
            f.writelines(lines[(i * docs) % 1100:(i * docs) % 1100 + docs])
    return dest


def _count(summary, key):
    return sum(1 for k, _ in summary.materialised if k == key)


def test_150_shards_then_one_more_refreshes_the_pool_and_the_curated_output(tmp_path):
    raw = _tiny_shards(tmp_path / "raw", 150)
    cfg = write_config(tmp_path / "c.yaml", proxies={"n": 4, "single_score_runs": False},
                       compute={"shards_per_run": 64}, evaluation={"seeds": [0]})
    settings = Settings(home=str(tmp_path / "home"), raw_uri=str(raw), config_path=str(cfg))
    with dg.DagsterInstance.ephemeral() as instance:
        first = run_pipeline(settings, "curated", instance=instance, echo=lambda m: None)
        assert not first.failed and _count(first, "shard_index") == 150
        assert first.runs < 40  # batches of 64 shards per step, not one run per shard
        shutil.copy(TEST_DATA / "shard-0008.jsonl.gz", raw / "shard-0008.jsonl.gz")
        summary = run_pipeline(settings, "curated", instance=instance, echo=lambda m: None)
        assert summary.new_shards == ["shard-0008.jsonl.gz"] and not summary.failed
        done = set(summary.materialised)
        assert {k for k, p in done if p == "shard-0008.jsonl.gz"} >= {"raw_docs", "rpv2_scores", "dsir_scores",
                                                                     "doc_tokens", "shard_index", "curated_corpus"}
        assert {("score_stats", None), ("curated_selection", None), ("curated_manifest", None)} <= done
        assert not {k for k, _ in done} & {"proxy_run", "regressor", "dsir_model", "tokenizer"}
        stats = json.load(open(tmp_path / "home" / "storage" / "score_stats.json"))
        manifest = json.load(open(tmp_path / "home" / "curated" / "_manifest.json"))
        assert stats["shards"] == 151 and "shard-0008.jsonl.gz" in manifest["per_shard"]
        assert manifest["per_shard"]["shard-0008.jsonl.gz"]["pool_docs"] == 60
        # and a no-op run then costs a few queries per asset, not per partition
        noop = run_pipeline(settings, "curated", instance=instance, echo=lambda m: None)
        assert noop.materialised == [] and noop.queries < 120


def test_100_proxy_runs_then_a_proposal_refits_the_regressor(tmp_path):
    raw = _tiny_shards(tmp_path / "raw", 2, docs=60)
    cfg = write_config(tmp_path / "c.yaml", proxies={"n": 90}, compute={"shards_per_run": 64})
    settings = Settings(home=str(tmp_path / "home"), raw_uri=str(raw), config_path=str(cfg))
    with dg.DagsterInstance.ephemeral() as instance:
        assert not run_pipeline(settings, "regressor", instance=instance, echo=lambda m: None).failed
        assert len(instance.get_dynamic_partitions("proxy_runs")) == 104  # 90 + 14 single-score
        rnd, new, n = propose_round(settings, instance, k=3)
        assert n == 104 and len(new) == 3
        summary = run_pipeline(settings, "regressor", instance=instance, echo=lambda m: None)
        assert sorted(p for k, p in summary.materialised if k == "proxy_run") == sorted(new)
        assert ("regressor", None) in summary.materialised and ("optimal_weights", None) in summary.materialised
        assert len(json.load(open(tmp_path / "home" / "storage" / "regressor.json"))["keys"]) == 107
        assert Staleness(instance, _assets(settings), settings).needs_run("regressor") is None


def _assets(settings):
    from metarater_assets.core.config import load_config
    from metarater_assets.defs import all_assets

    return all_assets(load_config(settings.config_path))


def test_a_pool_of_one_shard_runs_end_to_end(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    shutil.copy(SAMPLE / "raw" / "shard-0000.jsonl.gz", raw)
    settings = Settings(home=str(tmp_path / "home"), raw_uri=str(raw),
                        config_path=str(write_config(tmp_path / "c.yaml", evaluation={"seeds": [0]})))
    with dg.DagsterInstance.ephemeral() as instance:
        summary = run_pipeline(settings, "evaluation", instance=instance, echo=lambda m: None)
        assert not summary.failed
        manifest = json.load(open(tmp_path / "home" / "curated" / "_manifest.json"))
        assert list(manifest["per_shard"]) == ["shard-0000.jsonl.gz"] and manifest["pool_docs"] == 1200


def test_nested_raw_folders_are_a_pool(tmp_path):
    """SlimPajama's train/chunk1..chunk2/ with the same file names in each chunk; run by two worker
    processes (compute.workers: 2), one shard per run, as a user's `metarater run` would."""
    for chunk in ("chunk1", "chunk2"):
        _tiny_shards(tmp_path / "raw" / "train" / chunk, 2, docs=30)
    settings = Settings(home=str(tmp_path / "home"), raw_uri=str(tmp_path / "raw"),
                        config_path=str(write_config(tmp_path / "c.yaml", compute={"workers": 2, "shards_per_run": 1})))
    (tmp_path / "dg").mkdir()
    with dg.DagsterInstance.local_temp(str(tmp_path / "dg")) as instance:
        lines = []
        assert not run_pipeline(settings, "pool", instance=instance, echo=lines.append).failed
        # one run per shard per step, each a partition of its own, with progress and an ETA
        ingest = [r for r in instance.get_run_records()
                  if "raw_docs" in r.dagster_run.tags.get("metarater/assets", "").split(",")]
        assert sorted(r.dagster_run.tags["dagster/partition"] for r in ingest) == sorted(
            instance.get_dynamic_partitions("shards"))
        assert any(re.search(r"4/4 done, ETA 0s", l) for l in lines), lines
        assert sorted(instance.get_dynamic_partitions("shards")) == [
            "train__chunk1__s0000.jsonl.gz", "train__chunk1__s0001.jsonl.gz",
            "train__chunk2__s0000.jsonl.gz", "train__chunk2__s0001.jsonl.gz"]
        assert json.load(open(tmp_path / "home" / "storage" / "score_stats.json"))["docs"] == 120
