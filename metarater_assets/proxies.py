"""Stage 'proxies': tokenizer, tokenised pool, pool index, weight-vector plan and proxy runs."""


import numpy as np
import pyarrow as pa
import pyarrow.compute  # noqa: F401  (pa.compute)

import dagster as dg

from .core import corpus, proxy_lm, selection, storage as st
from .core.config import Config
from .batched import SHARD_BACKFILL, map_shards, result
from .partitions import proxy_runs, shards
from resources import ComputeResource, MetaraterConfig

GROUP = "proxies"
ALL = dg.AllPartitionMapping()
MISSING_OK = {"allow_missing_partitions": True}


@dg.asset(io_manager_key="json_io_manager", group_name=GROUP, code_version="tokenizer-1",
          ins={"raw_docs": dg.AssetIn(partition_mapping=ALL, metadata=MISSING_OK)},
          description="Byte-level BPE trained on the pool with HF tokenizers (saved with "
                      "save_pretrained), or the HF tokenizer named by tokenizer.path.")
def tokenizer(context: dg.AssetExecutionContext, raw_docs: dict[str, pa.Table],
              settings: MetaraterConfig) -> dict:
    cfg = settings.load()
    if cfg.tokenizer_path:
        tok = proxy_lm.load_tokenizer(cfg.tokenizer_path)
        return {"uri": cfg.tokenizer_path, "vocab_size": len(tok), "trained": False}
    texts: list[str] = []
    for k in sorted(raw_docs):
        texts.extend(raw_docs[k].column("text").to_pylist()[: max(0, cfg.tokenizer_sample_docs - len(texts))])
    tok = proxy_lm.train_tokenizer(texts, cfg.tokenizer_vocab_size)
    uri = f"{settings.artifacts_uri}/tokenizer"
    proxy_lm.save_tokenizer(tok, uri)
    context.add_output_metadata({"vocab_size": len(tok), "trained_on_docs": len(texts), "uri": uri})
    return {"uri": uri, "vocab_size": len(tok), "trained": True, "eos_id": tok.eos_token_id}


@dg.asset(partitions_def=shards, io_manager_key="parquet_io_manager", group_name=GROUP,
          code_version="doc-tokens-1", backfill_policy=SHARD_BACKFILL,
          description="Token ids of every document of one shard (doc_id, source, raw_row, n_tokens, ids).")
def doc_tokens(context: dg.AssetExecutionContext, raw_docs, tokenizer: dict):
    tok = proxy_lm.load_tokenizer(tokenizer["uri"])

    def one(raw_docs: pa.Table) -> pa.Table:
        ids = proxy_lm.encode(tok, raw_docs.column("text").to_pylist())
        n = [len(x) for x in ids]
        return pa.table({"doc_id": raw_docs.column("doc_id"), "source": raw_docs.column("source"),
                         "raw_row": raw_docs.column("raw_row"), "n_tokens": pa.array(n, pa.int64()),
                         "ids": pa.array([x.tolist() for x in ids], pa.list_(pa.int32()))})

    parts = map_shards(context, one, raw_docs)
    context.add_output_metadata({"docs": sum(t.num_rows for t in parts.values()),
                                 "tokens": int(sum(pa.compute.sum(t.column("n_tokens")).as_py() or 0
                                                   for t in parts.values()))})
    return result(context, parts)


@dg.asset(io_manager_key="parquet_io_manager", group_name=GROUP, code_version="val-tokens-1",
          description="Token ids of every configured validation set (first validation.max_docs docs).")
def validation_tokens(context: dg.AssetExecutionContext, tokenizer: dict,
                      settings: MetaraterConfig) -> pa.Table:
    cfg = settings.load()
    tok = proxy_lm.load_tokenizer(tokenizer["uri"])
    rows = {"set": [], "doc_id": [], "source": [], "ids": []}
    for name, uri in cfg.validation_sets.items():
        docs = corpus.read_documents(uri).slice(0, cfg.validation_max_docs)
        ids = proxy_lm.encode(tok, docs.column("text").to_pylist())
        rows["set"] += [name] * len(ids)
        rows["doc_id"] += docs.column("doc_id").to_pylist()
        rows["source"] += docs.column("source").to_pylist()
        rows["ids"] += [x.tolist() for x in ids]
    return pa.table({**{k: rows[k] for k in ("set", "doc_id", "source")},
                     "ids": pa.array(rows["ids"], pa.list_(pa.int32()))})


@dg.asset(io_manager_key="parquet_io_manager", group_name=GROUP, code_version="pool-index-1",
          ins={"doc_tokens": dg.AssetIn(partition_mapping=ALL, metadata=MISSING_OK),
               "rpv2_scores": dg.AssetIn(partition_mapping=ALL, metadata=MISSING_OK),
               "dsir_scores": dg.AssetIn(partition_mapping=ALL, metadata=MISSING_OK),
               "model_scores": dg.AssetIn(partition_mapping=ALL, metadata=MISSING_OK)},
          check_specs=[dg.AssetCheckSpec("every_doc_every_score", asset="pool_index", blocking=True,
                                         description="every pool document has every active score")],
          description="One row per pool document: shard, doc_id, raw_row, source, n_tokens and "
                      "every raw score. The pool-level data every global threshold is computed from.")
