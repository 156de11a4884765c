"""A changed rater stales only its own partitions (and what depends on them)."""
import dagster as dg

from metarater_assets.core.config import load_config
from metarater_assets.defs import all_assets
from metarater_assets.runner import run_pipeline
from metarater_assets.staleness import Staleness
from resources import Settings
from conftest import write_config, write_small_shards


def test_bumping_one_rater_version_stales_only_that_rater(tmp_path):
    raw = write_small_shards(tmp_path / "raw", n=30)
    settings = Settings(home=str(tmp_path / "home"), raw_uri=str(raw),
                        config_path=str(write_config(tmp_path / "c.yaml")))
    with dg.instance_for_test() as instance:
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
