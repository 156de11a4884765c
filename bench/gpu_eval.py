"""The controlled benchmark's paired evaluation with a larger model on a lent GPU (issue #27, item 6).

Two steps, so that the GPU machine (torch, Lightning and transformers; no Dagster, no network)
needs only this checkout's core modules and a few MB of data:

1. **prepare**, here, after ``bench/controlled.py`` (any protocol):

       python bench/gpu_eval.py prepare --work /tmp/metarater-controlled [--out bench/gpu_eval_input]

   copies what the evaluation trained on into ``--out`` (git-ignored): every arm's and seed's
   token store (curated, random, single best; and the ceiling's, when the run trained it), the
   held-out clean target's tokens, the tokenizer's size and end-of-document id, and the
   evaluation's seeds, token budget and per-arm losses (a check that the target loss is recomputed
   the way the evaluation computes it).

2. **run**, on the GPU machine (``carry: ["bench/gpu_eval_input"]``):

       python bench/gpu_eval.py run --input bench/gpu_eval_input --preset target-20m --epochs 4 --out $OUT

   retrains every arm with ``--preset`` (``target-20m``: 6 layers of width 512, about 21M
   parameters) for ``--epochs`` passes over the evaluation's per-arm tokens, on the same stores and
   with the same seeds as the CPU evaluation, scores the held-out clean target, and prints and
   writes (``OUT/gpu_eval.json``) each arm's loss and the paired comparisons (curated against each
   other arm: the per-seed differences, their mean, SD, mean / SD and bootstrap interval, and the
   verdict, as ``core.stats.paired_comparison`` gives them). ``--seeds 3 --arms
   curated,random,single_best`` keeps it to 9 trainings for a 15-minute loan. ``--device cpu`` runs
   it on a CPU: with the evaluation's own preset and ``--epochs 1`` it gives back the evaluation's
   losses (``tests/assets/test_pipeline.py::test_gpu_eval_retrains_the_evaluations_arms_from_a_prepared_folder``).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

EVAL_ARMS = ("curated", "random", "single_best")
CEILING_ARMS = ("clean_by_single", "clean_target_mix")


def prepare(work: Path, out: Path) -> dict:
    """Copy a finished controlled run's evaluation inputs into ``out``; returns its meta."""
    from metarater_assets.core import storage as st
    from metarater_assets.proxies import target_loss
    from metarater_assets.tokens import validation_sets

    home = work / "home"
    storage, artifacts = home / "storage", home / "artifacts"
    ev = st.read_json(str(storage / "evaluation.json"))
    tok = st.read_json(str(storage / "tokenizer.json"))
    held = validation_sets(str(storage), ev.get("evaluated_on", "held_out"))
    target = ev["target"]
    sets = list(held) if target == "mean" else target.split("+")
    for arm in EVAL_ARMS:  # the evaluation's target loss is the mean over these sets
        for r in ev["results"][arm]:
            assert abs(r["target_loss"] - target_loss({s: {"loss": r[s]} for s in sets}, "mean")) < 1e-9, (arm, r)
    if out.exists():
        shutil.rmtree(out)
    (out / "stores").mkdir(parents=True)
    arms = {}
    for arm in EVAL_ARMS:
        for seed in ev["seeds"]:
            shutil.copytree(artifacts / "evaluation_data" / f"{arm}-{seed}", out / "stores" / f"{arm}-{seed}")
        arms[arm] = {"cpu_loss": [r["target_loss"] for r in ev["results"][arm]]}
    ctl = json.loads((work / "controlled.json").read_text()) if (work / "controlled.json").exists() else {}
    for arm in CEILING_ARMS:
        if all((artifacts / "bench_ceiling" / f"{arm}-{s}").exists() for s in ev["seeds"]):
            for seed in ev["seeds"]:
                shutil.copytree(artifacts / "bench_ceiling" / f"{arm}-{seed}", out / "stores" / f"{arm}-{seed}")
            arms[arm] = {"cpu_loss": ((ctl.get("ceiling") or {}).get("arms", {}).get(arm) or {}).get("loss")}
    flat, offsets, srcs, names = [], [0], [], []
    for s in sets:
        docs, sources = held[s]
        for d, src in zip(docs, sources):
            flat.append(np.asarray(d, dtype=np.int32))
            offsets.append(offsets[-1] + len(d))
            srcs.append(src)
            names.append(s)
    np.savez_compressed(out / "target.npz", tokens=np.concatenate(flat), offsets=np.asarray(offsets, np.int64),
                        sources=np.asarray(srcs), sets=np.asarray(names))
    meta = {"seeds": ev["seeds"], "token_budget": ev["token_budget"], "sampled": ev.get("sampled", True),
            "preset": ev["preset"], "target_sets": sets, "single_best_score": ev["single_best_score"],
            "vocab_size": int(tok["vocab_size"]), "eos_id": int(tok.get("eos_id", 0)), "arms": arms,
            "from": str(work)}
    (out / "meta.json").write_text(json.dumps(meta, indent=2))
    return meta


