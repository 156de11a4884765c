"""Stage 'scores': per-shard RedPajama-V2 signals, DSIR importance and model-rater scores.

Each per-shard asset reads one shard's documents at a time (``raw_docs`` file, text column) and
writes one score file per shard (``storage/<asset>/<shard>.parquet``: doc_id + score columns, in
the shard's document order). Each model score is an asset of its own (``score_<name>``) with its
own code version (model, revision, head), so a changed rater stales exactly that score.
"""

import hashlib
import time
from collections import OrderedDict

import numpy as np
import pyarrow as pa

import dagster as dg

from . import identity
from .batched import combine_checks, for_each_shard
from .core import dsir, perplexity, rater_training, raters, signals, stats, storage as st
from .partitions import shards
from resources import ComputeResource, MetaraterConfig

SCORE_GROUP = "scores"


def score_schema(names, ints=frozenset()) -> pa.Schema:
    """doc_id + one column per score (int64 for ``ints``, float64 otherwise), in ``names`` order."""
    return pa.schema([("doc_id", pa.string()), *((n, pa.int64() if n in ints else pa.float64()) for n in names)])


def score_table(doc_ids, cols: dict[str, list], ints=frozenset(), names=None) -> pa.Table:
    names = list(names if names is not None else cols)
    def arr(v, typ):
        return v.cast(typ) if isinstance(v, pa.Array) else pa.array(v, typ)

    arrays = [arr(doc_ids, pa.string())] + [arr(cols[n], pa.int64() if n in ints else pa.float64()) for n in names]
    return pa.Table.from_arrays(arrays, schema=score_schema(names, ints))


class ScoreCheck:
    """The ``scores_complete`` check of one shard, accumulated batch by batch."""

    def __init__(self, asset: str, names, nullable):
        self.asset, self.names, self.nullable = asset, list(names), nullable
        self.docs = 0
        self.problems: dict[str, int] = {}

    def add(self, doc_ids, table: pa.Table) -> None:
        cols = {n: table.column(n) for n in self.names}
        found = stats.score_table_problems(doc_ids, table.column("doc_id"), cols, self.nullable)
        for k, v in found.items():
            self.problems[k] = self.problems.get(k, 0) + int(v)
        self.docs += len(doc_ids)

    def result(self) -> dg.AssetCheckResult:
        return dg.AssetCheckResult(asset_key=self.asset, check_name="scores_complete", passed=not self.problems,
                                   metadata={"docs": self.docs, **{k: str(v) for k, v in self.problems.items()}})


def check_spec(asset: str) -> dg.AssetCheckSpec:
    return dg.AssetCheckSpec("scores_complete", asset=asset, blocking=True,
                             description="every ingested document scored; no NaN/inf; nulls only "
                                         "where the score's definition allows them")


def _batches(tracer: identity.Tracer, settings: MetaraterConfig, key: str):
    """One shard's documents as (doc ids, texts) batches of ``SHARD_BATCH_ROWS`` (Arrow arrays: the
    compiled kernels read their buffers): a step holds one."""
    for t in tracer.batches(settings.files, "raw_docs", key, ["doc_id", "text"]):
        yield t.column("doc_id").combine_chunks(), t.column("text").combine_chunks()


def scored(context, tracer: identity.Tracer, settings: MetaraterConfig, asset: str, key: str, ident: str,
           schema: pa.Schema, batches, check: ScoreCheck | None = None) -> int:
    """Stream one shard's score tables (``batches``: (doc ids, table) pairs) into its score file,
    with its identity in the footer (atomic: the file appears complete or not at all), then record
    it. Returns the documents written."""
    with settings.files.stream(asset, key, schema.with_metadata(identity.footer(ident))) as out:
        for ids, table in batches:
            if check is not None:
                check.add(ids, table)
            out.write(table)
    context.log_event(tracer.observation(asset, key, ident, ok=check is None or not check.problems))
    return out.rows


def make_rpv2(policy):
    @dg.asset(partitions_def=shards, group_name=SCORE_GROUP, deps=["raw_docs"], backfill_policy=policy,
              code_version=f"rpv2-{signals.SIGNALS_VERSION}", check_specs=[check_spec("rpv2_scores")],
              description="The 11 RedPajama-V2 natural-language signals per document of one shard.")
    def rpv2_scores(context: dg.AssetExecutionContext, settings: MetaraterConfig):
        tracer = identity.for_run(context, settings)

        names, ints = list(signals.SIGNAL_NAMES), signals.INTEGER_SIGNALS

        def one(key):
            ident = tracer.identity("rpv2_scores", key)
            check = ScoreCheck("rpv2_scores", names, signals.NULLABLE)
            n = scored(context, tracer, settings, "rpv2_scores", key, ident, score_schema(names, ints),
                       ((ids, score_table(ids, signals.compute_signals(texts), ints, names))
                        for ids, texts in _batches(tracer, settings, key)), check)
            return n, check.result()

        done = for_each_shard(context, one)
        yield dg.MaterializeResult(metadata={"docs": sum(n for n, _ in done.values()), "shards": len(done)})
        yield combine_checks({k: c for k, (_, c) in done.items()})

    return rpv2_scores