def pool_index(context: dg.AssetExecutionContext, doc_tokens: dict[str, pa.Table],
               rpv2_scores: dict[str, pa.Table], dsir_scores: dict[str, pa.Table],
               model_scores: dict[str, pa.Table], settings: MetaraterConfig):
    cfg = settings.load()
    problems = []
    tables = []
    for key in sorted(doc_tokens):
        tok = doc_tokens[key]
        ids = tok.column("doc_id").to_pylist()
        cols = {"shard": pa.array([key] * tok.num_rows, pa.string()), "doc_id": tok.column("doc_id"),
                "raw_row": tok.column("raw_row"), "source": tok.column("source"),
                "n_tokens": tok.column("n_tokens")}
        for label, parts in (("rpv2", rpv2_scores), ("dsir", dsir_scores), ("model", model_scores)):
            t = parts.get(key)
            if t is None or t.column("doc_id").to_pylist() != ids:
                problems.append(f"{key}: {label} scores missing or not aligned with the documents")
                continue
            for n in t.column_names[1:]:
                cols[n] = t.column(n).cast(pa.float64())
        tables.append(pa.table(cols))
    missing_shards = sorted((set(rpv2_scores) | set(dsir_scores)) - set(doc_tokens))
    problems += [f"{k}: scored but not tokenised" for k in missing_shards]
    table = pa.concat_tables(tables, promote_options="default") if tables else pa.table({})
    for name in cfg.score_names:
        if name not in table.column_names:
            problems.append(f"score {name} absent")
    yield dg.Output(table, metadata={"docs": table.num_rows, "shards": len(tables),
                                     "tokens": int(pa.compute.sum(table.column("n_tokens")).as_py() or 0) if tables else 0})
    yield dg.AssetCheckResult(check_name="every_doc_every_score", passed=not problems,
                              metadata={"problems": "\n".join(problems[:50]) or "none"})


def pool_matrix(pool: pa.Table, names) -> np.ndarray:
    cols = {n: pool.column(n).to_numpy(zero_copy_only=False) for n in names}
    return selection.normalise(cols, selection.minmax_stats(cols), names)


def validation_sets(val: pa.Table) -> dict[str, tuple[list[np.ndarray], list[str]]]:
    out: dict[str, tuple[list, list]] = {}
    sets = val.column("set").to_pylist()
    srcs = val.column("source").to_pylist()
    ids = val.column("ids").to_pylist()
    for s, src, x in zip(sets, srcs, ids):
        out.setdefault(s, ([], []))
        out[s][0].append(np.asarray(x, dtype=np.int32))
        out[s][1].append(src)
    return out


def target_loss(losses: dict[str, dict], target: str) -> float:
    if target == "mean":
        return float(np.mean([v["loss"] for v in losses.values()]))
    return float(losses[target]["loss"])


def spec_uri(artifacts_uri: str, key: str) -> str:
    return f"{artifacts_uri}/proxy_specs/{key}.json"


def register_runs(instance: dg.DagsterInstance, artifacts_uri: str, names, seed: int,
                  runs: list[dict]) -> list[str]:
    """Write each run's spec (content-addressed by its key, never rewritten) and add its
    proxy_runs partition; returns the keys that were new."""
    existing = set(instance.get_dynamic_partitions(proxy_runs.name))
    for r in runs:
        uri = spec_uri(artifacts_uri, r["key"])
        if not st.exists(uri):
            st.write_json({**r, "names": list(names), "seed": int(seed)}, uri)
    new = [r["key"] for r in runs if r["key"] not in existing]
    if new:
        instance.add_dynamic_partitions(proxy_runs.name, new)
    return new


@dg.asset(io_manager_key="json_io_manager", group_name=GROUP, code_version="plan-2",
          description="The weight vectors to try: N from a flat Dirichlet (seeded) plus one "
                      "single-score vector per score. Each becomes a proxy_runs partition keyed "
                      "by a hash of weights + seed, so the same vector is never trained twice; "
                      "`metarater propose` adds adaptive vectors the same way.")
def proxy_plan(context: dg.AssetExecutionContext, settings: MetaraterConfig) -> dict:
    cfg = settings.load()
    plan = build_plan(cfg)
    new = register_runs(context.instance, settings.artifacts_uri, plan["names"], plan["seed"], plan["runs"])
    context.add_output_metadata({"runs": len(plan["runs"]), "new_partitions": len(new)})
    return plan


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
    for r in extra or []:
        runs.append(r)
    return {"names": names, "seed": p.seed, "runs": runs}


def proxy_settings(cfg: Config) -> proxy_lm.ProxyConfig:
    return proxy_lm.get_preset(cfg.proxies.preset, token_budget=cfg.proxies.token_budget)


