"""Builds the one Definitions object from settings (environment by default)."""
from __future__ import annotations

import dagster as dg

from . import curation, evaluation, ingest, proxies, regression, scoring
from .partitions import shards
from .sensors import make_shard_sensor
from resources import (ComputeResource, CuratedIOManager, CuratedManifestIOManager, JsonIOManager,
                       MetaraterConfig, ParquetIOManager, Settings)

#: Stages in order, each with the assets it materialises. ``metarater run --stage X`` runs all
#: stages up to and including X.
STAGES: dict[str, list[str]] = {
    "ingest": ["raw_docs", "raw_quarantine"],
    "scores": ["rpv2_scores", "dsir_counts", "dsir_model", "dsir_scores", "score_stats"],
    "proxies": ["tokenizer", "doc_tokens", "validation_tokens", "pool_index", "proxy_plan", "proxy_run"],
    "regressor": ["regressor", "optimal_weights"],
    "curated": ["curated_selection", "curated_corpus", "curated_manifest"],
    "evaluation": ["evaluation"],
}
#: Assets partitioned by shard, recomputed per new shard by the sensor's job.
SHARD_ASSETS = ["raw_docs", "raw_quarantine", "rpv2_scores", "dsir_counts", "dsir_scores", "doc_tokens"]


def all_assets() -> list:
    return [ingest.raw_shard, scoring.rpv2_scores, scoring.dsir_counts, scoring.dsir_model,
            scoring.dsir_scores, scoring.score_stats, proxies.tokenizer, proxies.doc_tokens,
            proxies.validation_tokens, proxies.pool_index, proxies.proxy_plan, proxies.proxy_run,
            regression.regressor, regression.optimal_weights, curation.curated_selection,
            curation.curated_corpus, curation.curated_manifest, evaluation.evaluation]


def build_resources(settings: Settings) -> dict:
    curated = settings_curated_uri(settings)
    return {
        "parquet_io_manager": ParquetIOManager(base_path=settings.storage_uri),
        "json_io_manager": JsonIOManager(base_path=settings.storage_uri),
        "curated_io_manager": CuratedIOManager(base_path=curated),
        "curated_io_manager_json": CuratedManifestIOManager(base_path=curated),
        "settings": MetaraterConfig(config_path=settings.config_path, raw_uri=settings.raw_uri,
                                    artifacts_uri=settings.artifacts_uri, curated_uri=curated),
        "compute": ComputeResource(),
    }


def settings_curated_uri(settings: Settings) -> str:
    from .core.config import load_config

    try:
        out = load_config(settings.config_path).curation.get("output_uri")
    except Exception:  # a broken config fails loudly in the assets that use it
        out = None
    return out or f"{settings.home.rstrip('/')}/curated"


shard_job = dg.define_asset_job(
    "shard_job", selection=dg.AssetSelection.assets(*SHARD_ASSETS), partitions_def=shards,
    description="Ingest and score one shard (what a new or changed file needs).")


def build_definitions(settings: Settings | None = None) -> dg.Definitions:
    settings = settings or Settings.from_env()
    sensor = make_shard_sensor(lambda: settings.raw_uri, shard_job)
    return dg.Definitions(assets=all_assets(), resources=build_resources(settings),
                          jobs=[shard_job], sensors=[sensor])
