"""The whole chain on two small shards, through the same runner the CLI uses."""
import json

import pyarrow.parquet as pq
import pytest
import yaml

import dagster as dg

from metarater_assets.report import build_report
from metarater_assets.runner import run_pipeline
from resources import Settings


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    from conftest import write_config, write_small_shards

    tmp = tmp_path_factory.mktemp("pipe")
    raw = write_small_shards(tmp / "raw")
    cfg = write_config(tmp / "config.yaml")
    settings = Settings(home=str(tmp / "home"), raw_uri=str(raw), config_path=str(cfg))
    (tmp / "dg").mkdir()
    instance = dg.DagsterInstance.local_temp(str(tmp / "dg"))
    summary = run_pipeline(settings, "evaluation", instance=instance, echo=lambda m: None)
    return settings, instance, summary, cfg


def test_whole_chain_runs(pipeline):
    settings, instance, summary, _ = pipeline
    assert summary.failed == []
    rep = build_report(settings, instance)
    assert rep["ingest"]["shards"] == 2
    assert rep["ingest"]["rows_in"] == rep["ingest"]["rows_ok"] == 300
    assert rep["ingest"]["failed_shards"] == []
    assert len(rep["scores"]["names"]) == 14 and rep["scores"]["docs_scored"] == 300
    assert rep["proxies"]["n"] == 6 + 14
    assert rep["proxies"]["val_loss_min"] < rep["proxies"]["val_loss_max"]
    assert rep["regressor"]["model"] in ("gbr", "linear", "ridge")
    w = rep["optimal_weights"]
    assert abs(sum(w.values()) - 1) < 1e-9 and len(w) == 14
    assert 0 < rep["curated"]["docs"] < 300
    ev = rep["evaluation"]
    assert len(ev["curated_loss"]) == len(ev["random_loss"]) == len(ev["single_best_loss"]) == 2
    assert ev["single_best_score"] in rep["scores"]["names"]
    assert set(ev["by_set"]) == {"validation", "reference"}


def test_two_runs_from_scratch_are_identical(pipeline, tmp_path):
    """Same data + config -> same curated ids, same proxy losses, same regressor predictions."""
    from conftest import write_config, write_small_shards

    settings, _, _, _ = pipeline
    raw = write_small_shards(tmp_path / "raw")
    again = Settings(home=str(tmp_path / "home"), raw_uri=str(raw),
                     config_path=str(write_config(tmp_path / "config.yaml")))
    (tmp_path / "dg").mkdir()
    with dg.DagsterInstance.local_temp(str(tmp_path / "dg")) as inst:
        assert not run_pipeline(again, "curated", instance=inst, echo=lambda m: None).failed

    def kept(s):
        t = pq.read_table(f"{s.storage_uri}/curated_selection.parquet").to_pydict()
        return [d for d, k in zip(t["doc_id"], t["kept"]) if k]

    assert kept(settings) == kept(again) and kept(again)
    r1, r2 = (json.load(open(f"{s.storage_uri}/regressor.json")) for s in (settings, again))
    assert r1["keys"] == r2["keys"] and r1["y"] == r2["y"]
    for m in r1["cv"]:
        assert r1["cv"][m]["oof_pred"] == r2["cv"][m]["oof_pred"]
    w1, w2 = (json.load(open(f"{s.storage_uri}/optimal_weights.json"))["weights"] for s in (settings, again))
    assert w1 == w2


def test_curated_output_is_plain_parquet_with_lineage(pipeline):
    settings, _, _, _ = pipeline
    out = f"{settings.home}/curated"
    manifest = json.load(open(f"{out}/manifest.json"))
    files = manifest["files"]
    tables = [pq.read_table(f) for f in files]
    assert sum(t.num_rows for t in tables) == manifest["docs"]
    cols = tables[0].column_names
    assert cols == ["doc_id", "text", "source", "combined_score", "raw_shard", "raw_row"]
    for t in tables:
        assert min(t.column("combined_score").to_pylist()) >= manifest["threshold"]
    import datasets

    ds = datasets.load_dataset("parquet", data_files=files, split="train")
    assert len(ds) == manifest["docs"] and set(ds.column_names) == set(cols)
    for key in ("weights", "regressor", "proxy_runs", "score_code_versions", "threshold",
                "per_shard", "per_source", "dagster_run_id", "created"):
        assert key in manifest
    assert sum(v["docs"] for v in manifest["per_shard"].values()) == manifest["docs"]


def test_second_run_has_nothing_to_do(pipeline):
    settings, instance, _, _ = pipeline
    again = run_pipeline(settings, "evaluation", instance=instance, echo=lambda m: None)
    assert again.materialised == [] and again.failed == []


