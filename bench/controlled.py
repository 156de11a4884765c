"""The controlled benchmark: a pool where the right answer is known.

Clean documents from sources the sample pool does not use (the corpus's book chapters,
encyclopedic entries and mathematical software manuals, ``targets/``), split by a hash of the
document id into a disjoint **clean target** (a validation set of ``role: quality``), an
in-distribution sample and the pool. A known share of the pool (40% by default) is corrupted,
each corrupted document with one of five defects, each of which a different score moves:

* ``word_salad``  the words of every line shuffled (n-gram statistics: DSIR)
* ``boilerplate`` a subscription notice repeated until it is about half the document (the
                  top-n-gram fractions, the share of unique words)
* ``char_noise``  a fifth of the letters replaced by digits and symbols (words without letters,
                  unigram entropy)
* ``spam_lines``  an upper-case advertisement after every line (upper-case fraction, terminal
                  punctuation)
* ``fragments``   a few words cut out of mid-sentence (word and sentence counts, terminal
                  punctuation)

DSIR's targets are the reference prose of the corpus (kernel and Python documentation, FOLDOC,
the Jargon File, Webster), so no score is told what the clean pool looks like. Then the whole
chain runs as a user runs it (``metarater run --stage evaluation`` with the demo config), and this
script reports

* the defective share (documents and tokens) of the curated selection, of a random selection of
  the same size (the planted share), and of each single score's selection (its top 15% of tokens,
  in its configured orientation), per defect kind;
* the evaluation's paired verdicts (curated vs random, curated vs the best single score) on the
  clean target, and tokens to target;
* the ceiling: two selections only the ground truth can make (the clean documents ranked by the
  best single score; clean documents in the clean target's source mix), trained and scored as the
  evaluation's arms with the same seeds and compared with them paired by seed. If they do not beat
  the best single score's selection by the verdict's bar either, no weighting of the scores can,
  and the bar is out of reach of the evaluation at this scale (``--no-ceiling`` skips it).

With ``--set evaluation.token_budget=selection`` every evaluation arm trains on its whole selection
(no sample: the seed then draws only the order, the initialisation and the random arm's selection).

The PRRC model raters are trained on the demo's bundled labels (rows that carry their text) and
score this pool as any other; ``--no-prrc`` leaves them out (RPv2 and DSIR only).

    python bench/controlled.py [--work DIR] [--share 0.4] [--seed 0] [--config configs/demo.yaml]
                               [--set proxies.n=128 ...] [--reuse] [--no-prrc] [--no-ceiling]

It writes its section of bench/RESULTS.md and ``DIR/controlled.json``.
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import random
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import REPO, SHARED, code_commit, machine, write_section  # noqa: E402

KINDS = ("word_salad", "boilerplate", "char_noise", "spam_lines", "fragments")
BOILER = "Subscribe to our newsletter for the latest updates, offers and news from our partners."
SPAM = "BUY CHEAP WATCHES NOW LIMITED OFFER CLICK HERE FREE SHIPPING"
NOISE = "0123456789#@%&*$~^|"


def _rng(doc_id: str, seed: int) -> random.Random:
    return random.Random(int(hashlib.sha1(f"{seed}:{doc_id}".encode()).hexdigest()[:16], 16))


def corrupt(text: str, kind: str, rng: random.Random) -> str:
    """``text`` with one defect (deterministic in ``rng``)."""
    lines = text.split("\n")
    if kind == "word_salad":
        out = []
        for line in lines:
            words = line.split()
            rng.shuffle(words)
            out.append(" ".join(words))
        return "\n".join(out)
    if kind == "boilerplate":
        n = max(3, len(text) // (len(BOILER) + 1))
        return text + "\n" + "\n".join([BOILER] * n)
    if kind == "char_noise":
        chars = list(text)
        for i, c in enumerate(chars):
            if c.isalpha() and rng.random() < 0.2:
                chars[i] = rng.choice(NOISE)
        return "".join(chars)
    if kind == "spam_lines":
        return "\n".join(x for line in lines for x in (line, SPAM))
    if kind == "fragments":
        words = text.split()
        k = min(len(words), rng.randint(6, 14))
        start = rng.randint(0, max(0, len(words) - k))
        frag = " ".join(words[start:start + k])
        return re.sub(r"[.!?:;,]+$", "", frag)
    raise ValueError(kind)


def _read(path: Path) -> list[dict]:
    with gzip.open(path, "rt") as f:
        return [json.loads(line) for line in f]


def _part(doc_id: str, seed: int) -> float:
    return int(hashlib.sha1(f"split:{seed}:{doc_id}".encode()).hexdigest()[:12], 16) / 16 ** 12


def _write(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")


def build(work: Path, corpus: Path, share: float, seed: int, shards: int = 4) -> dict:
    """The controlled pool, its clean target, in-distribution sample and DSIR targets under ``work``;
    returns the ground truth ``{doc_id: kind or "clean"}`` (kept out of the pool's files)."""
    clean = [r for name in ("books", "wiki", "math") for r in _read(corpus / "targets" / f"{name}.jsonl.gz")]
    target, indist, pool = [], [], []
    for r in clean:
        u = _part(r["id"], seed)
        (target if u < 0.15 else indist if u < 0.25 else pool).append(r)
    truth = {}
    rng = random.Random(seed)
    order = list(range(len(pool)))
    rng.shuffle(order)
    kinds = {i: KINDS[rank % len(KINDS)] for rank, i in enumerate(order[: int(round(share * len(pool)))])}
    rows = []
    for i, r in enumerate(pool):
        kind = kinds.get(i, "clean")
        text = corrupt(r["text"], kind, _rng(r["id"], seed)) if kind != "clean" else r["text"]
        truth[r["id"]] = kind
        rows.append({"id": r["id"], "text": text, "meta": {"source": r.get("meta", {}).get("source", "clean")}})
    # the in-distribution sample is corrupted like the pool (the pool's own text)
    ind_rows = []
    for r in indist:
        kind = KINDS[_rng(r["id"], seed + 1).randrange(len(KINDS))] if _rng(r["id"], seed + 2).random() < share else None
        ind_rows.append({"id": r["id"], "text": corrupt(r["text"], kind, _rng(r["id"], seed)) if kind else r["text"]})
    order_rows = sorted(rows, key=lambda r: _part(r["id"], seed + 3))  # shards mix sources and defects
    per = -(-len(order_rows) // shards)
    for s in range(shards):
        _write(work / "raw" / f"shard-{s:04d}.jsonl.gz", order_rows[s * per:(s + 1) * per])
    _write(work / "clean_target.jsonl.gz", [{"id": r["id"], "text": r["text"]} for r in target])
    _write(work / "in_distribution.jsonl.gz", ind_rows)
    ref = _read(corpus / "reference.jsonl.gz")
    groups = {"books": ("linux-doc",), "wiki": ("foldoc", "jargon", "gcide"), "math": ("python-doc",)}
    for name, sources in groups.items():
        _write(work / "dsir" / f"{name}.jsonl.gz", [r for r in ref if r.get("meta", {}).get("source") in sources])
    (work / "truth.json").write_text(json.dumps(truth))
    (work / "sources.json").write_text(json.dumps({r["id"]: r["meta"]["source"] for r in rows}))
    mix: dict[str, int] = {}
    for r in target:
        src = r.get("meta", {}).get("source", "clean")
        mix[src] = mix.get(src, 0) + len(r["text"])
    (work / "target_mix.json").write_text(json.dumps({k: v / sum(mix.values()) for k, v in sorted(mix.items())}))
    return truth


def write_config(work: Path, base: Path, overrides: list[str], prrc: bool = True,
                 raters: tuple[str, ...] = ("rpv2", "dsir", "perplexity")) -> Path:
    cfg = yaml.safe_load(base.read_text())
    # the perplexity rater's reference text is, by default, the DSIR targets (the reference prose)
    cfg["raters"] = list(raters)
    cfg["dsir"]["targets"] = {n: str(work / "dsir" / f"{n}.jsonl.gz") for n in ("books", "wiki", "math")}
    cfg["validation"]["sets"] = {
        "clean": {"uri": str(work / "clean_target.jsonl.gz"), "role": "quality"},
        "in_distribution": {"uri": str(work / "in_distribution.jsonl.gz"), "role": "in_distribution"}}
    if prrc and cfg.get("prrc", {}).get("labels"):
        # the PRRC rater is trained on the demo's bundled labels (their rows carry the text) and
        # scores this pool like any other: what a user without labels of their own pool does
        cfg["prrc"]["labels"] = str((base.parent / cfg["prrc"]["labels"]).resolve())
    else:
        cfg.pop("prrc", None)
        cfg.setdefault("model_raters", {})["scores"] = []
    if cfg.get("model_raters", {}).get("registry"):
        cfg["model_raters"]["registry"] = str((base.parent / cfg["model_raters"]["registry"]).resolve())
    for o in overrides:
        path, value = o.split("=", 1)
        node = cfg
        *parents, leaf = path.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = yaml.safe_load(value)
    out = work / "metarater.yaml"
    out.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return out


def selections(home: Path, config: Path, raw: Path) -> dict:
    """Kept document ids of the curated weights, and of each single score's top fraction."""
    os.environ.update(METARATER_HOME=str(home), METARATER_CONFIG=str(config), METARATER_RAW_URI=str(raw))
    from metarater_assets.core import scan
    from metarater_assets.core import storage as st
    from metarater_assets.pool import normalisation, pool_files
    from resources import Settings

    from metarater_assets.report import _cfg_settings

    settings = Settings.from_env()
    mc = _cfg_settings(settings)
    cfg = mc.load()
    stats = st.read_json(f"{settings.storage_uri}/score_stats.json")
    sel = st.read_json(f"{settings.storage_uri}/curated_selection.json")
    norm = normalisation(stats)
    files = pool_files(mc, stats)
    names = list(norm.names)
    W = np.zeros((len(names), 1 + len(names)))
    W[:, 0] = [sel["weights"][sel["names"].index(n)] for n in names]
    for i in range(len(names)):
        W[i, 1 + i] = 1.0
    cur = cfg.curation
    cuts = scan.cuts(files, norm, W, totals=(stats["docs"], stats["tokens"]), fraction=cur["fraction"],
                     by=cur["fraction_of"], token_budget=cur.get("token_budget"))
    kept = {c: [] for c in ["curated", *names]}
    tokens = {}
    for key, row0, c, t in scan.combined(files, norm, W, extra=["doc_id"]):
        ids = t.column("doc_id").to_pylist()
        n = t.column("n_tokens").to_numpy()
        tokens.update(zip(ids, n.tolist()))
        for p, col in enumerate(["curated", *names]):
            mask = cuts[p].keep(key, c[:, p], row0)
            kept[col] += [i for i, k in zip(ids, mask) if k]
    return {"kept": kept, "tokens": tokens, "weights": dict(zip(sel["names"], sel["weights"])),
            "weights_from": sel.get("weights_from")}


def shares(ids: list[str], truth: dict, tokens: dict, sources: dict | None = None) -> dict:
    """Defective share by documents and tokens, each defect's token share, and (with ``sources``)
    the share of the selection's tokens that are clean text of each source (``clean:<source>``)."""
    docs = len(ids)
    tok = sum(tokens[i] for i in ids)
    out = {"docs": docs, "tokens": tok,
           "defective_docs": sum(truth[i] != "clean" for i in ids) / max(docs, 1),
           "defective_tokens": sum(tokens[i] for i in ids if truth[i] != "clean") / max(tok, 1)}
    for k in KINDS:
        out[k] = sum(tokens[i] for i in ids if truth[i] == k) / max(tok, 1)
    for src in sorted(set(sources.values())) if sources else []:
        out[f"clean:{src}"] = sum(tokens[i] for i in ids if truth[i] == "clean" and sources[i] == src) / max(tok, 1)
    return out


def ceiling(work: Path, truth: dict, sources: dict, seed: int = 0) -> dict:
    """What the ground truth allows: two selections no score can make, each of the curated
    selection's tokens, trained and scored exactly as the evaluation trains its arms (its model,
    token budget, sample rule and seeds, on the held-out clean target) and compared, paired by
    seed, with the evaluation's own arms:

    * ``clean_by_single``: the clean documents only, ranked by the evaluation's best single score;
    * ``clean_target_mix``: clean documents only, drawn at random (seeded) in the clean target's
      source mix (by characters).

    If even these do not beat the best single score's selection by the verdict's bar, no weighting
    of the scores can: the bar is out of reach of the evaluation at this scale."""
    from metarater_assets.core import proxy_lm
    from metarater_assets.core import scan
    from metarater_assets.core import storage as st
    from metarater_assets.core.stats import paired_comparison
    from metarater_assets.core.trainings import run_trainings, training_workers
    from metarater_assets.pool import normalisation, pool_files
    from metarater_assets.proxies import target_loss, write_training_data
    from metarater_assets.report import _cfg_settings
    from metarater_assets.tokens import validation_sets
    from resources import Settings

    settings = _cfg_settings(Settings.from_env())
    cfg = settings.load()
    ev = st.read_json(f"{settings.storage_uri}/evaluation.json")
    stats = st.read_json(f"{settings.storage_uri}/score_stats.json")
    tokenizer = st.read_json(f"{settings.storage_uri}/tokenizer.json")
    want = int(st.read_json(f"{settings.storage_uri}/curated_selection.json")["tokens"])
    norm = normalisation(stats)
    single = ev["single_best_score"]
    w_one = np.zeros((len(norm.names), 1))
    w_one[list(norm.names).index(single), 0] = 1.0
    docs = []  # (shard, row, doc_id, tokens, the single score's combined units: the evaluation's ranking)
    for key, row0, c, t in scan.combined(pool_files(settings, stats), norm, w_one, extra=["doc_id"]):
        docs += [(key, row0 + i, d, int(n), int(u)) for i, (d, n, u) in
                 enumerate(zip(t.column("doc_id").to_pylist(), t.column("n_tokens").to_pylist(), c[:, 0]))]
    clean = [d for d in docs if truth[d[2]] == "clean"]

    def fill(cands, budget):
        out, n = [], 0
        for d in cands:
            if n >= budget:
                break
            out.append(d)
            n += d[3]
        return out

    mix = json.loads((work / "target_mix.json").read_text())
    rng = random.Random(seed)
    by_mix = []
    for src, share in mix.items():
        pool_src = [d for d in clean if sources[d[2]] == src]
        rng.shuffle(pool_src)
        by_mix += fill(pool_src, share * want)
    arms = {"clean_by_single": fill(sorted(clean, key=lambda d: (-d[4], d[0], d[1])), want), "clean_target_mix": by_mix}
    seeds = [int(x) for x in ev["seeds"]]
    pcfg = proxy_lm.get_preset(ev["preset"], token_budget=int(ev["token_budget"]))
    sample = int(ev["token_budget"]) if ev.get("sampled", True) else None

    def mask_of(sel):
        rows: dict[str, set] = {}
        for d in sel:
            rows.setdefault(d[0], set()).add(d[1])
        return lambda key, row0, c, t: np.isin(np.arange(row0, row0 + t.num_rows), list(rows.get(key, ())))

    labels = [(arm, s_) for s_ in seeds for arm in arms]
    uris = [f"{settings.artifacts_uri}/bench_ceiling/{arm}-{s_}" for arm, s_ in labels]
    W = np.zeros((len(norm.names), len(labels)))
    W[0, :] = 1.0  # unused: every column's mask is its selection
    data = write_training_data(settings, stats, tokenizer, W, uris, fraction=0.15, by="tokens", token_budget=None,
                               sample_budget=sample, seed=[s_ for _, s_ in labels],
                               masks=[mask_of(arms[arm]) for arm, _ in labels])
    held = validation_sets(settings.storage_uri, "held_out") or validation_sets(settings.storage_uri, "tune")
    workers, comp = training_workers(proxy_lm.Compute(), len(labels), int(ev["token_budget"]))
    jobs = [(pcfg, d["store"]["uri"], held, None, {}, 10 ** 9, tokenizer, comp, s_) for (_, s_), d in zip(labels, data)]
    losses = {arm: [] for arm in arms}
    for (arm, _), (l_, _, info, _) in zip(labels, run_trainings(jobs, workers)):
        losses[arm].append(target_loss(l_, cfg.validation_target))
    out = {"single_best_score": single, "arms": {}}
    for arm, sel in arms.items():
        comp_ = {"docs": len(sel), "tokens": sum(d[3] for d in sel),
                 "mix": {src: sum(d[3] for d in sel if sources[d[2]] == src) / max(1, sum(d[3] for d in sel))
                         for src in mix}}
        vs = {other: paired_comparison(losses[arm], [r["target_loss"] for r in ev["results"][other]], seed=seeds[0])
              for other in ("single_best", "random", "curated")}
        out["arms"][arm] = {"loss": losses[arm], **comp_, "vs": vs}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", default="/tmp/metarater-controlled")
    ap.add_argument("--share", type=float, default=0.4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--config", default=str(REPO / "configs" / "demo.yaml"))
    ap.add_argument("--set", action="append", default=[], metavar="PATH=VALUE",
                    help="config override, e.g. proxies.n=128 (recorded in the results)")
    ap.add_argument("--reuse", action="store_true", help="keep the work folder's state (an incremental run)")
    ap.add_argument("--no-prrc", action="store_true", help="leave the PRRC model raters out (RPv2 and DSIR only)")
    ap.add_argument("--raters", default="rpv2,dsir,perplexity",
                    help="the built-in raters (default: RPv2, DSIR and the perplexity rater)")
    ap.add_argument("--no-write", action="store_true", help="do not write bench/RESULTS.md")
    ap.add_argument("--no-ceiling", action="store_true",
                    help="skip the ground-truth selections trained like the evaluation's arms (about 1.4x the evaluation)")
    a = ap.parse_args(argv)
    work = Path(a.work)
    corpus = SHARED if (SHARED / "targets").is_dir() else REPO / "data" / "sample"
    if not a.reuse and work.exists():
        import shutil

        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    truth = build(work, corpus, a.share, a.seed)
    raters = tuple(r for r in a.raters.split(",") if r)
    config = write_config(work, Path(a.config), a.set, prrc=not a.no_prrc, raters=raters)
    env = {**os.environ, "METARATER_HOME": str(work / "home"), "METARATER_CONFIG": str(config),
           "METARATER_RAW_URI": str(work / "raw")}
    t0 = time.time()
    cli = str(Path(sys.executable).parent / "metarater")
    rc = subprocess.call([cli, "run", "--stage", "evaluation"], env=env)
    wall = time.time() - t0
    if rc != 0:
        print(f"metarater run failed (exit {rc})", file=sys.stderr)
        return rc
    rep = json.loads(subprocess.check_output([cli, "report", "--json"], env=env))
    s = selections(work / "home", config, work / "raw")
    sources = json.loads((work / "sources.json").read_text())
    flags = (["--no-prrc"] if a.no_prrc else []) + ([f"--raters {a.raters}"] if raters != ("rpv2", "dsir", "perplexity") else [])
    res = {"pool_docs": len(truth), "planted_share": a.share, "overrides": a.set + flags, "raters": list(raters),
           "prrc": not a.no_prrc, "wall_s": wall, "commit": code_commit(),
           "curated": shares(s["kept"]["curated"], truth, s["tokens"], sources),
           "pool": shares(list(truth), truth, s["tokens"], sources),
           "singles": {n: shares(ids, truth, s["tokens"], sources) for n, ids in s["kept"].items() if n != "curated"},
           "weights": s["weights"], "weights_from": s["weights_from"], "evaluation": rep.get("evaluation"),
           "regressor": rep.get("regressor"), "tier2": {k: v for k, v in rep.get("proxies", {}).items()
                                                       if k.startswith("tier")}}
    if not a.no_ceiling:
        t1 = time.time()
        res["ceiling"] = ceiling(work, truth, sources, a.seed)
        res["ceiling_s"] = time.time() - t1
    (work / "controlled.json").write_text(json.dumps(res, indent=2))
    text = report(res)
    print(text)
    if not a.no_write:
        write_section("controlled", text)
    return 0


def report(res: dict) -> str:
    ev = res["evaluation"] or {}
    lines = ["## Controlled benchmark: a pool where the right answer is known (`bench/controlled.py`)", "",
             f"`python bench/controlled.py{''.join((' --set ' + o) if '=' in o else (' ' + o) for o in res['overrides'])}` on {machine()}: "
             f"{res['pool_docs']} pool documents, {res['planted_share']:.0%} corrupted (one of "
             f"{len(KINDS)} defects each), the demo config with raters {', '.join(res.get('raters', ['rpv2', 'dsir']))}"
             f"{' (PRRC rater trained on the bundled labels)' if res.get('prrc', True) else ' with PRRC left out'}; the whole chain took "
             f"{res['wall_s'] / 60:.1f} min (code of commit {res.get('commit', 'unrecorded')}).", "",
             "Defective share of each selection (by tokens; a selection is 15% of the pool's tokens), and the "
             "share of its tokens that is clean text of each source (the clean target has the pool's mix):", "",
             "| selection | defective (tokens) | defective (docs) | " + " | ".join(KINDS) + " |",
             "|---|---|---|" + "---|" * len(KINDS)]

    srcs = sorted(k for k in res["pool"] if k.startswith("clean:"))
    lines[-2] += "".join(f" {k} |" for k in srcs)
    lines[-1] += "---|" * len(srcs)

    def row(name, s):
        return (f"| {name} | {s['defective_tokens']:.1%} | {s['defective_docs']:.1%} | "
                + " | ".join(f"{s[k]:.1%}" for k in KINDS) + " |" + "".join(f" {s.get(k, 0):.1%} |" for k in srcs))

    lines.append(row("pool (= random, in expectation)", res["pool"]))
    lines.append(row(f"**curated** ({res['weights_from']})", res["curated"]))
    for n, s in sorted(res["singles"].items(), key=lambda kv: kv[1]["defective_tokens"]):
        lines.append(row(f"single: {n}", s))
    if ev:
        lines += ["", f"Evaluation on the clean target ({ev.get('target')}), paired by seed "
                      f"({len(ev.get('seeds', []))} seeds):", ""]
        for arm, c in (ev.get("comparisons") or {}).items():
            lines.append(f"- curated vs {arm}: better by {c['mean']:+.4f} nats, 95% CI [{c['ci'][0]:+.4f}, "
                         f"{c['ci'][1]:+.4f}], {c['in_sds']:.1f} SD of the paired differences: **{c['verdict']}**")
        lines.append(f"- losses: curated {np.mean(ev['curated_loss']):.4f}, random {np.mean(ev['random_loss']):.4f}, "
                     f"best single score ({ev['single_best_score']}) {np.mean(ev['single_best_loss']):.4f}")
        for t in ev.get("tokens_to_target") or []:
            lines.append(f"- tokens to target, seed {t['seed']}: curated reaches random's final loss at "
                         + ((("at most " if t.get("at_most") else "") + f"{t['ratio']:.2f}x its tokens"
                             + (" (the curve's first point)" if t.get("at_most") else ""))
                            if t["ratio"] is not None else "no point (not reached)"))
    ce = res.get("ceiling")
    if ce:
        lines += ["", "What the ground truth allows (`ceiling`: selections no score can make, of the curated "
                      "selection's tokens, trained and scored as the evaluation's arms, same seeds; "
                      f"{res.get('ceiling_s', 0) / 60:.1f} min):", "",
                  "| selection | docs | loss (mean ± SD) | vs best single score | vs random | vs curated |",
                  "|---|---|---|---|---|---|"]
        names = {"clean_by_single": f"clean documents only, by {ce['single_best_score']}",
                 "clean_target_mix": "clean documents only, the clean target's source mix"}
        for arm, v in ce["arms"].items():
            cell = lambda c: f"{c['mean']:+.3f} ({c['in_sds']:.1f} SD)"  # noqa: E731
            lines.append(f"| {names.get(arm, arm)} | {v['docs']} | {np.mean(v['loss']):.3f} ± {np.std(v['loss'], ddof=1):.3f} | "
                         f"{cell(v['vs']['single_best'])} | {cell(v['vs']['random'])} | {cell(v['vs']['curated'])} |")
        lines.append("")
        lines.append("(\"vs\": the other arm's loss minus this one's, per seed; positive = this selection is better.)")
    r = res.get("regressor") or {}
    if r:
        lines.append(f"- regressor: {r.get('model')}, held-out Spearman {r.get('heldout_spearman')}")
    t2 = res.get("tier2") or {}
    if t2.get("tier2_optimum"):
        o = t2["tier2_optimum"]
        lines.append(f"- tier 2: predicted optimum ranks {o['rank']} of {o['of']}")
    top = sorted(res["weights"].items(), key=lambda kv: -kv[1])[:6]
    lines.append("- curated weights (top 6): " + ", ".join(f"{k} {v:.3f}" for k, v in top))
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
