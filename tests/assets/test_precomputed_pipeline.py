"""Bring your own scores: the released SlimPajama-Meta-rater layout (configs/slimpajama-meta-rater.yaml
on the bundled fixture shards) runs to the curated corpus without scoring anything, and a changed
shard file re-ingests that shard alone."""
import json
import shutil

import dagster as dg
import pyarrow.parquet as pq
import yaml
import zstandard

from metarater_assets.core.config import load_config
from metarater_assets.defs import all_assets
from metarater_assets.runner import run_pipeline
from resources import Settings
from resources.storage import ShardFiles
from conftest import REPO, SAMPLE

FIXTURE = REPO / "data" / "released-sample" / "raw"
SHARDS = ("example_train_0.jsonl.zst", "example_train_1.parquet")  # 150 + 100 documents
SCORING = ("rpv2_scores", "dsir_counts", "dsir_model", "dsir_scores")


def _config(path):
    """configs/slimpajama-meta-rater.yaml with test-sized proxies, tokenizer and regressor."""
    cfg = yaml.safe_load((REPO / "configs" / "slimpajama-meta-rater.yaml").read_text())
    assert cfg["raters"] == ["precomputed"] and len(cfg["precomputed"]["scores"]) == 25
    cfg["validation"].update(sets={"validation": str(SAMPLE / "validation.jsonl.gz"),
                                   "reference": str(SAMPLE / "reference.jsonl.gz")}, max_docs=40)
    cfg["tokenizer"].update(vocab_size=1024, sample_docs=10000)
    cfg["proxies"].update(n=6, kind="ngram", preset="test", token_budget=4096, single_score_runs=False)
    cfg["regressor"].update(models=["linear", "ridge"], candidates=5000, bootstrap=5, folds=3, top_k=16)
    cfg["compute"].update(accelerator="cpu", precision="32-true", workers=1, shards_per_run=8)
    cfg["evaluation"].update(preset="test", token_budget=2048)
    path.write_text(yaml.safe_dump(cfg))
    return path


def _raw_nulls() -> dict[str, int]:
    """Nulls per single-value column of the fixture, read straight from the files."""
    rows = pq.read_table(FIXTURE / SHARDS[1]).to_pylist()
    with open(FIXTURE / SHARDS[0], "rb") as f:
        rows += [json.loads(x) for x in zstandard.ZstdDecompressor().stream_reader(f).read().decode().splitlines()]
    assert len(rows) == 250
    out: dict[str, int] = {}
    for r in rows:
        for k, v in r.items():
            if v is None:
                out[k] = out.get(k, 0) + 1
    return out


def _scoring(name: str) -> bool:
    """A scoring asset: the RPv2 signals, DSIR, or a model score (score_<name>)."""
    return name in SCORING or (name.startswith("score_") and name != "score_stats")


def _times(instance, asset, partition=None) -> int:
    """How many times ``asset`` (one partition of it) was materialised in this instance."""
    f = dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset),
                              asset_partitions=[partition] if partition else None)
    return len(instance.fetch_materializations(f, limit=1000).records)