def make_dsir_counts(cfg, policy):
    buckets = cfg.dsir.buckets if cfg else dsir.DEFAULT_BUCKETS

    @dg.asset(partitions_def=shards, group_name=SCORE_GROUP, deps=["raw_docs"], backfill_policy=policy,
              code_version=f"dsir-counts-{dsir.DSIR_VERSION}",
              description="Hashed unigram+bigram feature counts of one shard (summed into the pool "
                          "distribution, so a new shard never re-reads the others).")
    def dsir_counts(context: dg.AssetExecutionContext, settings: MetaraterConfig):
        tracer = identity.for_run(context, settings)

        def one(key):
            ident = tracer.identity("dsir_counts", key)
            counts, docs = np.zeros(buckets, dtype=np.int64), 0
            for _, texts in _batches(tracer, settings, key):  # counts add up: one batch in memory
                counts += dsir.count_buckets(texts, buckets)
                docs += len(texts)
            settings.files.write("dsir_counts", key, pa.table({"count": counts}), metadata=identity.footer(ident))
            context.log_event(tracer.observation("dsir_counts", key, ident))
            return docs

        done = for_each_shard(context, one)
        return dg.MaterializeResult(metadata={"docs": sum(done.values()), "shards": len(done)})

    return dsir_counts


def dsir_model_uri(storage_uri: str) -> str:
    return f"{storage_uri.rstrip('/')}/dsir_model.parquet"


@dg.asset(group_name=SCORE_GROUP, code_version=f"dsir-model-{dsir.DSIR_VERSION}",
          deps=[dg.AssetDep("dsir_counts", partition_mapping=dg.AllPartitionMapping())],
          description="DSIR log-ratio weights per bucket: log p_target - log p_raw for each target "
                      "(books, wiki, math); p_raw from the pool's shard counts, summed as they are "
                      "streamed (one shard's counts in memory). Refit on request, not on every new "
                      "shard (see README).")
def dsir_model(context: dg.AssetExecutionContext, settings: MetaraterConfig) -> dg.MaterializeResult:
    from .core import corpus

    cfg = settings.load()
    tracer = identity.for_run(context, settings, cfg)
    ident = tracer.identity("dsir_model")  # every active shard's counts, current
    keys = tracer.active("shards")
    if not keys:
        raise dg.Failure("no shard has dsir_counts yet: materialise the per-shard scores first", allow_retries=False)
    raw = np.zeros(cfg.dsir.buckets, dtype=np.int64)
    for k in keys:
        c = tracer.read(settings.files, "dsir_counts", k).column("count").to_numpy()
        if len(c) != len(raw):
            raise dg.Failure(f"dsir_counts[{k}] has {len(c)} buckets, the config {len(raw)}: re-materialise it")
        raw += c
    targets = {}
    for name, uri in cfg.dsir.targets.items():
        docs = corpus.read_documents(uri)
        targets[name] = dsir.count_buckets(docs.column("text"), cfg.dsir.buckets)
        context.log.info(f"target {name}: {docs.num_rows} docs, {int(targets[name].sum())} features")
    model = dsir.DsirModel.fit(raw, targets)
    table = pa.table({f"dsir_{n}": pa.array(w) for n, w in model.weights.items()})
    st.write_parquet(table.replace_schema_metadata(identity.footer(ident)), dsir_model_uri(settings.storage_uri))
    return identity.result(tracer, "dsir_model", ident, {"pool_shards": len(keys), "pool_features": int(raw.sum()),
                                                         "targets": ", ".join(targets)})


def load_dsir_model(storage_uri: str, tracer: identity.Tracer | None = None) -> dsir.DsirModel:
    table = st.read_parquet(dsir_model_uri(storage_uri))
    if tracer is not None:
        found = (table.schema.metadata or {}).get(identity.FOOTER)
        tracer.check_file("dsir_model", None, found.decode() if found else None, dsir_model_uri(storage_uri))
    weights = {n.removeprefix("dsir_"): np.asarray(table.column(n)) for n in table.column_names}
    return dsir.DsirModel(buckets=table.num_rows, weights=weights)


