"""Stage 'evaluation': does the curated selection train a better LM than random or one score?

A target LM (larger than the proxies, same tokenizer) is trained on equal token budgets from
(a) the curated selection, (b) a uniform random selection of the pool of the same expected size
and (c) the top of the pool by the best single score (the single-score proxy with the lowest
tuning loss) cut with the same rule as the curated corpus (fraction or token budget), for several
seeds. The arms are **paired**: a seed draws every arm's training sample and order (and the random
arm's selection), so a comparison is the per-seed difference, with a bootstrap interval, and the
verdict comes from it (``core.stats.paired_comparison``). Each arm's training data is written to a
token store in one pass over the pool. Losses are
measured on the validation sets' **held-out** part (which no proxy and no regressor ever saw) and,
for reference, on the tuning part of the target's sets; loss curves on a seeded sample of the
target sets' held-out documents.
"""

import numpy as np

import dagster as dg

from . import identity

from .core import proxy_lm, scan
from .core.trainings import run_trainings, training_workers
from .core.stats import md_table, paired_comparison
from .partitions import proxy_runs
from .plots import curves_png, png_metadata
from .pool import oriented, pool_files
from .proxies import proxy_results, target_loss, write_training_data
from .tokens import validation_sets
from resources import ComputeResource, MetaraterConfig

GROUP = "evaluation"
ARMS = ("curated", "random", "single_best")


def target_sets(target: str, sets: list[str]) -> list[str]:
    """The validation sets ``target`` (``Config.validation_target``) is made of."""
    return list(sets) if target == "mean" else [s for s in target.split("+") if s in sets]


def best_single(results: dict[str, dict], target: str) -> str:
    singles = [r for r in results.values() if r.get("kind") == "single"]
    if not singles:
        raise dg.Failure("no single-score proxy runs: set proxies.single_score_runs: true")
    return min(singles, key=lambda r: target_loss(r["losses"], target))["score"]


def _summary(values) -> dict:
    v = np.asarray(values, dtype=float)
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
            "min": float(v.min()), "max": float(v.max())}


def make_evaluation(cfg) -> dg.AssetsDefinition:
    """The evaluation asset for this config. With ``scores.orientation: auto`` it reads the pool's
    scores as ``score_orientation`` decided them (``pool.oriented``), so it declares that asset: a
    new decision marks the evaluation stale, and a run never evaluates before the decision."""
    deps = ["validation_tokens", dg.AssetDep("proxy_run", partition_mapping=dg.AllPartitionMapping()),
            dg.AssetDep("shard_index", partition_mapping=dg.AllPartitionMapping()),
            dg.AssetDep("doc_tokens", partition_mapping=dg.AllPartitionMapping())]
    if cfg is not None and cfg.auto_oriented:
        deps.append("score_orientation")

    @dg.asset(name="evaluation", io_manager_key="json_io_manager", group_name=GROUP, code_version="evaluation-6",
              pool="metarater_train", deps=deps,
              ins={"curated_selection": dg.AssetIn("curated_selection"), "score_stats": dg.AssetIn("score_stats"),
                   "tokenizer": dg.AssetIn("tokenizer")},
              description="Target LMs on curated vs random vs best-single-score selections at equal tokens, "
                          "several seeds, scored on the held-out validation documents; loss curves and the "
                          "tokens the curated model needs to reach the random model's final loss.")
    def _asset(context: dg.AssetExecutionContext, curated_selection: dict, score_stats: dict, tokenizer: dict,
               settings: MetaraterConfig, compute: ComputeResource):
        tracer = identity.for_run(context, settings, curated_selection=curated_selection, score_stats=score_stats,
                                  tokenizer=tokenizer)
        ident = tracer.identity("evaluation")
        out = evaluate(context, curated_selection, score_stats, tokenizer, settings, compute, tracer)
        return identity.output(tracer, "evaluation", out, ident)

    return _asset


