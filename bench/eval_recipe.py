"""How much the evaluation's verdict depends on the evaluation model's training recipe.

After a finished ``evaluation`` (``make demo``, or ``bench/controlled.py``'s work folder), this
retrains every arm, the way the evaluation does (worker processes,
one torch thread each on a CPU), on the *same* training data the evaluation wrote (its per-arm, per-seed token
stores, so the selections and samples are fixed) with a few recipes of the same model and token
budget, and reports per recipe: each arm's held-out target loss (mean and SD over seeds), and the
paired differences curated vs random and curated vs the best single score (mean, SD, mean / SD:
the verdict's statistic), against the recipe the evaluation itself used.

    python bench/eval_recipe.py --work /tmp/metarater-controlled [--seeds 3]
                                [--recipes '[{"lr": 0.01, "batch_size": 8}, ...]'] [--no-write]

``--work`` is a folder with ``home/`` and ``metarater.yaml`` (bench/controlled.py's layout), or use
``--home`` / ``--config`` for a demo home. Writes its section of bench/RESULTS.md.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import REPO, code_commit, machine, write_section  # noqa: E402

sys.path.insert(0, str(REPO))

DEFAULT_RECIPES = [{"lr": 0.01, "batch_size": 8}, {"lr": 0.003, "batch_size": 4}, {"lr": 0.003, "batch_size": 2}]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", default="/tmp/metarater-controlled")
    ap.add_argument("--home")
    ap.add_argument("--config")
    ap.add_argument("--seeds", type=int, default=3, help="the evaluation's first N seeds")
    ap.add_argument("--recipes", default=json.dumps(DEFAULT_RECIPES),
                    help="JSON list of model-config overrides (lr, batch_size, n_layer, ...)")
    ap.add_argument("--no-write", action="store_true")
    a = ap.parse_args(argv)
    home = Path(a.home or Path(a.work) / "home")
    config = Path(a.config or Path(a.work) / "metarater.yaml")
    os.environ.update(METARATER_HOME=str(home), METARATER_CONFIG=str(config))
    from metarater_assets.core import proxy_lm, storage as st
    from metarater_assets.evaluation import ARMS, target_sets
    from metarater_assets.core.stats import paired_comparison
    from metarater_assets.core.trainings import run_trainings, training_workers
    from metarater_assets.proxies import target_loss
    from metarater_assets.report import _cfg_settings
    from metarater_assets.tokens import validation_sets
    from resources import Settings

    settings = _cfg_settings(Settings.from_env())
    ev = st.read_json(f"{settings.storage_uri}/evaluation.json")
    tok = st.read_json(f"{settings.storage_uri}/tokenizer.json")
    held = validation_sets(settings.storage_uri, ev.get("evaluated_on", "held_out"))
    vsets = {s: held[s] for s in target_sets(ev["target"], list(held))}
    seeds = ev["seeds"][: a.seeds]
    base = proxy_lm.get_preset(ev["preset"], token_budget=ev["token_budget"])
    proxy_lm.quiet_lightning()
    rows = []
    t_all = time.time()
    for var in json.loads(a.recipes):
        pc = base.replace(**var)
        loss = {arm: [] for arm in ARMS}
        t0 = time.time()
        # the evaluation's own way of running them: worker processes, one thread each on a CPU
        runs = [(arm, seed) for seed in seeds for arm in ARMS]
        workers, comp = training_workers(proxy_lm.Compute(), len(runs), pc.steps * pc.batch_size * pc.seq_len)
        jobs = [(pc, f"{settings.artifacts_uri}/evaluation_data/{arm}-{seed}", vsets, None, {}, pc.steps, tok, comp, seed)
                for arm, seed in runs]
        for (arm, _), (losses, _, _, _) in zip(runs, run_trainings(jobs, workers)):
            loss[arm].append(target_loss(losses, ev["target"]))
        row = {"recipe": var, "steps": pc.steps, "seconds": time.time() - t0,
               "arms": {arm: (float(np.mean(v)), float(np.std(v, ddof=1)) if len(v) > 1 else 0.0)
                        for arm, v in loss.items()}, "per_seed": loss}
        for other in ("random", "single_best"):  # the evaluation's own statistic, and the seeds curated wins
            c = paired_comparison(loss["curated"], loss[other], seed=int(seeds[0]))
            row[other] = {**c, "positive": sum(x > 0 for x in c["diffs"])}
        rows.append(row)
        print(json.dumps(row), flush=True)
    text = report(rows, ev, seeds, base, time.time() - t_all, str(home))
    print(text)
    if not a.no_write:
        write_section("eval-recipe", text)
    return 0


def report(rows, ev, seeds, base, wall, home) -> str:
    lines = ["## The evaluation's verdict against its training recipe (`bench/eval_recipe.py`)", "",
             f"`python bench/eval_recipe.py --seeds {len(seeds)}` on {machine()}, code of commit {code_commit()}: "
             f"the evaluation of `{home}` (preset `{ev['preset']}`, {ev['token_budget']:,} tokens, target "
             f"`{ev['target']}`, single best `{ev.get('single_best_score')}`), every arm retrained on the evaluation's own "
             f"training data (same selections, same samples) for seeds {seeds}, with each recipe below "
             f"(the preset's own: lr {base.lr}, batch {base.batch_size}). {wall / 60:.1f} min.", "",
             "| recipe | steps | curated | random | single best | curated vs random | curated vs single best |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        a = r["arms"]
        cell = lambda c: f"{c['mean']:+.3f} (SD {c['sd']:.3f}, {c['in_sds']:.1f} SD, {c['positive']}/{len(seeds)} seeds)"  # noqa: E731
        lines.append(f"| {', '.join(f'{k} {v}' for k, v in r['recipe'].items())} | {r['steps']} | "
                     + " | ".join(f"{a[x][0]:.3f} ± {a[x][1]:.3f}" for x in ("curated", "random", "single_best"))
                     + f" | {cell(r['random'])} | {cell(r['single_best'])} |")
    lines += ["", "Losses are nats/token on the held-out target; a positive difference means curated is better."]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
