"""Stage 'proxies': the weight-vector plan, each run's training data, and the proxy runs.

* ``proxy_plan``: N Dirichlet vectors (+ one single-score vector per score), each registered as a
  ``proxy_runs`` partition keyed by a hash of (scores, weights, seed).
* ``proxy_data[run]``: the run's selection (top ``proxies.fraction`` of the pool by its combined
  score, one exact global cut) hash-sampled down to the training budget and written to an on-disk
  token store. A batch of runs (``BackfillPolicy.single_run``) shares the passes over the pool:
  one matrix product per shard serves every vector.
* ``proxy_run[run]``: a proxy trained on its store (a Lightning transformer, or an n-gram count
  model), its loss on every validation set's tuning part.
"""


import numpy as np

import dagster as dg

from . import identity
from .batched import for_each_shard
from .core import pool as cp, proxy_lm, scan, selection, storage as st, token_store as ts
from .core.trainings import train_and_evaluate  # noqa: F401  (proxy_run's, and the tests patch it here)
from .core.config import Config
from .partitions import proxy_runs
from .pool import flipped, normalisation, oriented, pool_files
from .tokens import validation_sets
from resources import ComputeResource, MetaraterConfig

GROUP = "proxies"


def target_loss(losses: dict[str, dict], target: str) -> float:
    """The loss ``target`` names (``Config.validation_target``): the mean of every set ("mean"),
    one set, or the mean of the sets joined by "+" (the quality targets)."""
    if target == "mean":
        return float(np.mean([v["loss"] for v in losses.values()]))
    return float(np.mean([losses[s]["loss"] for s in target.split("+")]))


def spec_uri(artifacts_uri: str, key: str) -> str:
    return f"{artifacts_uri}/proxy_specs/{key}.json"


def register_runs(instance: dg.DagsterInstance, artifacts_uri: str, names, seed: int,
                  runs: list[dict], partitions=proxy_runs) -> list[str]:
    """Write each run's spec (content-addressed by its key, never rewritten) and add its
    partition; returns the keys that were new."""
    existing = set(instance.get_dynamic_partitions(partitions.name))
    for r in runs:
        uri = spec_uri(artifacts_uri, r["key"])
        if not st.exists(uri):
            st.write_json({**r, "names": list(names), "seed": int(seed)}, uri)
    new = [r["key"] for r in runs if r["key"] not in existing]
    if new:
        instance.add_dynamic_partitions(partitions.name, new)
    return new


def proposals_uri(storage_uri: str) -> str:
    """The adaptive runs ``metarater propose`` added, by round: part of the plan they join."""
    return f"{storage_uri.rstrip('/')}/proposals.json"


def read_proposals(storage_uri: str) -> list[dict]:
    uri = proposals_uri(storage_uri)
    return st.read_json(uri)["runs"] if st.exists(uri) else []


def add_proposals(storage_uri: str, names, seed: int, runs: list[dict]) -> None:
    have = read_proposals(storage_uri)
    known = {r["key"] for r in have}
    st.write_json({"runs": have + [{**r, "names": list(names), "seed": int(seed)} for r in runs
                                   if r["key"] not in known]}, proposals_uri(storage_uri))


def build_plan(cfg: Config, extra: list[dict] | None = None) -> dict:
    names = list(cfg.score_names)
    p = cfg.proxies
    runs = []
    for w in selection.sample_weights(p.n, len(names), p.seed):
        runs.append({"key": selection.weights_key(names, w, p.seed), "kind": "dirichlet",
                     "weights": [float(x) for x in w]})
    if p.single_score_runs:
        for i, n in enumerate(names):
            w = np.zeros(len(names))
            w[i] = 1.0
            runs.append({"key": selection.weights_key(names, w, p.seed), "kind": "single",
                         "score": n, "weights": w.tolist()})
    runs.extend(extra or [])
    return {"names": names, "seed": p.seed, "runs": runs}


@dg.asset(io_manager_key="json_io_manager", group_name=GROUP, code_version="plan-2",
          description="The weight vectors to try: N from a flat Dirichlet (seeded) plus one "
                      "single-score vector per score. Each becomes a proxy_runs partition keyed "
                      "by a hash of weights + seed, so the same vector is never trained twice; "
                      "`metarater propose` adds adaptive vectors the same way.")