def evaluate(context: dg.AssetExecutionContext, curated_selection: dict, score_stats: dict, tokenizer: dict,
             settings: MetaraterConfig, compute: ComputeResource, tracer: identity.Tracer | None = None) -> dict:
    cfg = settings.load()
    score_stats = oriented(settings, cfg, score_stats, tracer)  # auto scores as score_orientation decided
    ev = cfg.evaluation
    # token_budget "selection": every arm trains on its whole selection, once (no sample: the seed
    # draws only the order, the initialisation and the random arm's selection), for the curated
    # selection's tokens rounded up to whole batches; a number: a seeded sample of that many tokens
    whole = ev.get("token_budget") == "selection"
    pcfg = proxy_lm.get_preset(ev["preset"], token_budget=None if whole else ev.get("token_budget"))
    if whole:
        unit = pcfg.batch_size * pcfg.seq_len
        pcfg = pcfg.replace(token_budget=-(-int(curated_selection["tokens"]) // unit) * unit)
    budget = pcfg.steps * pcfg.batch_size * pcfg.seq_len
    # the current plan's runs only (a run of an older plan or seed never picks the single best score)
    planned = tracer.active("proxy_runs") if tracer else sorted(context.instance.get_dynamic_partitions(proxy_runs.name))
    results_p = proxy_results(settings, planned, tracer=tracer)
    single = best_single(results_p, cfg.validation_target)
    names = list(curated_selection["names"])
    held = validation_sets(settings.storage_uri, "held_out", tracer)
    tune = validation_sets(settings.storage_uri, "tune", tracer)
    eval_part = "held_out" if held else "tune"
    vsets = held or tune
    if not held:
        context.log.warning("validation.held_out is 0: the evaluation reads the tuning documents the proxies "
                            "were scored on (biased towards the curated and single-score arms)")
    seeds = [int(s) for s in ev["seeds"]]
    cur = cfg.curation
    w_cur = np.asarray(curated_selection["weights"])
    w_one = np.zeros(len(names))
    w_one[names.index(single)] = 1.0
    # random arm: a uniformly random selection of exactly the curated selection's tokens (to the
    # last document), one per seed, so every arm is compared at equal size
    randoms = scan.random_selections(pool_files(settings, score_stats), [int(curated_selection["tokens"])] * len(seeds),
                                     [7919 + s for s in seeds])
    store_uri = lambda arm, seed: f"{settings.artifacts_uri}/evaluation_data/{arm}-{seed}"  # noqa: E731
    # every arm and seed in one pass over the pool: curated and single-best cut like the curated
    # corpus; random = its seed's random selection of the curated size. Each arm's training sample
    # is drawn with its seed, so the arms of one seed differ only by their selection
    cols, masks, uris, arms, sample_seeds = [], [], [], [], []
    for i, seed in enumerate(seeds):
        for arm in ARMS:
            cols.append(w_cur if arm != "single_best" else w_one)
            masks.append(randoms[i] if arm == "random" else None)
            uris.append(store_uri(arm, seed))
            arms.append((arm, seed))
            sample_seeds.append(seed)
    W = np.stack(cols, axis=1)
    data = write_training_data(settings, score_stats, tokenizer, W, uris, fraction=cur["fraction"], by=cur["fraction_of"],
                               token_budget=cur.get("token_budget"), sample_budget=None if whole else budget, seed=sample_seeds,
                               log=context.log.info, masks=masks)
    results = {arm: [] for arm in ARMS}
    curves = {arm: [] for arm in ARMS}
    # loss curves on the sets the target is made of, each a seeded sample spanning the whole
    # held-out part (its first documents would follow the file's order, e.g. one source first)
    tsets = target_sets(cfg.validation_target, list(vsets))
    curve_docs = int(ev.get("curve_docs", 64))
    curve_sets = {}
    for s in tsets:
        d, src = vsets[s]
        idx = proxy_lm.spread_subset(len(d), curve_docs, seed=0)
        curve_sets[s] = ([d[i] for i in idx], [src[i] for i in idx])
    every = max(1, pcfg.steps // int(ev.get("curve_points", 8)))
    tune_t = {s: v for s, v in tune.items() if s in tsets} if held else None
    with compute.claim() as comp:
        workers, comp = training_workers(comp, len(arms), budget)
        jobs = [(pcfg, d["store"]["uri"], vsets, tune_t, curve_sets, every, tokenizer, comp, seed) for (_, seed), d in zip(arms, data)]
        what = "each arm's whole selection" if whole else "a seeded sample of each selection"
        context.log.info(f"{len(jobs)} trainings of {budget:,} tokens ({what}), {workers} at a time "
                         f"({comp.threads or 'default'} thread(s) each)")
        for (arm, seed), d, (losses, tune_losses, info, points) in zip(arms, data, run_trainings(jobs, workers)):
            tune_losses = tune_losses if held else losses
            sel = d["selected"]  # the arm's whole selection (random: its hash sample of the pool)
            results[arm].append({"seed": seed, "target_loss": target_loss(losses, cfg.validation_target),
                                 "tune_target_loss": target_loss(tune_losses, cfg.validation_target),
                                 **{s: losses[s]["loss"] for s in vsets},
                                 **{f"tune_{s}": v["loss"] for s, v in tune_losses.items()},
                                 "selected_docs": int(sel["docs"]), "selected_tokens": int(sel["tokens"]),
                                 "trained_tokens": info["tokens"]})
            curves[arm].append([{**p, "target": target_loss({s: {"loss": p[s]} for s in tsets}, cfg.validation_target)}
                                for p in points])
            context.log.info(f"seed {seed} {arm}: {results[arm][-1]['target_loss']:.4f} ({eval_part})")
    ratios, to_target = [], []
    for i, seed in enumerate(seeds):
        final_random = curves["random"][i][-1]["target"]
        reach = proxy_lm.tokens_to_reach(curves["curated"][i], "target", final_random)
        random_tokens = curves["random"][i][-1]["tokens"]
        ratios.append(None if reach is None else reach / random_tokens)
        # reached by the curve's first point: the true figure is that or fewer tokens (a bound)
        first = curves["curated"][i][0]["target"] <= final_random
        to_target.append({"seed": seed, "random_final_loss": final_random, "random_tokens": random_tokens,
                          "curated_tokens": reach, "ratio": ratios[-1], "at_most": bool(first),
                          "curve_docs": {s: len(curve_sets[s][0]) for s in tsets}})
    # per-seed paired differences, on the evaluation target and on each set
    paired = {arm: {key: paired_comparison([r[key] for r in results["curated"]], [r[key] for r in results[arm]],
                                           seed=seeds[0])
                    for key in ["target_loss", *vsets]} for arm in ARMS if arm != "curated"}
    table = [{"arm": arm, "set": key, **_summary([r[key] for r in results[arm]])}
             for key in ["target_loss", *vsets, "tune_target_loss"] for arm in ARMS]
    comp_table = {s: {"pool_share": v["pool_tokens"] / max(curated_selection["pool_tokens"], 1),
                      "curated_share": v["tokens"] / max(curated_selection["tokens"], 1)}
                  for s, v in curated_selection["per_source"].items()}
    md = {"single_best_score": single, "evaluated_on": eval_part,
          "weights_from": str(curated_selection.get("weights_from")),
          "held_out_docs": dg.MetadataValue.json({s: len(d) for s, (d, _) in held.items()}),
          "losses": dg.MetadataValue.md(md_table(table, ["arm", "set", "mean", "std", "min", "max"])),
          "composition": dg.MetadataValue.md(md_table(
              [{"source": s, **v} for s, v in sorted(comp_table.items(), key=lambda kv: -kv[1]["pool_share"])],
              ["source", "pool_share", "curated_share"])),
          "tokens_ratio": str(ratios),
          "paired": dg.MetadataValue.md(md_table(
              [{"curated vs": arm, "set": key if key != "target_loss" else f"target ({cfg.validation_target})",
                "role": cfg.validation_roles.get(key) or "", "better by (mean)": c["mean"], "sd": c["sd"], "ci95_low": c["ci"][0],
                "ci95_high": c["ci"][1], "verdict": c["verdict"]} for arm, by in paired.items() for key, c in by.items()],
              ["curated vs", "set", "role", "better by (mean)", "sd", "ci95_low", "ci95_high", "verdict"]))}
    md.update(png_metadata(curves_png({arm: ([p["tokens"] for p in curves[arm][0]], [p["target"] for p in curves[arm][0]])
                                       for arm in ARMS}, f"seed {seeds[0]}: {cfg.validation_target} loss ({eval_part})",
                                      "validation loss"),
                           f"{settings.artifacts_uri}/evaluation/curves.png", "loss_curves"))
    context.add_output_metadata(md)
    st_ = {s: len(d) for s, (d, _) in held.items()}
    return {"seeds": seeds, "sets": list(vsets), "target": cfg.validation_target, "evaluated_on": eval_part,
            "roles": {s: cfg.validation_roles.get(s) for s in vsets},
            "weights_from": curated_selection.get("weights_from"),
            "weights": dict(zip(names, curated_selection["weights"])),
            "held_out_docs": st_, "single_best_score": single, "preset": ev["preset"], "token_budget": budget,
            "sampled": not whole,
            "results": results, "curves": curves, "summary": table, "tokens_ratio": ratios,
            "tokens_to_target": to_target, "paired": paired,
            "composition": comp_table}
