"""A changed rater stales only its own partitions (and what depends on them)."""
import dagster as dg
import pyarrow.parquet as pq
import yaml

from metarater_assets.core.config import load_config
from metarater_assets.defs import all_assets
from metarater_assets.runner import run_pipeline
from metarater_assets.staleness import Staleness
from resources import Settings
from conftest import save_tiny_rater, write_config, write_small_shards


def test_bumping_one_rater_version_stales_only_that_rater(tmp_path):
    raw = write_small_shards(tmp_path / "raw", n=30)
    settings = Settings(home=str(tmp_path / "home"), raw_uri=str(raw),
                        config_path=str(write_config(tmp_path / "c.yaml")))
    with dg.DagsterInstance.ephemeral() as instance:
        assert not run_pipeline(settings, "scores", instance=instance, echo=lambda m: None).failed
        shards = sorted(instance.get_dynamic_partitions("shards"))
        assets = all_assets(load_config(settings.config_path))
        fresh = Staleness(instance, assets)
        assert all(fresh.needs_run(k, p) is None for p in shards
                   for k in ("raw_docs", "rpv2_scores", "dsir_counts", "dsir_scores"))

        def bump(spec):  # what editing SIGNALS_VERSION in core/signals.py does
            if spec.key.to_user_string() == "rpv2_scores":
                return spec.replace_attributes(code_version=spec.code_version + "-bumped")
            return spec

        bumped = Staleness(instance, [a.map_asset_specs(bump) for a in assets])
        for p in shards:
            assert bumped.needs_run("rpv2_scores", p) == "stale"
            assert "code" in " ".join(bumped.causes("rpv2_scores", p)).lower()
            for other in ("raw_docs", "dsir_counts", "dsir_scores"):
                assert bumped.needs_run(other, p) is None, other
        assert bumped.needs_run("dsir_model") is None


def test_two_model_raters_each_with_its_own_version(tmp_path):
    """Two tiny local models in the registry become two score assets; a new revision of one
    re-runs that score on every shard and what reads it, never the other model's score."""
    prof = save_tiny_rater(tmp_path, "tiny-prrc", 6, 0)
    edu = save_tiny_rater(tmp_path, "tiny-edu", 1, 1)
    registry = tmp_path / "raters.yaml"

    def write_registry(revision):
        registry.write_text(yaml.safe_dump({"scores": {
            "professionalism": {"model": prof, "revision": revision, "max_tokens": 64,
                                "head": {"kind": "expected", "values": [0, 1, 2, 3, 4, 5]}},
            "fineweb_edu": {"model": edu, "max_tokens": 64, "head": {"kind": "regression"}}}}))

    write_registry(None)
    raw = write_small_shards(tmp_path / "raw", n=20)
    cfg = write_config(tmp_path / "c.yaml", model_raters={"registry": str(registry),
                                                         "scores": ["professionalism", "fineweb_edu"]})
    settings = Settings(home=str(tmp_path / "home"), raw_uri=str(raw), config_path=str(cfg))
    with dg.DagsterInstance.ephemeral() as instance:
        assert not run_pipeline(settings, "pool", instance=instance, echo=lambda m: None).failed
        t = pq.read_table(tmp_path / "home" / "storage" / "score_professionalism" / "shard-0002.parquet.parquet")
        assert t.column_names == ["doc_id", "professionalism", "professionalism_class"] and t.num_rows == 20
        e = pq.read_table(tmp_path / "home" / "storage" / "score_fineweb_edu" / "shard-0002.parquet.parquet")
        assert e.column_names == ["doc_id", "fineweb_edu"]  # a regression head has no class
        index = pq.read_table(tmp_path / "home" / "storage" / "shard_index" / "shard-0002.parquet.parquet")
        assert {"professionalism", "fineweb_edu"} <= set(index.column_names)
        write_registry("v2")  # a new revision of the PRRC model only
        summary = run_pipeline(settings, "pool", instance=instance, echo=lambda m: None)
        ran = {k for k, p in summary.materialised}
        assert {p for k, p in summary.materialised if k == "score_professionalism"} == {"shard-0000.jsonl.gz",
                                                                                       "shard-0002.parquet"}
        assert "score_fineweb_edu" not in ran  # the other model is not run again
        assert ran == {"score_professionalism", "shard_index", "score_stats"}


def test_the_manifest_names_each_model_score_version(tmp_path):
    """The manifest's score_code_versions names every model score's model and revision (and the
    trained PRRC rater for a trained dimension): a new revision shows there, the others stay."""
    from metarater_assets.curation import score_code_versions
    from conftest import SAMPLE

    registry = tmp_path / "raters.yaml"

    def versions(revision, prrc_rater):
        registry.write_text(yaml.safe_dump({"scores": {
            "professionalism": {"model": "org/prof-rater", "revision": revision,
                                "head": {"kind": "expected", "values": [0, 1, 2, 3, 4, 5]}},
            "readability": {"model": "org/read-rater", "head": {"kind": "expected", "values": [0, 1, 2, 3, 4, 5]}},
            "fineweb_edu": {"model": "org/edu-rater", "head": {"kind": "regression"}}}}))
        path = write_config(tmp_path / "c.yaml",
                            model_raters={"registry": str(registry),
                                          "scores": ["professionalism", "readability", "fineweb_edu"]},
                            prrc={"labels": str(SAMPLE / "annotations" / "prrc.jsonl.gz"), "dims": ["readability"]})
        return score_code_versions(load_config(str(path)), prrc_rater)

    rater = {"method": "probe", "models": {"readability": {"uri": "/rater/readability-7", "offset": 3}}}
    v1 = versions("rev-one", rater)
    assert {"rpv2", "dsir", "selection", "proxy", "regression"} <= set(v1)
    models = v1["model_scores"]
    assert set(models) == {"professionalism", "readability", "fineweb_edu"}
    assert "org/prof-rater@rev-one" in models["professionalism"]
    assert "org/edu-rater@main" in models["fineweb_edu"]
    # readability is served by the trained rater, not the registry's hub model
    assert "org/read-rater" not in models["readability"]
    assert "trained PRRC probe" in models["readability"] and "/rater/readability-7" in models["readability"]
    v2 = versions("rev-two", rater)["model_scores"]
    assert "org/prof-rater@rev-two" in v2["professionalism"] and v2["professionalism"] != models["professionalism"]
    assert v2["fineweb_edu"] == models["fineweb_edu"] and v2["readability"] == models["readability"]
    retrained = versions("rev-two", {"method": "probe",
                                     "models": {"readability": {"uri": "/rater/readability-8", "offset": 0}}})
    assert retrained["model_scores"]["readability"] != v2["readability"]