def make_dsir_scores(policy):
    names = [f"dsir_{n}" for n in ("books", "wiki", "math")]

    @dg.asset(partitions_def=shards, group_name=SCORE_GROUP, deps=["raw_docs", "dsir_model"], backfill_policy=policy,
              code_version=f"dsir-{dsir.DSIR_VERSION}", check_specs=[check_spec("dsir_scores")],
              description="DSIR importance per document: dsir_books, dsir_wiki, dsir_math.")
    def dsir_scores(context: dg.AssetExecutionContext, settings: MetaraterConfig):
        tracer = identity.for_run(context, settings)
        model = load_dsir_model(settings.storage_uri, tracer)

        def one(key):
            ident = tracer.identity("dsir_scores", key)
            check = ScoreCheck("dsir_scores", names, frozenset())
            n = scored(context, tracer, settings, "dsir_scores", key, ident, score_schema(names),
                       ((ids, score_table(ids, {f"dsir_{k}": v for k, v in model.score(texts).items()}, names=names))
                        for ids, texts in _batches(tracer, settings, key)), check)
            return n, check.result()

        done = for_each_shard(context, one)
        yield dg.MaterializeResult(metadata={"docs": sum(n for n, _ in done.values()), "shards": len(done)})
        yield combine_checks({k: c for k, (_, c) in done.items()})

    return dsir_scores


def perplexity_model(cfg, key: str) -> perplexity.BigramModel:
    """The perplexity rater's bigram model of ``cfg.perplexity.targets`` (one file at a time in
    memory), fitted once per process for ``key`` (the asset's code version, which carries the
    targets' content digests and the settings)."""
    from .core import corpus

    pc = cfg.perplexity
    return perplexity.fitted(key, lambda: perplexity.BigramModel.fit(
        (corpus.read_documents(u).column("text") for u in pc.targets), pc.buckets, pc.discount))


def make_perplexity_scores(policy):
    names = [perplexity.SCORE]

    @dg.asset(partitions_def=shards, group_name=SCORE_GROUP, deps=["raw_docs"], backfill_policy=policy,
              code_version=f"perplexity-{perplexity.PERPLEXITY_VERSION}", check_specs=[check_spec("perplexity_scores")],
              description="Fluency per document: its mean negative log-likelihood per word (nats, lower is "
                          "better) under a bigram model of the clean reference text in perplexity.targets "
                          "(CCNet-style perplexity; see docs/method.md).")
    def perplexity_scores(context: dg.AssetExecutionContext, settings: MetaraterConfig):
        cfg = settings.load()
        tracer = identity.for_run(context, settings, cfg)
        t0 = time.perf_counter()
        model = perplexity_model(cfg, context.assets_def.code_versions_by_key[context.asset_key])
        fit_s = time.perf_counter() - t0

        def one(key):
            ident = tracer.identity("perplexity_scores", key)
            check = ScoreCheck("perplexity_scores", names, frozenset(names))
            n = scored(context, tracer, settings, "perplexity_scores", key, ident, score_schema(names),
                       ((ids, score_table(ids, {perplexity.SCORE: pa.array(model.score(texts), from_pandas=True)}))
                        for ids, texts in _batches(tracer, settings, key)), check)
            return n, check.result()

        done = for_each_shard(context, one)
        yield dg.MaterializeResult(metadata={"docs": sum(n for n, _ in done.values()), "shards": len(done),
                                             "reference_tokens": model.tokens, "model_seconds": round(fit_s, 2)})
        yield combine_checks({k: c for k, (_, c) in done.items()})

    return perplexity_scores


def score_asset(name: str) -> str:
    """The asset key of a model score: one asset per score."""
    return f"score_{name}"


#: models this process holds, most recent last: a process that runs batch after batch (a local
#: worker process, a Ray actor) loads each model once. Keyed by everything that loads it; a trained
#: rater's folder is named by its identity, so a key never stands for two models.
_HELD: "OrderedDict[tuple, object]" = OrderedDict()
HELD_MODELS = 2


def held_rater(spec: raters.RaterSpec, device: str, dtype: str | None) -> tuple[object, bool]:
    """(the rater for ``spec``, whether it was loaded now)."""
    key = (spec.model, spec.revision, spec.max_tokens, spec.trust_remote_code, spec.batch_size, device, dtype)
    if key in _HELD:
        _HELD.move_to_end(key)
        return _HELD[key], False
    rater = raters.load_rater(spec, device=device, dtype=dtype)
    _HELD[key] = rater
    while len(_HELD) > HELD_MODELS:
        _HELD.popitem(last=False)
    return rater, True


