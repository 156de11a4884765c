"""Builds the one Definitions object from settings (environment by default).

The graph depends on the run configuration (which raters, which model scores, the batch size),
so a config that cannot be loaded fails here, loudly, naming the file and the field: the UI and
the daemon never run on silently-defaulted settings.
"""
from __future__ import annotations

import hashlib
import json
from collections import OrderedDict

import dagster as dg

from . import (batched, confirm, curation, evaluation, ingest, orientation, pool, prrc, proxies, regression, scoring,
               tokens)
from .partitions import confirm_runs, orientation_runs, shards
from .sensors import AUTOMATION_SENSOR, make_automation_sensor, make_batch_retry_sensor, make_shard_sensor
from resources import ComputeResource, JsonIOManager, MetaraterConfig, Settings

#: The stages, in order; ``metarater run --stage X`` runs every step up to X's assets.
STAGE_NAMES = ("ingest", "scores", "pool", "proxies", "regressor", "curated", "confirm", "evaluation")

#: Execution steps in dependency order: (assets, partitions: "shards" / "proxy_runs" / None). A
#: step's assets run together (one Dagster run per batch of shards, or one run).
STEPS: tuple[tuple[tuple[str, ...], str | None], ...] = (
    (("raw_docs", "raw_quarantine", "precomputed_scores", "rpv2_scores", "perplexity_scores", "dsir_counts"),
     "shards"),
    (("dsir_model", "prrc_annotations", "prrc_rater", "tokenizer"), None),
    (("dsir_scores", "@model_scores", "doc_tokens", "shard_index"), "shards"),
    (("score_stats", "validation_tokens"), None),
    (("orientation_plan",), None),
    (("orientation_data",), "orientation_runs"),
    (("orientation_run",), "orientation_runs"),
    (("score_orientation",), None),
    (("proxy_plan",), None),
    (("proxy_data",), "proxy_runs"),
    (("proxy_run",), "proxy_runs"),
    (("regressor", "optimal_weights"), None),
    (("curated_selection",), None),
    (("curated_corpus",), "shards"),
    (("curated_manifest",), None),
    (("confirm_plan",), None),
    (("confirm_data",), "confirm_runs"),
    (("confirm_run",), "confirm_runs"),
    (("tier_agreement",), None),
    (("evaluation",), None),
)

_STAGE_OF = {
    "raw_docs": "ingest", "raw_quarantine": "ingest", "precomputed_scores": "ingest",
    "rpv2_scores": "scores", "perplexity_scores": "scores", "dsir_counts": "scores", "dsir_model": "scores", "dsir_scores": "scores",
    "prrc_annotations": "scores", "prrc_rater": "scores", "@model_scores": "scores",
    "tokenizer": "pool", "doc_tokens": "pool", "shard_index": "pool", "score_stats": "pool",
    "validation_tokens": "pool", "orientation_plan": "proxies", "orientation_data": "proxies",
    "orientation_run": "proxies", "score_orientation": "proxies", "proxy_plan": "proxies", "proxy_data": "proxies",
    "proxy_run": "proxies",
    "regressor": "regressor", "optimal_weights": "regressor", "curated_selection": "curated",
    "curated_corpus": "curated", "curated_manifest": "curated", "confirm_plan": "confirm",
    "confirm_data": "confirm", "confirm_run": "confirm", "tier_agreement": "confirm", "evaluation": "evaluation",
}

#: Pool-level fits that new data alone does not redo: the DSIR raw distribution, the PRRC labels
#: and rater, the tokenizer and the proxies' data and runs of both tiers (and so the regressor). They
#: run when missing, when their own code or config changed, with --force ASSET, or all with --refit.
ON_REQUEST = frozenset({"dsir_model", "prrc_annotations", "prrc_rater", "tokenizer", "proxy_data", "proxy_run",
                        "confirm_data", "confirm_run", "orientation_data", "orientation_run"})


def stage_of(asset: str) -> str:
    return "scores" if asset.startswith("score_") else _STAGE_OF[asset]