def proxy_plan(context: dg.AssetExecutionContext, settings: MetaraterConfig):
    cfg = settings.load()
    tracer = identity.for_run(context, settings, cfg)
    # the adaptive runs proposed for these scores and seed join the plan (an older plan's do not)
    adaptive = [{k: v for k, v in r.items() if k not in ("names", "seed")} for r in read_proposals(settings.storage_uri)
                if list(r["names"]) == list(cfg.score_names) and int(r["seed"]) == cfg.proxies.seed]
    plan = build_plan(cfg, adaptive)
    new = register_runs(context.instance, settings.artifacts_uri, plan["names"], plan["seed"], plan["runs"])
    return identity.output(tracer, "proxy_plan", plan, tracer.identity("proxy_plan"),
                           {"runs": len(plan["runs"]), "adaptive_runs": len(adaptive), "new_partitions": len(new)})


def model_config(kind_cfg) -> proxy_lm.ProxyConfig:
    return proxy_lm.get_preset(kind_cfg.preset, token_budget=kind_cfg.token_budget)


def read_spec(settings: MetaraterConfig, key: str, names) -> dict:
    uri = spec_uri(settings.artifacts_uri, key)
    if not st.exists(uri):
        raise dg.Failure(f"proxy run {key} has no spec at {uri}; materialise proxy_plan (or "
                         "`metarater propose`) to register runs", allow_retries=False)
    run = st.read_json(uri)
    if list(run["names"]) != list(names):
        raise dg.Failure(f"proxy run {key} was planned for scores {run['names']}, but the active scores "
                         f"are {list(names)}", allow_retries=False)
    return run


#: token stores staged in local temp at once when they go to an object store
STAGED_STORES = 16


def write_training_data(settings: MetaraterConfig, stats_out: dict, tokenizer: dict, W: np.ndarray,
                        store_uris: list[str], *, fraction: float, by: str, token_budget: int | None,
                        sample_budget: int | None, seed: int | list[int], log=None, masks=None) -> list[dict]:
    """The cut of every column of ``W`` over the pool, then one pass writing each selection,
    hash-sampled to ``sample_budget`` tokens, to its token store. ``seed``: the sample's seed, one
    for every column or one per column. Returns per column: the cut, the selection and the sample
    written."""
    norm = normalisation(stats_out)
    files = pool_files(settings, stats_out, tokens=True)
    totals = (int(stats_out["docs"]), int(stats_out["tokens"]))
    seeds = [int(seed)] * len(store_uris) if isinstance(seed, (int, np.integer)) else [int(x) for x in seed]
    if len(seeds) != len(store_uris):
        raise ValueError(f"{len(seeds)} sample seeds for {len(store_uris)} columns")
    W = np.asarray(W, dtype=np.float64).reshape(len(norm.names), -1)
    # local stores are staged beside themselves (no extra disk); object-store ones in local temp,
    # so at most STAGED_STORES at a time (each group costs its own passes; every cut is exact,
    # so a group's cuts are the cuts of the whole plan)
    group = W.shape[1] if all(st.is_local(u) for u in store_uris) else STAGED_STORES
    cuts, counts, infos = [], [], []
    for g in range(0, W.shape[1], max(1, group)):
        cols = slice(g, g + group)
        Wg = W[:, cols]
        cg = scan.cuts(files, norm, Wg, totals=totals, fraction=fraction, by=by, token_budget=token_budget)
        writers = [ts.TokenStoreWriter(u, int(tokenizer["vocab_size"]), int(tokenizer.get("eos_id", 0)))
                   for u in store_uris[cols]]
        try:
            counts += scan.write_stores(files, norm, Wg, cg, [scan.Sample(sample_budget, s) for s in seeds[cols]],
                                        writers, masks=masks[cols] if masks else None, log=log)
        except BaseException:
            for w in writers:
                w.abort()
            raise
        infos += [w.close() for w in writers]
        cuts += cg
    out = []
    for p, (c, n, u, i) in enumerate(zip(cuts, counts, store_uris, infos)):
        selected = n.pop("selected")  # what the cut (or the column's mask) selected, counted in the pass
        if not (masks and masks[p]) and (selected["docs"], selected["tokens"]) != (c.docs, c.tokens):
            raise RuntimeError(f"column {p}: the cut keeps {c.docs} documents, the writing pass selected "
                               f"{selected['docs']}: the pool changed during the selection")
        out.append({"cut": c.to_dict(), "selected": selected, "sampled": n, "store": {"uri": u, **i}})
    return out


#: the proxy-run asset of each tier and the config section that shapes it
TIERS = {"proxy_run": "proxies", "confirm_run": "confirm", "orientation_run": "proxies"}