def make_model_scores(cfg, policy):
    """One asset per active model score (``score_<name>``), built in one subsettable multi-asset:
    scores that share a model cost one forward pass when they run together, and each carries its
    own code version (model id, revision, head), so a new revision stales only its scores."""
    if cfg is None or not cfg.model_scores:
        return None
    specs = cfg.rater_specs()
    trained = set(cfg.trained_scores)
    outs = {}
    for n in cfg.model_scores:
        if n in trained:  # the model comes from prrc_rater (its data version); the head is fixed
            version = f"model-{raters.RATERS_VERSION}-trained-{rater_training.RATER_TRAINING_VERSION}"
        else:
            version = f"model-{raters.RATERS_VERSION}-{hashlib.sha1(specs[n].version.encode()).hexdigest()[:10]}"
        outs[n] = dg.AssetOut(key=score_asset(n), code_version=version, group_name=SCORE_GROUP,
                              is_required=False,
                              description=f"Model-rater score {n} per document of one shard (doc_id, {n}, "
                                          f"{n}_class for classifier heads).")
    ins = {"prrc_rater": dg.AssetIn("prrc_rater")} if trained else {}

    @dg.multi_asset(name="model_scores", outs=outs, ins=ins, deps=["raw_docs"], partitions_def=shards,
                    can_subset=True, backfill_policy=policy, pool="metarater_gpu",
                    check_specs=[check_spec(score_asset(n)) for n in cfg.model_scores])
    def model_scores(context: dg.AssetExecutionContext, settings: MetaraterConfig, compute: ComputeResource,
                     **inputs):
        cfg_ = settings.load()
        selected = [n for n in cfg_.model_scores if dg.AssetKey(score_asset(n)) in context.selected_asset_keys]
        all_specs = cfg_.rater_specs()
        if set(selected) & set(cfg_.trained_scores):
            prrc = inputs.get("prrc_rater") or {}
            if not prrc.get("enabled"):
                raise dg.Failure("the PRRC rater is not trained yet: materialise prrc_rater first", allow_retries=False)
            all_specs.update(rater_training.specs_for(prrc["models"], max_tokens=int(prrc.get("max_tokens", 512))))
        specs = {n: all_specs[n] for n in selected}
        with compute.claim() as comp:
            dtype = "bf16" if comp.precision.startswith("bf16") else None
            loaded, loads = [], 0
            try:
                for group in raters.group_by_model(specs):
                    rater, new = held_rater(group[0], comp.torch_device, dtype)
                    loaded.append((group, rater))
                    loads += new
            except raters.RaterLoadError as e:
                raise dg.Failure(str(e), allow_retries=False) from e

            tracer = identity.for_run(context, settings, cfg_)
            if inputs.get("prrc_rater") is not None:
                tracer.check_json("prrc_rater", inputs["prrc_rater"])

            def one(key):
                from contextlib import ExitStack

                idents = {s.score: tracer.identity(score_asset(s.score), key) for s in specs.values()}
                checks = {s.score: ScoreCheck(score_asset(s.score), [s.score], frozenset()) for s in specs.values()}
                cols = {s.score: [s.score, *([f"{s.score}_class"] if s.head.is_classifier else [])]
                        for s in specs.values()}
                docs, spent = 0, {id(g): 0.0 for g, _ in loaded}
                with ExitStack() as stack:  # every score's file streamed at once: one pass over the shard
                    outs = {n: stack.enter_context(settings.files.stream(
                        score_asset(n), key, score_schema(c).with_metadata(identity.footer(idents[n]))))
                        for n, c in cols.items()}
                    for ids, texts in _batches(tracer, settings, key):
                        for group, rater in loaded:
                            t = time.perf_counter()
                            logits = rater.logits(texts.to_pylist())
                            scores, classes = raters.apply_heads(logits, [s.head for s in group], group[0].model)
                            spent[id(group)] += time.perf_counter() - t
                            for j, s in enumerate(group):
                                c = {s.score: pa.array(scores[:, j], pa.float64())}
                                if s.head.is_classifier:
                                    c[f"{s.score}_class"] = pa.array(classes[:, j], pa.float64())
                                table = score_table(ids, c, names=cols[s.score])
                                checks[s.score].add(ids, table)
                                outs[s.score].write(table)
                        docs += len(ids)
                for n in specs:  # recorded once every file is committed
                    context.log_event(tracer.observation(score_asset(n), key, idents[n], ok=not checks[n].problems))
                for group, _ in loaded:
                    context.log.info(f"{key}: {', '.join(s.score for s in group)} ({group[0].model}): "
                                     f"{docs / max(spent[id(group)], 1e-9):.1f} docs/s on {comp.torch_device}")
                return docs, {n: c.result() for n, c in checks.items()}

            done = for_each_shard(context, one)
        for n in selected:
            yield dg.MaterializeResult(asset_key=score_asset(n), metadata={
                "docs": sum(d for d, _ in done.values()), "shards": len(done), "model": str(specs[n].model),
                "model_loads": loads})  # 0: the process already held the model (a Ray actor's next batch)
            yield combine_checks({k: c[n] for k, (_, c) in done.items()})

    return model_scores