def test_changing_only_the_fraction_recomputes_only_curation_and_evaluation(pipeline):
    settings, instance, _, cfg_path = pipeline
    cfg = yaml.safe_load(cfg_path.read_text())
    cfg["curation"]["fraction"] = 0.3
    cfg_path.write_text(yaml.safe_dump(cfg))
    summary = run_pipeline(settings, "evaluation", instance=instance, echo=lambda m: None)
    done = {k for k, _ in summary.materialised}
    assert done == {"curated_selection", "curated_corpus", "curated_manifest", "evaluation"}
    rep = build_report(settings, instance)
    assert rep["curated"]["fraction"] == 0.3


def test_explain_kept_and_dropped(pipeline):
    from metarater_assets.explain import explain

    settings, _, _, _ = pipeline
    sel = pq.read_table(f"{settings.storage_uri}/curated_selection.parquet").to_pydict()
    kept = sel["doc_id"][sel["kept"].index(True)]
    dropped = sel["doc_id"][sel["kept"].index(False)]
    assert "-> KEPT" in explain(settings, kept)
    out = explain(settings, dropped)
    assert "-> DROPPED" in out and "proxy runs:" in out and "rps_doc_word_count" in out
    assert "not found" in explain(settings, "no-such-doc")


def test_adaptive_round_trains_only_new_runs_and_refits(pipeline):
    from metarater_assets.regression import propose_round

    settings, instance, _, _ = pipeline
    before = set(instance.get_dynamic_partitions("proxy_runs"))
    rnd, new, n = propose_round(settings, instance, k=2)
    assert rnd == 1 and len(new) == 2 and n == len(before)
    assert set(instance.get_dynamic_partitions("proxy_runs")) == before | set(new)
    summary = run_pipeline(settings, "regressor", instance=instance, echo=lambda m: None)
    done = sorted((k, p) for k, p in summary.materialised)
    assert done == sorted([("proxy_run", k) for k in new] + [("regressor", None), ("optimal_weights", None)])
    reg = json.load(open(f"{settings.storage_uri}/regressor.json"))
    assert len(reg["keys"]) == n + 2


def test_new_shard_touches_only_its_partitions_and_the_pool_level_outputs(pipeline):
    """incoming/shard-0008 arrives: ingest + scores for it alone; proxies are not retrained."""
    import shutil
    from conftest import TEST_DATA

    settings, instance, _, _ = pipeline
    shutil.copy(TEST_DATA / "shard-0008.jsonl.gz", f"{settings.raw_uri}/shard-0008.jsonl.gz")
    summary = run_pipeline(settings, "curated", instance=instance, echo=lambda m: None)
    assert summary.new_shards == ["shard-0008.jsonl.gz"] and not summary.failed
    done = set(summary.materialised)
    per_shard = {(k, p) for k, p in done if p is not None}
    new = "shard-0008.jsonl.gz"
    # every per-shard input/score asset ran for the new shard only
    for key in ("raw_docs", "raw_quarantine", "rpv2_scores", "dsir_counts", "dsir_scores", "doc_tokens"):
        assert {p for k, p in per_shard if k == key} == {new}, key
    # pool-level statistics and the curated output follow with the current weights
    assert {("score_stats", None), ("pool_index", None), ("curated_selection", None),
            ("curated_manifest", None)} <= done
    assert {p for k, p in per_shard if k == "curated_corpus"} == {"shard-0000.jsonl.gz",
                                                                  "shard-0002.parquet", new}
    # not retrained unless asked
    assert not {k for k, _ in done} & {"dsir_model", "tokenizer", "proxy_run", "regressor",
                                        "optimal_weights", "proxy_plan"}
    rep = build_report(settings, instance)
    assert rep["ingest"]["shards"] == 3 and rep["ingest"]["rows_ok"] == 360


def test_jsonl_zst_output_option(pipeline):
    import zstandard

    settings, instance, _, cfg_path = pipeline
    cfg = yaml.safe_load(cfg_path.read_text())
    cfg["curation"]["format"] = "jsonl.zst"
    cfg_path.write_text(yaml.safe_dump(cfg))
    summary = run_pipeline(settings, "curated", instance=instance, echo=lambda m: None)
    assert {k for k, _ in summary.materialised} == {"curated_corpus", "curated_manifest"}
    manifest = json.load(open(f"{settings.home}/curated/manifest.json"))
    for pq_file, zst_file in zip(manifest["files"], manifest["jsonl_zst_files"]):
        with open(zst_file, "rb") as f:
            rows = [json.loads(l) for l in zstandard.ZstdDecompressor().stream_reader(f).read().decode().splitlines()]
        assert rows == pq.read_table(pq_file).to_pylist()
