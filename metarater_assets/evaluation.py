"""Stage 'evaluation': does the curated selection train a better LM than random or one score?

A target LM (larger than the proxies, same tokenizer) is trained on equal token budgets from
(a) the curated selection, (b) a uniform random selection of the same number of tokens and
(c) the top of the pool by the best single score (the single-score proxy with the lowest loss),
for several seeds, with loss curves on every validation set.
"""

import tempfile

import numpy as np
import pyarrow as pa

import dagster as dg

from .core import proxy_lm, selection, stats
from .plots import png_metadata
from .proxies import pool_matrix, pool_token_lists, target_loss, validation_sets
from .scoring import _md_table
from resources import ComputeResource, MetaraterConfig

GROUP = "evaluation"
ARMS = ("curated", "random", "single_best")


def random_mask(tokens: np.ndarray, want_tokens: int, seed: int) -> np.ndarray:
    order = np.random.default_rng(seed).permutation(len(tokens))
    k = int(np.searchsorted(np.cumsum(tokens[order]), want_tokens, side="left")) + 1
    mask = np.zeros(len(tokens), dtype=bool)
    mask[order[:min(k, len(tokens))]] = True
    return mask


def best_single(proxy_run: dict[str, dict], target: str) -> str:
    singles = [r for r in proxy_run.values() if r.get("kind") == "single"]
    if not singles:
        raise dg.Failure("no single-score proxy runs: set proxies.single_score_runs: true")
    return min(singles, key=lambda r: target_loss(r["losses"], target))["score"]


def composition(sources: list[str], mask: np.ndarray, tokens: np.ndarray) -> dict[str, dict]:
    tot = tokens.sum()
    kept = tokens[mask].sum()
    out = {}
    for s in sorted(set(sources)):
        m = np.array([x == s for x in sources])
        out[s] = {"pool_share": float(tokens[m].sum() / tot),
                  "curated_share": float(tokens[m & mask].sum() / kept) if kept else 0.0}
    return out


@dg.asset(io_manager_key="json_io_manager", group_name=GROUP, code_version="evaluation-2",
          pool="metarater_train",
          ins={"doc_tokens": dg.AssetIn(partition_mapping=dg.AllPartitionMapping(), metadata={"allow_missing_partitions": True}),
               "proxy_run": dg.AssetIn(partition_mapping=dg.AllPartitionMapping(),
                                       metadata={"allow_missing_partitions": True})},
          description="Target LMs on curated vs random vs best-single-score selections at equal "
                      "tokens, several seeds; loss curves per validation set and the tokens the "
                      "curated model needs to reach the random model's final loss.")
def evaluation(context: dg.AssetExecutionContext, curated_selection: pa.Table, pool_index: pa.Table,
               doc_tokens: dict[str, pa.Table], validation_tokens: pa.Table, tokenizer: dict,
               proxy_run: dict[str, dict], settings: MetaraterConfig,
               compute: ComputeResource) -> dict:
    cfg = settings.load()
    ev = cfg.evaluation
    pcfg = proxy_lm.get_preset(ev["preset"], token_budget=ev.get("token_budget"))
    tokens = pool_index.column("n_tokens").to_numpy()
    lists = pool_token_lists(doc_tokens)
    vsets = validation_sets(validation_tokens)
    sets = list(vsets)
    curated = np.asarray(curated_selection.column("kept"))
    single = best_single(proxy_run, cfg.validation_target)
    names = [single]
    sel1 = selection.select_top(pool_matrix(pool_index, names)[:, 0], tokens,
                                fraction=cfg.curation["fraction"], by=cfg.curation["fraction_of"])
    eos, V = int(tokenizer.get("eos_id", 0)), int(tokenizer["vocab_size"])
    comp = compute.resolve()
    device = "cuda" if comp.accelerator == "gpu" else "cpu"
    every = max(1, pcfg.steps // int(ev.get("curve_points", 4)))
    # loss curves on a subset of each set (cheap); final losses on the whole configured sets
    curve_docs = int(ev.get("curve_docs", 100))
    curve_sets = {s: (d[:curve_docs], src[:curve_docs]) for s, (d, src) in vsets.items()}
    results = {arm: [] for arm in ARMS}
    curves = {arm: [] for arm in ARMS}
    for seed in ev["seeds"]:
        masks = {"curated": curated, "random": random_mask(tokens, int(tokens[curated].sum()), seed),
                 "single_best": sel1.mask}
        for arm, mask in masks.items():
            docs = [lists[i] for i in np.flatnonzero(mask)]
            cb = proxy_lm.eval_callback(curve_sets, every, pcfg.seq_len, eos, device)
            with tempfile.TemporaryDirectory() as tmp:
                model, info = proxy_lm.train_lm(docs, eos, V, pcfg, int(seed), tmp, comp, callbacks=[cb])
            losses = {s: proxy_lm.evaluate_loss(model, d, src, pcfg.seq_len, eos, device=device)
                      for s, (d, src) in vsets.items()}
            results[arm].append({"seed": seed, "target_loss": target_loss(losses, cfg.validation_target),
                                 **{s: losses[s]["loss"] for s in sets},
                                 "selected_docs": int(mask.sum()), "selected_tokens": int(tokens[mask].sum())})
            pts = [{**p, "target": target_loss({s: {"loss": p[s]} for s in sets}, cfg.validation_target)}
                   for p in cb.points]
            curves[arm].append(pts)
            context.log.info(f"seed {seed} {arm}: {results[arm][-1]['target_loss']:.4f}")
    ratios = []
    for i in range(len(ev["seeds"])):
        final_random = curves["random"][i][-1]["target"]  # same subset as the curated curve
        reach = proxy_lm.tokens_to_reach(curves["curated"][i], "target", final_random)
        ratios.append(None if reach is None else reach / curves["random"][i][-1]["tokens"])

    def summary(arm, key):
        v = np.array([r[key] for r in results[arm]])
        return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
                "min": float(v.min()), "max": float(v.max())}

    table = [{"arm": arm, "set": key, **summary(arm, key)} for key in ["target_loss", *sets] for arm in ARMS]
    comp_table = composition(pool_index.column("source").to_pylist(), curated, tokens)
    md = {"single_best_score": single,
          "losses": dg.MetadataValue.md(_md_table(table, ["arm", "set", "mean", "std", "min", "max"])),
          "composition": dg.MetadataValue.md(_md_table(
              [{"source": s, **v} for s, v in sorted(comp_table.items(), key=lambda kv: -kv[1]["pool_share"])],
              ["source", "pool_share", "curated_share"])),
          "tokens_ratio": str(ratios)}
    plot_curves = {}
    for arm in ARMS:
        c = curves[arm][0]
        plot_curves[arm] = ([p["tokens"] for p in c], [p["target"] for p in c])
    md.update(png_metadata(stats.curves_png(plot_curves, f"seed {ev['seeds'][0]}: {cfg.validation_target} loss",
                                            "validation loss"),
                           f"{settings.artifacts_uri}/evaluation/curves.png", "loss_curves"))
    context.add_output_metadata(md)
    return {"seeds": list(ev["seeds"]), "sets": sets, "target": cfg.validation_target,
            "single_best_score": single, "preset": ev["preset"], "token_budget": pcfg.steps * pcfg.batch_size * pcfg.seq_len,
            "results": results, "curves": curves, "summary": table, "tokens_ratio": ratios,
            "composition": comp_table}
