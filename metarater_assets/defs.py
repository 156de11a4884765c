"""Builds the one Definitions object from settings (environment by default)."""
from __future__ import annotations

import hashlib
import json

import dagster as dg

from . import curation, evaluation, ingest, prrc, proxies, regression, scoring
from .partitions import shards
from .sensors import make_shard_sensor
from resources import (ComputeResource, CuratedIOManager, CuratedManifestIOManager, JsonIOManager,
                       MetaraterConfig, ParquetIOManager, Settings)

#: Stages in order, each with the assets it materialises. ``metarater run --stage X`` runs all
#: stages up to and including X.
STAGES: dict[str, list[str]] = {
    "ingest": ["raw_docs", "raw_quarantine"],
    "scores": ["rpv2_scores", "dsir_counts", "dsir_model", "prrc_annotations", "prrc_rater", "dsir_scores",
               "model_scores", "score_stats"],
    "proxies": ["tokenizer", "doc_tokens", "validation_tokens", "pool_index", "proxy_plan", "proxy_run"],
    "regressor": ["regressor", "optimal_weights"],
    "curated": ["curated_selection", "curated_corpus", "curated_manifest"],
    "evaluation": ["evaluation"],
}
#: Assets partitioned by shard, recomputed per new shard by the sensor's job.
SHARD_ASSETS = ["raw_docs", "raw_quarantine", "rpv2_scores", "dsir_counts", "dsir_scores", "model_scores",
                "doc_tokens"]


def _automation() -> dict:
    """Declarative automation: what follows new data or a refit by itself. Per-shard scores and
    tokens, pool statistics, the pool index and the curated output are ``eager`` (updated after
    their inputs change). Ingest of a new file is requested by the shard sensor. The pool-level fits
    (DSIR raw distribution, PRRC labels and rater, tokenizer, proxies, regressor, evaluation) are
    never automated: they run on request (`metarater run --refit` / `--force`, or the UI)."""
    eager = dg.AutomationCondition.eager()
    # a shard whose ingest failed must not freeze pool statistics and curation for all the others
    pool = eager.without(~dg.AutomationCondition.any_deps_missing())
    # curated_corpus (per shard) follows curated_selection (pool) only: a new shard's raw_docs must
    # not trigger its curated file while the pool selection is still being recomputed in another
    # run (it would race it and fail its "selection matches the shard" check); once the selection
    # is updated, every shard's curated file is (the threshold moved)
    A = dg.AutomationCondition
    after_selection = (
        A.any_deps_updated().allow(dg.AssetSelection.assets("curated_selection")).since_last_handled()
        & ~A.any_deps_missing() & ~A.any_deps_in_progress() & ~A.in_progress()
    ).with_label("eager after curated_selection")
    return {**{k: eager for k in ("rpv2_scores", "dsir_counts", "dsir_scores", "model_scores", "doc_tokens",
                                  "curated_selection", "curated_manifest")},
            "score_stats": pool, "pool_index": pool, "curated_corpus": after_selection}


AUTOMATED = frozenset(_automation())


def _config_parts(c) -> dict:
    """The configuration each asset's output depends on (beyond its inputs and code)."""
    p, cur = c.proxies, c.curation
    curation = (cur["fraction"], cur["fraction_of"], cur.get("token_budget"), cur.get("weights_file"),
                _file_digest(cur.get("weights_file")))
    return {
        "dsir_counts": c.dsir.buckets,
        "model_scores": ({n: s.version for n, s in c.rater_specs().items()}, c.trained_scores),
        "prrc_annotations": (c.prrc.labels, _file_digest(c.prrc.labels), dict(c.prrc.annotate),
                             c.prrc.dims) if c.prrc else None,
        "prrc_rater": (dict(c.prrc.train), c.prrc.dims, c.prrc.shared_encoder) if c.prrc else None,
        "dsir_model": (c.dsir.buckets, dict(c.dsir.targets)),
        "tokenizer": (c.tokenizer_vocab_size, c.tokenizer_path, c.tokenizer_sample_docs),
        "validation_tokens": (dict(c.validation_sets), c.validation_max_docs),
        "pool_index": c.score_names,
        "proxy_plan": (c.score_names, p.n, p.seed, p.single_score_runs),
        # proxies are refit on request only (runner.ON_REQUEST), so everything that changes what
        # they learn or how they are measured is part of their own version
        "proxy_run": (p.fraction, p.fraction_of, p.kind, p.preset, p.token_budget,
                      dict(c.validation_sets), c.validation_max_docs,
                      (c.tokenizer_vocab_size, c.tokenizer_path, c.tokenizer_sample_docs)),
        "regressor": (c.regressor["folds"], c.validation_target),
        "optimal_weights": (c.regressor["candidates"], c.regressor["top_k"], c.regressor["bootstrap"]),
        "curated_selection": curation,
        "curated_corpus": cur["format"],
        "curated_manifest": (curation, cur["format"]),
        "evaluation": (dict(c.evaluation), cur["fraction"], cur["fraction_of"], c.validation_target),
    }