def kind_config(cfg: Config, section: str):
    """The proxy kind / preset / budget of a tier: ``proxies`` (tier 1) or ``confirm`` (tier 2)."""
    return cfg.proxies if section == "proxies" else cfg.confirm


def make_proxy_data(cfg, *, name: str = "proxy_data", partitions=proxy_runs, plan: str = "proxy_plan",
                    section: str = "proxies", orientation_runs: bool = False):
    """``proxy_data`` (tier 1), ``confirm_data`` (tier 2) or ``orientation_data``: each run's training
    data. Tier 1 and 2 select with the decided orientation of ``auto`` scores (``score_orientation``);
    orientation runs select by a score's top (``flip`` false) or its bottom (``flip`` true)."""
    decided = bool(cfg is not None and cfg.auto_oriented and not orientation_runs)

    @dg.asset(name=name, partitions_def=partitions, group_name=GROUP if section == "proxies" else "confirm",
              backfill_policy=dg.BackfillPolicy.single_run(),
              code_version=f"proxy-data-{cp.POOL_VERSION}-{ts.STORE_VERSION}",
              deps=[plan, dg.AssetDep("shard_index", partition_mapping=dg.AllPartitionMapping()),
                    dg.AssetDep("doc_tokens", partition_mapping=dg.AllPartitionMapping()),
                    *(["score_orientation"] if decided else [])],
              ins={"score_stats": dg.AssetIn("score_stats"), "tokenizer": dg.AssetIn("tokenizer")},
              description="Each run's training data: its exact top-fraction selection of the pool, "
                          "hash-sampled (seeded) to the proxy's token budget, in an on-disk token store "
                          "(.bin/.idx). One batch of runs shares the passes over the pool.")
    def proxy_data(context: dg.AssetExecutionContext, score_stats: dict, tokenizer: dict,
                   settings: MetaraterConfig) -> dg.MaterializeResult:
        cfg_ = settings.load()
        tracer = identity.for_run(context, settings, cfg_, score_stats=score_stats, tokenizer=tokenizer)
        keys = list(context.partition_keys) if context.has_partition_key_range else [context.partition_key]
        idents = {k: tracer.identity(name, k) for k in keys}
        specs = [read_spec(settings, k, cfg_.score_names) for k in keys]
        p = cfg_.proxies
        mc = model_config(kind_config(cfg_, section))
        budget = mc.steps * mc.batch_size * mc.seq_len
        stats = oriented(settings, cfg_, score_stats, tracer) if decided else score_stats
        res: list = [None] * len(keys)
        for flip in sorted({bool(s.get("flip", False)) for s in specs}):  # one pass over the pool per group
            idx = [i for i, s in enumerate(specs) if bool(s.get("flip", False)) == flip]
            W = np.array([specs[i]["weights"] for i in idx]).T  # (S, P)
            # a store per identity: a run's training data of another identity can't be found under its name
            group = write_training_data(settings, flipped(stats, cfg_.auto_oriented) if flip else stats, tokenizer, W,
                                        [f"{settings.artifacts_uri}/{name}/{keys[i]}/{idents[keys[i]]}" for i in idx],
                                        fraction=p.fraction,
                                        by=p.fraction_of, token_budget=None, sample_budget=budget, seed=p.seed,
                                        log=context.log.info)
            for i, r in zip(idx, group):
                res[i] = r
        for k, r in zip(keys, res):
            st.write_json({"key": k, **r, identity.FIELD: idents[k]}, settings.files.uri(name, k, ".json"))
            context.log_event(tracer.observation(name, k, idents[k]))
            drop_others(f"{settings.artifacts_uri}/{name}/{k}", idents[k])
        context.log.info(f"{len(keys)} run(s): training data written")
        return dg.MaterializeResult(metadata={"runs": len(keys),
                                              "selected_tokens_min": min(r["selected"]["tokens"] for r in res),
                                              "sampled_tokens_min": min(r["sampled"]["tokens"] for r in res)})

    return proxy_data


def drop_others(folder: str, keep: str) -> None:
    """Remove the outputs of other identities under ``folder`` (older training data or checkpoints
    of a run whose inputs changed), keeping ``keep``."""
    fs, path = st.fs_and_path(folder)
    try:
        entries = fs.ls(path, detail=False)
    except FileNotFoundError:
        return
    for e in entries:
        if e.rstrip("/").rsplit("/", 1)[-1] != keep and fs.isdir(e):
            fs.rm(e, recursive=True)