def steps_for(cfg, stage: str) -> list[tuple[list[str], str | None]]:
    """The steps (with the config's actual asset keys) that ``--stage stage`` runs."""
    if stage not in STAGE_NAMES:
        raise ValueError(f"unknown stage {stage!r}; stages: {', '.join(STAGE_NAMES)}")
    upto = STAGE_NAMES.index(stage)
    present = {k.to_user_string() for a in all_assets(cfg) for k in a.keys}
    out = []
    for keys, part in STEPS:
        chosen = []
        for k in keys:
            if STAGE_NAMES.index(_STAGE_OF[k]) > upto:
                continue
            if k == "@model_scores":
                chosen += [scoring.score_asset(n) for n in cfg.model_scores]
            elif k in present:
                chosen.append(k)
        if chosen:
            out.append((chosen, part))
    return out


def stage_assets(cfg) -> dict[str, list[str]]:
    """{stage: its assets} for this config."""
    out: dict[str, list[str]] = {s: [] for s in STAGE_NAMES}
    for a in all_assets(cfg):
        for k in a.keys:
            out[stage_of(k.to_user_string())].append(k.to_user_string())
    return out


def shard_assets(cfg) -> list[str]:
    """The per-shard chain a new or changed file needs (ingest through the shard index)."""
    keys = []
    for step, part in STEPS[:3]:
        if part != "shards":
            continue
        for k in step:
            keys += [scoring.score_asset(n) for n in cfg.model_scores] if k == "@model_scores" else [k]
    present = {k.to_user_string() for a in all_assets(cfg) for k in a.keys}
    return [k for k in keys if k in present]


def _automation(cfg) -> dict:
    """Declarative automation: what follows new data or a refit by itself. A new file's per-shard
    chain is the shard sensor's shard_job; per-shard scores, tokens and the shard index follow a
    pool-level refit (DSIR model, tokenizer, PRRC rater) into every shard; the pool statistics, the
    curated selection, the curated shards and the manifest follow the pool. The
    pool-level fits (DSIR raw distribution, PRRC labels and rater, tokenizer, proxies, regressor,
    evaluation) are never automated: they run on request (`metarater run --refit` / `--force`, or
    the UI). ``eager`` waits while any input is in progress, so a burst of new shards (batched
    runs of the sensor's job) refreshes the pool once the burst's runs are done, not per shard."""
    A = dg.AutomationCondition
    eager = A.eager()
    # a shard whose ingest failed must not freeze pool statistics and curation for all the others
    pool_ = eager.without(~A.any_deps_missing())
    # curated_corpus (per shard) follows curated_selection (pool) only: a new shard's files must
    # not trigger its curated file while the pool selection is still being recomputed in another run
    after_selection = (
        A.any_deps_updated().allow(dg.AssetSelection.assets("curated_selection")).since_last_handled()
        & ~A.any_deps_missing() & ~A.any_deps_in_progress() & ~A.in_progress()
    ).with_label("eager after curated_selection")
    # the manifest follows the curated shards (not the selection they are cut from, which would
    # race them): once they are written and none is in progress
    after_corpus = (
        A.any_deps_updated().allow(dg.AssetSelection.assets("curated_corpus")).since_last_handled()
        & ~A.any_deps_in_progress() & ~A.in_progress()
    ).with_label("after the curated shards")

    def after(*ups: str, label: str) -> dg.AutomationCondition:
        """Run once these upstreams are updated (and none is in progress)."""
        return (A.any_deps_updated().allow(dg.AssetSelection.assets(*ups)).since_last_handled()
                & ~A.any_deps_missing() & ~A.any_deps_in_progress() & ~A.in_progress()).with_label(label)

    # per-shard assets: the sensor's shard_job computes a new shard's whole chain; automation
    # follows a pool-level refit (a new DSIR model, tokenizer or PRRC rater) into every shard
    models = [scoring.score_asset(n) for n in (cfg.model_scores if cfg else ())]
    per_shard = {"dsir_scores": after("dsir_model", label="after a DSIR refit"),
                 "doc_tokens": after("tokenizer", label="after a new tokenizer"),
                 **{m: after("prrc_rater", label="after a PRRC refit") for m in models},
                 "shard_index": after("dsir_scores", "doc_tokens", *models, label="after its scores or tokens")}
    return {**per_shard, "curated_selection": pool_, "curated_manifest": after_corpus,
            "score_stats": pool_, "curated_corpus": after_selection}


