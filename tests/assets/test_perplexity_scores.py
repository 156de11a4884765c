"""The perplexity rater in the asset graph: one score file per shard, in the pool's index; an edit
of its reference text in place restales exactly its scores (and what reads them), and
`metarater score --raters perplexity` gives the stored values."""
import gzip
import shutil

import numpy as np
import pyarrow.parquet as pq
import yaml

import dagster as dg

from metarater_assets.cli import main
from metarater_assets.runner import run_pipeline
from resources import Settings
from resources.storage import ShardFiles

from conftest import SAMPLE, write_config, write_small_shards

SCORE = "ngram_log_perplexity"


def test_perplexity_scores_follow_their_reference_text(tmp_path, monkeypatch):
    raw = write_small_shards(tmp_path / "raw", n=80)
    ref = tmp_path / "reference.jsonl.gz"
    shutil.copy(SAMPLE / "reference.jsonl.gz", ref)
    cfg_path = write_config(tmp_path / "config.yaml", perplexity={"targets": [str(ref)]})
    cfg = yaml.safe_load(cfg_path.read_text())
    cfg["raters"] = ["rpv2", "perplexity"]
    cfg_path.write_text(yaml.safe_dump(cfg))
    settings = Settings(home=str(tmp_path / "home"), raw_uri=str(raw), config_path=str(cfg_path))
    (tmp_path / "dg").mkdir()
    instance = dg.DagsterInstance.local_temp(str(tmp_path / "dg"))
    first = run_pipeline(settings, "pool", instance=instance, echo=lambda m: None)
    assert not first.failed and not first.blocked, (first.failed, first.blocked)
    files = ShardFiles(settings.storage_uri)
    before = {}
    for key in ("shard-0000.jsonl.gz", "shard-0002.parquet"):
        t = pq.read_table(files.uri("perplexity_scores", key))
        assert t.column_names == ["doc_id", SCORE] and t.num_rows == 80
        v = t.column(SCORE).to_numpy(zero_copy_only=False)
        assert np.isfinite(v).all() and (v > 0).all()  # real text: a positive mean NLL per word
        before[key] = v
        index = pq.read_table(files.uri("shard_index", key))
        assert np.array_equal(index.column(SCORE).to_numpy(zero_copy_only=False), v)
    check = instance.get_latest_asset_check_evaluation_record(
        dg.AssetCheckKey(dg.AssetKey("perplexity_scores"), "scores_complete"))
    assert check is not None and check.evaluation.passed

    again = run_pipeline(settings, "pool", instance=instance, echo=lambda m: None)
    assert again.materialised == []

    # the reference edited in place (same path): only the perplexity scores and what reads them rerun
    with gzip.open(SAMPLE / "targets" / "wiki.jsonl.gz", "rt") as f:
        extra = f.read()
    with gzip.open(ref, "at") as f:
        f.write(extra)
    edited = run_pipeline(settings, "pool", instance=instance, echo=lambda m: None)
    done = {k for k, _ in edited.materialised}
    assert "perplexity_scores" in done and "rpv2_scores" not in done and "raw_docs" not in done
    after = {k: pq.read_table(files.uri("perplexity_scores", k)).column(SCORE).to_numpy(zero_copy_only=False)
             for k in before}
    assert all(not np.array_equal(before[k], after[k]) for k in before)

    # the score command: the same model, the same values
    monkeypatch.setenv("METARATER_HOME", settings.home)
    monkeypatch.setenv("METARATER_RAW_URI", str(raw))
    monkeypatch.setenv("METARATER_CONFIG", str(cfg_path))
    out = tmp_path / "cli.parquet"
    assert main(["score", "--raters", "perplexity", "--in", str(raw / "shard-0000.jsonl.gz"), "--out", str(out)]) == 0
    assert np.array_equal(pq.read_table(out).column(SCORE).to_numpy(zero_copy_only=False),
                          after["shard-0000.jsonl.gz"])