def test_released_layout_runs_to_the_curated_corpus_without_scoring(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    for name in SHARDS:
        shutil.copy(FIXTURE / name, raw / name)
    home = tmp_path / "home"
    settings = Settings(home=str(home), raw_uri=str(raw), config_path=str(_config(tmp_path / "c.yaml")))
    with dg.DagsterInstance.ephemeral() as instance:
        summary = run_pipeline(settings, "curated", instance=instance, echo=lambda m: None)
        assert not summary.failed and sorted(summary.new_shards) == sorted(SHARDS)
        manifest = json.load(open(home / "curated" / "_manifest.json"))
        assert manifest["pool_docs"] == 250 and sorted(manifest["per_shard"]) == sorted(SHARDS)
        assert 0 < manifest["docs"] < 250 and len(manifest["weights"]) == 25
        stats = json.load(open(home / "storage" / "score_stats.json"))
        names = yaml.safe_load((REPO / "configs" / "slimpajama-meta-rater.yaml").read_text())["precomputed"]["scores"]
        assert sorted(r["score"] for r in stats["scores"]) == sorted(names) and stats["docs"] == 250
        nulls = _raw_nulls()
        assert {r["score"]: (r["count"], r["nulls"]) for r in stats["scores"]} == {
            n: (250 - nulls.get(n, 0), nulls.get(n, 0)) for n in names}
        # the scores came from the shards: nothing was scored, nothing that scores was even defined
        for shard in SHARDS:
            assert _times(instance, "raw_docs", shard) == 1 and _times(instance, "precomputed_scores", shard) == 1
        assert [a for a in SCORING if _times(instance, a)] == []
        defined = {k.path[-1] for a in all_assets(load_config(settings.config_path)) for k in a.keys}
        assert "precomputed_scores" in defined and [k for k in defined if _scoring(k)] == []
        known = {k.path[-1] for k in instance.get_asset_keys()}
        assert {"raw_docs", "precomputed_scores", "shard_index", "score_stats", "curated_manifest"} <= known
        assert [k for k in known if _scoring(k)] == []
        assert [p.name for p in (home / "storage").iterdir() if _scoring(p.name.split(".")[0])] == []
        assert not {k for k, _ in summary.materialised} & set(SCORING)

        # a shard file replaced by a shorter one: that shard alone is read again
        t = pq.read_table(raw / "example_train_1.parquet")
        pq.write_table(t.slice(0, 60), raw / "example_train_1.parquet")
        again = run_pipeline(settings, "ingest", instance=instance, echo=lambda m: None)
        assert not again.failed and again.changed_shards == ["example_train_1.parquet"]
        for asset in ("raw_docs", "precomputed_scores"):
            assert _times(instance, asset, "example_train_1.parquet") == 2
            assert _times(instance, asset, "example_train_0.jsonl.zst") == 1
        files = ShardFiles(settings.storage_uri)
        assert pq.read_table(files.uri("precomputed_scores", "example_train_1.parquet")).num_rows == 60
        assert pq.read_table(files.uri("raw_docs", "example_train_1.parquet")).num_rows == 60


def test_computed_dsir_mixes_with_the_precomputed_scores(tmp_path):
    """raters: [dsir, precomputed] with the dsir_* entries dropped from the mapping: DSIR is computed
    against the bundled targets, the other 22 scores are read from the shards, and the proxies and
    the curated cut see all 25."""
    raw = tmp_path / "raw"
    raw.mkdir()
    for name in SHARDS:
        shutil.copy(FIXTURE / name, raw / name)
    cfg_path = _config(tmp_path / "c.yaml")
    cfg = yaml.safe_load(cfg_path.read_text())
    dsir = ("dsir_books", "dsir_wiki", "dsir_math")
    cfg["raters"] = ["dsir", "precomputed"]
    for n in dsir:
        del cfg["precomputed"]["scores"][n]
    cfg["dsir"] = {"buckets": 10000, "targets": {n: str(SAMPLE / "targets" / f"{n}.jsonl.gz") for n in ("books", "wiki", "math")}}
    cfg_path.write_text(yaml.safe_dump(cfg))
    home = tmp_path / "home"
    settings = Settings(home=str(home), raw_uri=str(raw), config_path=str(cfg_path))
    with dg.DagsterInstance.ephemeral() as instance:
        summary = run_pipeline(settings, "curated", instance=instance, echo=lambda m: None)
        assert not summary.failed
        for shard in SHARDS:
            assert _times(instance, "dsir_scores", shard) == 1 and _times(instance, "precomputed_scores", shard) == 1
        assert _times(instance, "rpv2_scores") == 0  # the rps_* signals are read, not computed
        files = ShardFiles(settings.storage_uri)
        pre = pq.read_table(files.uri("precomputed_scores", SHARDS[0]))
        assert not set(dsir) & set(pre.column_names) and "rps_doc_word_count" in pre.column_names
        ours = pq.read_table(files.uri("dsir_scores", SHARDS[0]))
        stats = json.load(open(home / "storage" / "score_stats.json"))
        assert len(stats["scores"]) == 25 and set(dsir) <= {r["score"] for r in stats["scores"]}
        assert set(dsir) <= set(ours.column_names) and ours.num_rows == 150
        assert len(json.load(open(home / "curated" / "_manifest.json"))["weights"]) == 25