def automated(defs: dg.Definitions) -> set[str]:
    """The assets that carry an automation condition in these definitions."""
    return {k.to_user_string() for a in defs.assets for k, spec in ((s.key, s) for s in a.specs)
            if spec.automation_condition is not None}


def perplexity_part(c) -> tuple:
    """What the perplexity rater's model is made of: its reference files by content, the buckets and
    the discount (``perplexity_scores``' config part, and ``metarater score``'s model key)."""
    return ([_file_digest(u) or u for u in c.perplexity.targets], c.perplexity.buckets, c.perplexity.discount)


def _config_parts(c) -> dict:
    """The configuration each asset's output depends on (beyond its inputs and code).

    A field that names a file whose content shapes an output (validation sets, DSIR targets, a
    local tokenizer, PRRC labels, a weights file) enters by its content digest and not by its
    path: editing the file in place stales what reads it, moving or renaming an identical copy
    stales nothing. Only a name with nothing behind it (a hub id for the tokenizer) enters as
    written. The tokenizer keeps its path beside its digest: its output names the folder that the
    tokens are read with. Digests stream the files (``_file_digest``) on every Definitions build."""

    def content(uri):  # a file's (or folder's) content digest; a name with no file behind it as is
        return _file_digest(uri) or uri

    p, cur = c.proxies, c.curation
    curation_ = (cur["fraction"], cur["fraction_of"], cur.get("token_budget"), content(cur.get("weights_file")),
                 *(() if cur.get("weights", "optimal") == "optimal" else (cur["weights"],)))
    # what a weight vector selects and how its proxy is trained: the orientation flips scores in the
    # normalisation, so every vector's selection moves with it
    model_cfg = (p.fraction, p.fraction_of, p.kind, p.preset, p.token_budget, p.seed, sorted(c.orientations.items()))
    sets = {name: content(uri) for name, uri in c.validation_sets.items()}
    tokenizer_ = (c.tokenizer_vocab_size, c.tokenizer_path, _file_digest(c.tokenizer_path), c.tokenizer_sample_docs)
    # what a proxy's loss is measured on (both tiers)
    measured = (sets, c.validation_max_docs, c.validation_held_out, c.validation_target, tokenizer_)
    # where the curated shards and their manifest are published (absent: the default under the home)
    published = (cur["format"], cur["output_uri"]) if cur.get("output_uri") else cur["format"]
    return {
        # the field mapping enters only when it is not the default (a default config keeps its identities)
        "raw_docs": [(s.score, s.column, s.reduce, s.index, s.length) for s in c.precomputed]
        + ([] if c.fields is None or c.fields.default else [("fields", c.fields.text, c.fields.id, c.fields.meta)]),
        "dsir_counts": c.dsir.buckets,
        "perplexity_scores": perplexity_part(c) if "perplexity" in c.raters else None,
        "prrc_annotations": (content(c.prrc.labels), dict(c.prrc.annotate), c.prrc.dims) if c.prrc else None,
        "prrc_rater": (dict(c.prrc.train), c.prrc.dims, c.prrc.shared_encoder, c.prrc.method) if c.prrc else None,
        "dsir_model": (c.dsir.buckets, {name: content(uri) for name, uri in c.dsir.targets.items()}),
        "tokenizer": tokenizer_,
        "validation_tokens": (sets, c.validation_max_docs, c.validation_held_out),
        "score_stats": (c.score_names, c.stats_sample_docs, sorted(c.orientations.items())),
        "proxy_plan": (c.score_names, p.n, p.seed, p.single_score_runs),
        "orientation_plan": (c.score_names, c.auto_oriented, p.seed),
        "orientation_data": model_cfg,
        "orientation_run": (model_cfg, *measured),
        "score_orientation": c.validation_target,
        # proxies are refit on request only (ON_REQUEST), so everything that changes what they
        # learn or how they are measured is part of their own version
        "proxy_data": model_cfg,
        "proxy_run": (model_cfg, *measured),
        "confirm_plan": (c.confirm.spread, c.confirm.single_score_runs, c.confirm.optimum) if c.confirm else None,
        "confirm_data": (model_cfg, c.confirm.preset, c.confirm.token_budget) if c.confirm else None,
        "confirm_run": ((c.confirm.kind, c.confirm.preset, c.confirm.token_budget), *measured) if c.confirm else None,
        "tier_agreement": c.validation_target if c.confirm else None,
        "regressor": (c.regressor["folds"], c.regressor["holdout"], list(c.regressor["models"]),
                      c.regressor.get("seed"), c.validation_target),
        "optimal_weights": (c.regressor["candidates"], c.regressor["top_k"], c.regressor["bootstrap"]),
        "curated_selection": curation_,
        "curated_corpus": published,
        "curated_manifest": (curation_, published),
        "evaluation": (dict(c.evaluation), curation_, c.validation_target, dict(c.validation_roles)),
    }