def make_proxy_run(cfg, *, name: str = "proxy_run", partitions=proxy_runs, data: str = "proxy_data",
                   section: str = "proxies"):
    """``proxy_run`` (tier 1) or ``confirm_run`` (tier 2): one proxy per partition."""
    kind = kind_config(cfg, section).kind if cfg else "transformer"
    policy = dg.BackfillPolicy.multi_run(64) if kind == "ngram" else None

    @dg.asset(name=name, partitions_def=partitions, group_name=GROUP if section == "proxies" else "confirm",
              code_version=f"proxy-{proxy_lm.PROXY_VERSION}-2",
              deps=[data, "validation_tokens"], ins={"tokenizer": dg.AssetIn("tokenizer")},
              pool="metarater_train", retry_policy=dg.RetryPolicy(max_retries=1), backfill_policy=policy,
              description="One proxy: a small LM trained on a fixed token budget with Lightning (or an "
                          "n-gram count model, kind: ngram) on its run's token store, and its "
                          "loss on every validation set's tuning part (overall and per source). Resumes "
                          "from its last checkpoint when re-run after an interruption.")
    def proxy_run(context: dg.AssetExecutionContext, tokenizer: dict, settings: MetaraterConfig,
                  compute: ComputeResource) -> dg.MaterializeResult:
        cfg_ = settings.load()
        tracer = identity.for_run(context, settings, cfg_, tokenizer=tokenizer)
        kc = kind_config(cfg_, section)
        pcfg = model_config(kc)
        vsets = validation_sets(settings.storage_uri, "tune", tracer)
        with compute.claim() as comp:
            def one(key):
                ident = tracer.identity(name, key)
                run = read_spec(settings, key, cfg_.score_names)
                data_uri = settings.files.uri(data, key, ".json")
                if not st.exists(data_uri):
                    raise dg.Failure(f"proxy run {key} has no training data: materialise {data}[{key}]")
                d = st.read_json(data_uri)
                tracer.check_file(data, key, d.get(identity.FIELD), data_uri)
                # the checkpoint belongs to this identity (its training data, model and measurement):
                # a rerun resumes only an interrupted run of the same identity, never a finished other one
                ckpt = f"{settings.artifacts_uri}/{name}s/{key}/{ident}"
                st.write_json({"key": key, "names": run["names"], "weights": run["weights"], "seed": run["seed"],
                               "model": pcfg.__dict__, "kind": kc.kind}, f"{ckpt}/config.json")
                losses, info, _ = train_and_evaluate(kc.kind, pcfg, d["store"]["uri"], vsets, tokenizer,
                                                     ckpt, comp, run["seed"])
                out = {"key": key, "kind": run["kind"], "score": run.get("score"), "names": run["names"],
                       "weights": dict(zip(run["names"], run["weights"])), "seed": run["seed"],
                       "round": run.get("round", 0), "proxy_kind": kc.kind, "tier1": run.get("tier1"),
                       "selection": d["selected"], "sampled": d["sampled"], "threshold": d["cut"]["threshold_score"],
                       "losses": losses, "target_loss": target_loss(losses, cfg_.validation_target), "train": info,
                       identity.FIELD: ident}
                st.write_json(out, settings.files.uri(name, key, ".json"))
                context.log_event(tracer.observation(name, key, ident))
                drop_others(f"{settings.artifacts_uri}/{name}s/{key}", ident)
                return out

            done = for_each_shard(context, one)
        losses = [r["target_loss"] for r in done.values()]
        md = {"runs": len(done), "target_loss_min": min(losses), "target_loss_max": max(losses)}
        if len(done) == 1:
            r = next(iter(done.values()))
            md.update({f"loss_{s}": v["loss"] for s, v in r["losses"].items()})
            md["tokens_per_second"] = float(r["train"].get("tokens_per_second", float("nan")))
        return dg.MaterializeResult(metadata=md)

    return proxy_run


def proxy_results(settings: MetaraterConfig, keys, asset: str = "proxy_run",
                  tracer: identity.Tracer | None = None) -> dict[str, dict]:
    """The finished proxy runs among ``keys`` (``confirm_run`` for tier 2): with a tracer, only the
    runs whose recorded result is current, each file checked against its record (a run whose retrain
    failed, or of another plan, is left out: the caller names what is missing)."""
    out = {}
    for k in keys:
        if tracer is not None and not tracer.current(asset, k):
            continue
        uri = settings.files.uri(asset, k, ".json")
        if st.exists(uri):
            r = st.read_json(uri)
            if tracer is not None:
                tracer.check_file(asset, k, r.get(identity.FIELD), uri)
            out[k] = r
    return out