def run(inp: Path, out: Path, preset: str, epochs: float, device: str, seeds: int | None,
        arms: list[str] | None, overrides: dict) -> dict:
    from metarater_assets.core import proxy_lm
    from metarater_assets.core.stats import paired_comparison
    from metarater_assets.core.trainings import train_one

    meta = json.loads((inp / "meta.json").read_text())
    z = np.load(inp / "target.npz")
    tokens, offsets = z["tokens"], z["offsets"]
    vsets: dict[str, tuple[list, list]] = {}
    for i, (s, src) in enumerate(zip(z["sets"].tolist(), z["sources"].tolist())):
        vsets.setdefault(s, ([], []))
        vsets[s][0].append(tokens[offsets[i]:offsets[i + 1]])
        vsets[s][1].append(src)
    base = proxy_lm.get_preset(preset, **overrides)
    unit = base.batch_size * base.seq_len
    budget = max(unit, int(round(epochs * int(meta["token_budget"]) / unit)) * unit)
    pcfg = base.replace(token_budget=budget)
    gpu = device != "cpu"
    comp = proxy_lm.Compute(accelerator="gpu" if gpu else "cpu", devices=[0] if gpu else 1,
                            precision="bf16-mixed" if gpu else "32-true", threads=None if gpu else 1)
    use_seeds = meta["seeds"][:seeds] if seeds else meta["seeds"]
    use_arms = [a for a in (arms or list(meta["arms"])) if a in meta["arms"]]
    tok = {"vocab_size": meta["vocab_size"], "eos_id": meta["eos_id"]}
    n_params = sum(p.numel() for p in proxy_lm.build_model(pcfg, meta["vocab_size"], meta["eos_id"]).parameters())
    print(f"{preset}: {n_params / 1e6:.1f}M parameters, {pcfg.steps} steps of {unit} tokens ({budget:,} tokens, "
          f"{epochs} x the evaluation's {meta['token_budget']:,}); arms {use_arms}, seeds {use_seeds}, {device}",
          flush=True)
    losses: dict[str, list[float]] = {a: [] for a in use_arms}
    t0 = time.time()
    for seed in use_seeds:
        for arm in use_arms:
            t = time.time()
            held, _, info, _ = train_one(pcfg, str(inp / "stores" / f"{arm}-{seed}"), vsets, None, {}, 10 ** 9, tok,
                                         comp, int(seed))
            losses[arm].append(float(np.mean([held[s]["loss"] for s in meta["target_sets"]])))
            print(f"seed {seed} {arm}: {losses[arm][-1]:.4f} ({time.time() - t:.1f} s, {info['tokens']:,} tokens)",
                  flush=True)
    comps = {arm: paired_comparison(losses["curated"], losses[arm], seed=int(use_seeds[0]))
             for arm in use_arms if arm != "curated" and "curated" in losses}
    res = {"preset": preset, "overrides": overrides, "parameters": n_params, "steps": pcfg.steps, "tokens": budget,
           "epochs": epochs, "device": device, "seeds": use_seeds, "losses": losses, "curated_vs": comps,
           "cpu_losses": {a: meta["arms"][a]["cpu_loss"] for a in use_arms}, "seconds": time.time() - t0,
           "single_best_score": meta["single_best_score"]}
    try:
        import torch

        res["torch"] = torch.__version__
        res["gpu"] = torch.cuda.get_device_name(0) if gpu and torch.cuda.is_available() else None
    except Exception:  # reported, not needed
        pass
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_eval.json").write_text(json.dumps(res, indent=2))
    for arm, v in losses.items():
        print(f"{arm:18s} {np.mean(v):.4f} +- {np.std(v, ddof=1) if len(v) > 1 else 0:.4f}")
    for arm, c in comps.items():
        print(f"curated vs {arm}: better by {c['mean']:+.4f}, 95% CI [{c['ci'][0]:+.4f}, {c['ci'][1]:+.4f}], "
              f"{c['in_sds']:.1f} SD of the paired differences -> {c['verdict']}")
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("--work", default="/tmp/metarater-controlled")
    p.add_argument("--out", default=str(ROOT / "bench" / "gpu_eval_input"))
    r = sub.add_parser("run")
    r.add_argument("--input", default=str(ROOT / "bench" / "gpu_eval_input"))
    r.add_argument("--out", default=os.environ.get("OUT", "/tmp/metarater-gpu-eval"))
    r.add_argument("--preset", default="target-20m")
    r.add_argument("--epochs", type=float, default=4.0, help="passes over the evaluation's per-arm tokens")
    r.add_argument("--device", default="gpu", choices=["gpu", "cpu"])
    r.add_argument("--seeds", type=int, default=0, help="the first N seeds (default: all)")
    r.add_argument("--arms", default="", help="comma-separated arms (default: all prepared; curated is the reference)")
    r.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="model-config override, e.g. lr=0.0006 or batch_size=16")
    a = ap.parse_args(argv)
    if a.cmd == "prepare":
        meta = prepare(Path(a.work), Path(a.out))
        size = sum(f.stat().st_size for f in Path(a.out).rglob("*") if f.is_file())
        print(f"{a.out}: {len(meta['arms'])} arms x {len(meta['seeds'])} seeds, {size / 2 ** 20:.1f} MiB")
        return 0
    overrides = {}
    for o in a.set:
        k, v = o.split("=", 1)
        overrides[k] = json.loads(v)
    run(Path(a.input), Path(a.out), a.preset, a.epochs, a.device, a.seeds or None,
        [x for x in a.arms.split(",") if x] or None, overrides)
    return 0


if __name__ == "__main__":
    sys.exit(main())