def _file_digest(uri: str | None) -> str | None:
    """sha1 of a file's bytes, or of a folder's files (relative name and bytes of each, sorted by
    name; model weights, which no tokenizer reads, left out); None where nothing is at ``uri``
    (no file configured, or a hub id). Streamed in 1 MiB chunks through fsspec, never loaded whole."""
    from .core import storage as st

    if not uri or not st.exists(uri):
        return None
    weights = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".onnx", ".gguf", ".npz")
    fs, path = st.fs_and_path(uri)
    h = hashlib.sha1()

    def feed(p: str) -> None:
        with fs.open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)

    if not fs.isdir(path):
        feed(path)
        return h.hexdigest()
    root = path.rstrip("/")
    files = sorted(f for f in fs.find(root) if not f.lower().endswith(weights))
    for f in files:
        rel = f[len(root):].lstrip("/")
        h.update(f"{len(rel)}:{rel}:{fs.size(f)}:".encode("utf-8", "surrogatepass"))
        feed(f)
    return "dir-" + h.hexdigest()


def _base_assets(cfg) -> list:
    policy = batched.policy(cfg.compute["shards_per_run"] if cfg else 64)
    out = [ingest.make_ingest(cfg, policy)]
    raters = cfg.raters if cfg else ("rpv2", "dsir")
    if "rpv2" in raters:
        out.append(scoring.make_rpv2(policy))
    if "dsir" in raters:
        out += [scoring.make_dsir_counts(cfg, policy), scoring.dsir_model, scoring.make_dsir_scores(policy)]
    if "perplexity" in raters:
        out.append(scoring.make_perplexity_scores(policy))
    out += [prrc.prrc_annotations, prrc.prrc_rater]
    ms = scoring.make_model_scores(cfg, policy)
    if ms is not None:
        out.append(ms)
    out += [tokens.tokenizer, tokens.make_doc_tokens(policy), tokens.validation_tokens,
            pool.make_shard_index(cfg, policy), pool.score_stats,
            proxies.proxy_plan, proxies.make_proxy_data(cfg), proxies.make_proxy_run(cfg),
            regression.regressor, regression.optimal_weights,
            curation.make_curated_selection(cfg), curation.make_curated_corpus(policy), curation.curated_manifest,
            evaluation.make_evaluation(cfg)]
    if cfg is not None and cfg.auto_oriented:  # scores.orientation auto: two single-score runs decide each
        out += [orientation.orientation_plan,
                proxies.make_proxy_data(cfg, name="orientation_data", partitions=orientation_runs,
                                        plan="orientation_plan", orientation_runs=True),
                proxies.make_proxy_run(cfg, name="orientation_run", partitions=orientation_runs,
                                       data="orientation_data"),
                orientation.score_orientation]
    if cfg is not None and cfg.confirm is not None:  # tier 2: transformer proxies confirm tier 1
        out += [confirm.confirm_plan,
                proxies.make_proxy_data(cfg, name="confirm_data", partitions=confirm_runs, plan="confirm_plan",
                                        section="confirm"),
                proxies.make_proxy_run(cfg, name="confirm_run", partitions=confirm_runs, data="confirm_data",
                                       section="confirm"),
                confirm.tier_agreement]
    return out