def run_proxy(cfg: Config, weights: np.ndarray, names, pool: pa.Table, token_lists, val_sets,
              tok_info: dict, ckpt_uri: str, compute, pcfg: proxy_lm.ProxyConfig, seed: int,
              kind: str, log=print) -> dict:
    """Select with ``weights``, train one proxy (or n-gram model), evaluate on every set."""
    normed = pool_matrix(pool, names)
    comb = selection.combined_score(normed, weights)
    sel = selection.select_top(comb, pool.column("n_tokens").to_numpy(), fraction=cfg.proxies.fraction,
                               by=cfg.proxies.fraction_of)
    docs = [token_lists[i] for i in np.flatnonzero(sel.mask)]
    eos = int(tok_info.get("eos_id", 0))
    V = int(tok_info["vocab_size"])
    if kind == "ngram":
        model = proxy_lm.NgramProxy(V).fit(proxy_lm.pack(docs, eos, pcfg, seed))
        losses = {s: model.evaluate(d, src, pcfg.seq_len, eos) for s, (d, src) in val_sets.items()}
        info = {"tokens": pcfg.steps * pcfg.batch_size * pcfg.seq_len}
    else:
        model, info = proxy_lm.train_lm(docs, eos, V, pcfg, seed, ckpt_uri, compute)
        losses = {s: proxy_lm.evaluate_loss(model, d, src, pcfg.seq_len, eos,
                                            device="cuda" if compute.accelerator == "gpu" else "cpu")
                  for s, (d, src) in val_sets.items()}
    return {"selection": {"docs": sel.docs, "tokens": sel.tokens, "threshold": sel.threshold},
            "losses": losses, "target_loss": target_loss(losses, cfg.validation_target),
            "train": info}


def pool_token_lists(doc_tokens: dict[str, pa.Table]) -> list[np.ndarray]:
    out: list[np.ndarray] = []
    for k in sorted(doc_tokens):
        col = doc_tokens[k].column("ids")
        flat = col.combine_chunks()
        values = flat.values.to_numpy()
        offs = flat.offsets.to_numpy()
        out.extend(values[offs[i]:offs[i + 1]] for i in range(len(offs) - 1))
    return out


@dg.asset(partitions_def=proxy_runs, io_manager_key="json_io_manager", group_name=GROUP,
          code_version=f"proxy-{proxy_lm.PROXY_VERSION}",
          ins={"doc_tokens": dg.AssetIn(partition_mapping=ALL, metadata=MISSING_OK)},
          deps=["proxy_plan"], pool="metarater_train", retry_policy=dg.RetryPolicy(max_retries=1),
          description="One proxy: select the top fraction of the pool by this weight vector, "
                      "train a small LM on a fixed token budget with Lightning, and record its "
                      "loss on every validation set (overall and per source). Resumes from its "
                      "last checkpoint when re-run after an interruption.")
def proxy_run(context: dg.AssetExecutionContext, pool_index: pa.Table,
              doc_tokens: dict[str, pa.Table], validation_tokens: pa.Table, tokenizer: dict,
              settings: MetaraterConfig, compute: ComputeResource) -> dict:
    cfg = settings.load()
    key = context.partition_key
    uri = spec_uri(settings.artifacts_uri, key)
    if not st.exists(uri):
        raise dg.Failure(f"proxy run {key} has no spec at {uri}; materialise proxy_plan (or "
                         "`metarater propose`) to register runs", allow_retries=False)
    run = st.read_json(uri)
    names = run["names"]
    if list(names) != list(cfg.score_names):
        raise dg.Failure(f"proxy run {key} was planned for scores {names}, but the active scores "
                         f"are {list(cfg.score_names)}", allow_retries=False)
    w = np.asarray(run["weights"], dtype=np.float64)
    pcfg = proxy_settings(cfg)
    ckpt = f"{settings.artifacts_uri}/proxy_runs/{key}"
    st.write_json({"key": key, "names": names, "weights": run["weights"], "seed": run["seed"],
                   "model": pcfg.__dict__, "kind": cfg.proxies.kind}, f"{ckpt}/config.json")
    res = run_proxy(cfg, w, names, pool_index, pool_token_lists(doc_tokens),
                    validation_sets(validation_tokens), tokenizer, ckpt, compute.resolve(), pcfg,
                    run["seed"], cfg.proxies.kind)
    out = {"key": key, "kind": run["kind"], "score": run.get("score"), "names": names,
           "weights": dict(zip(names, run["weights"])), "seed": run["seed"], "round": run.get("round", 0),
           "proxy_kind": cfg.proxies.kind, **res}
    context.add_output_metadata({
        "target_loss": res["target_loss"],
        **{f"loss_{s}": v["loss"] for s, v in res["losses"].items()},
        "selected_docs": res["selection"]["docs"], "selected_tokens": res["selection"]["tokens"],
        "tokens_per_second": float(res["train"].get("tokens_per_second", float("nan"))),
    })
    context.log.info(f"{key}: target loss {res['target_loss']:.4f}")
    return out