def _file_digest(uri: str | None) -> str | None:
    from .core import storage as st

    if not uri or not st.exists(uri):
        return None
    fs, path = st.fs_and_path(uri)
    return hashlib.sha1(fs.cat_file(path)).hexdigest()


def all_assets(config=None) -> list:
    """All assets; with a config, each code_version also carries a digest of the configuration
    that shapes that asset, so changing e.g. curation.fraction stales exactly the assets it
    affects (and, through data versions, what depends on them)."""
    conditions = _automation()

    def automated(spec):
        cond = conditions.get(spec.key.to_user_string())
        return spec.replace_attributes(automation_condition=cond) if cond is not None else spec

    assets = [a.map_asset_specs(automated) for a in _base_assets()]
    if config is None:
        return assets
    parts = _config_parts(config)

    def versioned(spec):
        part = parts.get(spec.key.to_user_string())
        if part is None:
            return spec
        digest = hashlib.sha1(json.dumps(part, sort_keys=True, default=str).encode()).hexdigest()[:8]
        return spec.replace_attributes(code_version=f"{spec.code_version}-cfg{digest}")

    return [a.map_asset_specs(versioned) for a in assets]


def load_config_or_none(settings: Settings):
    from .core.config import load_config

    try:
        return load_config(settings.config_path)
    except Exception:  # a broken config fails loudly, with its message, in the assets that read it
        return None


def _base_assets() -> list:
    return [ingest.raw_shard, scoring.rpv2_scores, scoring.dsir_counts, scoring.dsir_model,
            scoring.dsir_scores, prrc.prrc_annotations, prrc.prrc_rater, scoring.model_scores, scoring.score_stats, proxies.tokenizer, proxies.doc_tokens,
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
                                    artifacts_uri=settings.artifacts_uri, curated_uri=curated,
                                    storage_uri=settings.storage_uri),
        "compute": _compute(settings),
    }


def _compute(settings: Settings) -> ComputeResource:
    cfg = load_config_or_none(settings)
    c = dict(cfg.compute) if cfg else {}
    return ComputeResource(accelerator=str(c.get("accelerator") or "auto"),
                           devices=int(c.get("devices") or 1),
                           precision=str(c.get("precision") or "auto"),
                           threads=int(c.get("threads") or 0),
                           strategy=str(c.get("strategy") or "auto"))


def settings_curated_uri(settings: Settings) -> str:
    cfg = load_config_or_none(settings)
    out = cfg.curation.get("output_uri") if cfg else None
    return out or f"{settings.home.rstrip('/')}/curated"


shard_job = dg.define_asset_job(
    "shard_job", selection=dg.AssetSelection.assets(*SHARD_ASSETS), partitions_def=shards,
    description="Ingest and score one shard (what a new or changed file needs).")


def distributed_jobs() -> list:
    """``shard_job_celery``: the same per-shard work, each step sent to Celery workers (any
    machine that can import this project and reach the broker, the storage URI and the Dagster
    instance). Present when ``dagster-celery`` is installed (``pip install metarater[celery]``);
    see README "From the demo to a cluster"."""
    try:
        from dagster_celery import celery_executor
    except ImportError:
        return []
    return [dg.define_asset_job(
        "shard_job_celery", selection=dg.AssetSelection.assets(*SHARD_ASSETS), partitions_def=shards,
        executor_def=celery_executor,
        description="shard_job on Celery workers (broker / backend in the run config's execution.config).")]


def build_definitions(settings: Settings | None = None) -> dg.Definitions:
    settings = settings or Settings.from_env()
    sensor = make_shard_sensor(lambda: settings.raw_uri, shard_job)
    return dg.Definitions(assets=all_assets(load_config_or_none(settings)), resources=build_resources(settings),
                          jobs=[shard_job, *distributed_jobs()], sensors=[sensor])