#: the last few asset graphs built, by the config's full value and the digests of the files it
#: names: a run asks for the graph at every step (each step's tracer), and building it costs ~0.1 s
_GRAPHS: OrderedDict = OrderedDict()


def all_assets(config) -> list:
    """All assets; each code_version also carries a digest of the configuration that shapes that
    asset, so changing e.g. curation.fraction stales exactly the assets it affects (and, through
    data versions, what depends on them)."""
    parts = _config_parts(config) if config is not None else {}
    key = (repr(config), json.dumps(parts, sort_keys=True, default=str))
    if key in _GRAPHS:
        _GRAPHS.move_to_end(key)
        return list(_GRAPHS[key])
    conditions = _automation(config)

    def spec_fn(spec):
        key = spec.key.to_user_string()
        attrs = {}
        if key in conditions:
            attrs["automation_condition"] = conditions[key]
        part = parts.get("raw_docs" if key in ("raw_quarantine", "precomputed_scores") else key)
        if part:
            digest = hashlib.sha1(json.dumps(part, sort_keys=True, default=str).encode()).hexdigest()[:8]
            attrs["code_version"] = f"{spec.code_version}-cfg{digest}"
        return spec.replace_attributes(**attrs) if attrs else spec

    graph = [a.map_asset_specs(spec_fn) for a in _base_assets(config)]
    _GRAPHS[key] = graph
    while len(_GRAPHS) > 4:
        _GRAPHS.popitem(last=False)
    return list(graph)


def build_resources(settings: Settings, cfg) -> dict:
    curated = settings_curated_uri(settings, cfg)
    c = dict(cfg.compute)
    return {
        "json_io_manager": JsonIOManager(base_path=settings.storage_uri),
        "settings": MetaraterConfig(config_path=settings.config_path, raw_uri=settings.raw_uri,
                                    artifacts_uri=settings.artifacts_uri, curated_uri=curated,
                                    storage_uri=settings.storage_uri),
        "compute": ComputeResource(accelerator=str(c.get("accelerator") or "auto"), devices=int(c.get("devices") or 1),
                                   precision=str(c.get("precision") or "auto"), threads=int(c.get("threads") or 0),
                                   strategy=str(c.get("strategy") or "auto")),
    }


def settings_curated_uri(settings: Settings, cfg) -> str:
    return cfg.curation.get("output_uri") or f"{settings.home.rstrip('/')}/curated"


def load(settings: Settings):
    from .core.config import load_config

    return load_config(settings.config_path)


def jobs(cfg) -> list:
    sel = dg.AssetSelection.assets(*shard_assets(cfg))
    return [dg.define_asset_job("shard_job", selection=sel, partitions_def=shards,
                                description="Ingest, score, tokenise and index shards (what a new or changed "
                                            "file needs); runs over a batch of shards at once.")]


def build_definitions(settings: Settings | None = None) -> dg.Definitions:
    settings = settings or Settings.from_env()
    cfg = load(settings)  # a broken config fails here, naming the file and the field
    js = jobs(cfg)
    shard_job = js[0]
    sensors = [make_shard_sensor(lambda: settings.raw_uri, shard_job, int(cfg.compute["shards_per_run"]),
                                 pack_bytes=cfg.pack_bytes, pack_max_files=cfg.pack_max_files),
               make_automation_sensor(), make_batch_retry_sensor(shard_job, shard_assets(cfg))]
    # runs execute their steps in one process: a run is already a batch of shards, and the
    # parallelism comes from several runs at once (backfill batches, the run queue, `metarater run`'s
    # workers); a process per step would re-import the project for every step of every run
    return dg.Definitions(assets=all_assets(cfg), resources=build_resources(settings, cfg), jobs=js,
                          sensors=sensors, executor=dg.in_process_executor)


__all__ = ["AUTOMATION_SENSOR", "ON_REQUEST", "STAGE_NAMES", "STEPS", "all_assets", "build_definitions",
           "build_resources", "shard_assets", "stage_assets", "steps_for"]
