"""Differential harness: an incremental run gives exactly what a fresh run gives.

A seeded random sequence of operations on a tiny pool -- add, modify or remove a raw file, change a
config field (drawn from every section that feeds an asset), or ``kill -9`` a ``metarater run`` at a
random moment -- each followed by a run to tier 2 (``--stage confirm``: the curated corpus and the
transformer proxies). After each step the home that lived through the sequence is compared with a
fresh home built from the same files and config: every proxy loss of both tiers, the regressor's
choice and data, the optimal weights, the curated files (names and rows) and the manifest
(timestamps, run ids and the homes' own paths aside).

After a change of raw files the run is first a plain ``metarater run``, which must leave the fits
(tokenizer, proxies, regressor ...) untouched and say they predate the data, then ``--refit``;
after a config change or a kill it is a plain ``metarater run``.

    python tests/harness/differential.py --sequences 20 --steps 6 --seed 100   (``make differential``)
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "data" / "sample"
DOCS = 24  # documents per raw file: the pool stays tiny, the comparison cheap

#: config fields, one or more per section that feeds an asset: (section, field, values to draw from)
CONFIG_FIELDS = [
    ("ingest", "exclude", [[], ["pool-b.jsonl.gz"]]),
    ("dsir", "buckets", [2000, 3000]),
    ("validation", "max_docs", [30, 40]),
    ("validation", "held_out", [0.5, 0.3]),
    ("tokenizer", "vocab_size", [600, 800]),
    ("tokenizer", "sample_docs", [60, 200_000]),
    ("stats", "sample_docs", [500, 5000]),
    ("scores", "orientation", [{}, {"rps_doc_word_count": "low"}]),
    ("proxies", "fraction", [0.15, 0.4]),
    ("proxies", "n", [6, 8]),
    ("proxies", "single_score_runs", [False, True]),
    ("proxies", "seed", [0, 1]),
    ("proxies", "token_budget", [4096, 3072]),
    ("confirm", "spread", [2, 3]),
    ("confirm", "token_budget", [2048, 3072]),
    ("regressor", "folds", [3, 4]),
    ("regressor", "models", [["ridge", "linear"], ["ridge", "gbr"]]),
    ("curation", "fraction", [0.15, 0.3]),
    ("curation", "fraction_of", ["tokens", "docs"]),
]
OPS = ("add", "modify", "remove", "config", "kill")


def sample_lines() -> list[str]:
    """Real documents of the bundled sample, in a fixed order (every raw file is cut from these)."""
    out = []
    with gzip.open(SAMPLE / "raw" / "shard-0000.jsonl.gz", "rt", encoding="utf-8") as f:
        out += [line for line in f if line.strip()]
    return out


def base_config(path: Path) -> dict:
    cfg = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())
    for name in ("books", "wiki", "math"):
        cfg["dsir"]["targets"][name] = str(SAMPLE / "targets" / f"{name}.jsonl.gz")
    cfg["dsir"]["buckets"] = 2000
    cfg["validation"] = {"sets": {"validation": str(SAMPLE / "validation.jsonl.gz"),
                                  "reference": str(SAMPLE / "reference.jsonl.gz")},
                         "max_docs": 30, "held_out": 0.5, "target": "mean"}
    cfg["tokenizer"] = {"vocab_size": 600}
    cfg["proxies"].update(n=6, kind="ngram", preset="test", token_budget=4096, single_score_runs=False)
    cfg["confirm"] = {"kind": "transformer", "preset": "test", "token_budget": 2048, "spread": 2,
                      "single_score_runs": False}
    cfg["regressor"] = {"candidates": 5000, "bootstrap": 3, "folds": 3, "models": ["ridge", "linear"]}
    cfg["curation"] = {"fraction": 0.15, "fraction_of": "tokens", "format": "parquet"}
    cfg["compute"].update(workers=1, shards_per_run=8)
    cfg.pop("prrc", None)
    cfg["model_raters"] = {"registry": str(REPO / "configs" / "raters.yaml"), "scores": []}
    cfg["raters"] = ["rpv2", "dsir"]
    cfg["scores"] = {"orientation": {}}
    cfg["stats"] = {"sample_docs": 5000}
    cfg["ingest"] = {"exclude": []}
    return cfg


@dataclass
class World:
    """The files and config every home sees, and what the sequence has done to them."""

    root: Path
    rng: random.Random
    lines: list[str]
    cfg: dict
    files: dict[str, tuple[int, int]] = field(default_factory=dict)  # name -> (start, count) in lines
    next_start: int = 0
    log: list[str] = field(default_factory=list)

    @property
    def raw(self) -> Path:
        return self.root / "raw"

    @property
    def config_path(self) -> Path:
        return self.root / "config.yaml"

    def write_file(self, name: str, start: int, count: int) -> None:
        self.files[name] = (start, count)
        body = "".join(self.lines[(start + i) % len(self.lines)] for i in range(count))
        tmp = self.raw / f".{name}.tmp"
        with gzip.open(tmp, "wt", encoding="utf-8") as f:
            f.write(body)
        os.replace(tmp, self.raw / name)

    def new_file(self, name: str) -> None:
        self.write_file(name, self.next_start, DOCS)
        self.next_start += DOCS

    def save_config(self) -> None:
        self.config_path.write_text(yaml.safe_dump(self.cfg))

    def setup(self) -> None:
        self.raw.mkdir(parents=True, exist_ok=True)
        for name in ("pool-a.jsonl.gz", "pool-b.jsonl.gz", "pool-c.jsonl.gz"):
            self.new_file(name)
        self.save_config()

    # -- operations ----------------------------------------------------------------------------
    def add(self) -> str:
        name = f"pool-{len(self.files) + 100}.jsonl.gz"
        self.new_file(name)
        return f"add {name}"

    def modify(self) -> str:
        name = self.rng.choice(sorted(self.files))
        start, count = self.files[name]
        how = self.rng.choice(["shift", "shrink", "grow"])
        if how == "shift":
            self.write_file(name, self.next_start, count)
            self.next_start += count
        elif how == "shrink":
            self.write_file(name, start, max(8, count - 6))
        else:
            self.write_file(name, start, count + 6)
        return f"modify {name} ({how})"

    def remove(self) -> str:
        if len(self.files) <= 2:
            return self.add()
        name = self.rng.choice(sorted(self.files))
        del self.files[name]
        (self.raw / name).unlink()
        return f"remove {name}"

    def config(self, field_: tuple | None = None) -> str:
        section, key, values = field_ or self.rng.choice(CONFIG_FIELDS)
        cur = self.cfg.setdefault(section, {}).get(key)
        choices = [v for v in values if v != cur] or values
        self.cfg[section][key] = self.rng.choice(choices)
        self.save_config()
        return f"config {section}.{key} = {self.cfg[section][key]!r}"


def _env(home: Path, world: World) -> dict:
    env = {**os.environ, "METARATER_HOME": str(home), "METARATER_RAW_URI": str(world.raw),
           "METARATER_CONFIG": str(world.config_path), "METARATER_LOG_LEVEL": "CRITICAL"}
    env.pop("DAGSTER_HOME", None)
    return env


@dataclass
class Done:
    returncode: int
    stdout: str
    stderr: str = ""


def cli(home: Path, world: World, *args: str, timeout: float = 900, ephemeral: bool = False) -> Done:
    """``metarater run --stage confirm [args]`` on ``home``: in this process (what the command does,
    without paying Python's start-up at every step), on the home's persistent Dagster instance (a
    fresh home, compared and thrown away: an in-memory one)."""
    import dagster as dg

    from metarater_assets.runner import run_pipeline
    from resources import Settings

    old = os.environ.get("DAGSTER_HOME")
    settings = Settings(home=str(home), raw_uri=str(world.raw), config_path=str(world.config_path))
    os.environ.pop("DAGSTER_HOME", None)
    settings.ensure_dagster_home()
    lines: list[str] = []
    try:
        with (dg.DagsterInstance.ephemeral() if ephemeral else dg.DagsterInstance.get()) as instance:
            summary = run_pipeline(settings, "confirm", instance=instance, echo=lines.append,
                                   refit="--refit" in args)
        bad = summary.failed or summary.blocked
        return Done(1 if bad else 0, "\n".join(lines + [f"failed: {summary.failed}", f"blocked: {summary.blocked}"]
                                                if bad else lines))
    except Exception:  # noqa: BLE001 -- reported as the step's failure
        import traceback

        return Done(2, "\n".join(lines), traceback.format_exc())
    finally:
        if old is None:
            os.environ.pop("DAGSTER_HOME", None)
        else:
            os.environ["DAGSTER_HOME"] = old


def killed_run(home: Path, world: World, rng: random.Random, max_delay: float) -> float:
    """Start a run and SIGKILL it (and all it started) after a random delay; return the delay."""
    delay = rng.uniform(0.5, max_delay)
    proc = subprocess.Popen([sys.executable, "-m", "metarater_assets.cli", "run", "--stage", "confirm"],
                            env=_env(home, world), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True, cwd=REPO)
    try:
        proc.wait(delay)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    return delay


# -- what is compared ---------------------------------------------------------------------------
def _json(path: Path):
    return json.loads(path.read_text()) if path.exists() else None


def snapshot(home: Path) -> dict:
    """Every result the comparison covers, with the home's own paths, run ids and times taken out."""
    import pyarrow.parquet as pq

    store = home / "storage"
    out: dict = {}
    for plan, runs in (("proxy_plan", "proxy_run"), ("confirm_plan", "confirm_run")):
        p = _json(store / f"{plan}.json")
        keys = [r["key"] for r in p["runs"]] if p else []
        res = {}
        for k in keys:
            r = _json(store / runs / f"{k}.json")
            res[k] = None if r is None else {"losses": r["losses"], "target_loss": r["target_loss"],
                                             "selection": r["selection"], "sampled": r["sampled"]}
        out[runs] = res
    reg = _json(store / "regressor.json") or {}
    out["regressor"] = {k: reg.get(k) for k in ("best", "keys", "X", "y", "names", "missing_runs")}
    opt = _json(store / "optimal_weights.json") or {}
    out["optimal_weights"] = {k: opt.get(k) for k in ("weights", "predicted_loss", "model")}
    sel = _json(store / "curated_selection.json") or {}
    out["curated_selection"] = {k: sel.get(k) for k in ("cut", "docs", "tokens", "per_shard", "files", "weights")}
    curated = home / "curated"
    files = {}
    for f in sorted(curated.glob("*.parquet")) if curated.exists() else []:
        t = pq.read_table(f)
        files[f.name] = {"rows": t.num_rows, "doc_id": t.column("doc_id").to_pylist(),
                         "raw": list(zip(t.column("raw_shard").to_pylist(), t.column("raw_row").to_pylist())),
                         "text_chars": sum(len(x) for x in t.column("text").to_pylist())}
    out["curated_files"] = files
    man = _json(curated / "_manifest.json") or {}
    for k in ("created", "dagster_run_id", "uri"):
        man.pop(k, None)
    man["files"] = [Path(f).name for f in man.get("files", [])]
    out["manifest"] = json.loads(json.dumps(man).replace(str(home), "<home>"))
    t2 = _json(store / "tier_agreement.json") or {}
    out["tier_agreement"] = {k: t2.get(k) for k in ("spearman", "pairs", "optimum")}
    return out


def differences(a, b, path: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b), key=str):
            if k not in a or k not in b:
                out.append(f"{path}/{k}: only in {'incremental' if k in a else 'fresh'}")
            else:
                out += differences(a[k], b[k], f"{path}/{k}")
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        out = []
        for i, (x, y) in enumerate(zip(a, b)):
            out += differences(x, y, f"{path}[{i}]")
        return out
    if isinstance(a, float) and isinstance(b, float) and a != a and b != b:  # NaN == NaN here
        return []
    return [] if a == b else [f"{path}: incremental {_short(a)} != fresh {_short(b)}"]


def _short(v) -> str:
    s = json.dumps(v, default=str)
    return s if len(s) < 160 else s[:157] + "..."


# -- one sequence -------------------------------------------------------------------------------
def _fits(home: Path) -> dict:
    """The identities of the fits refit on request (what a plain run must leave alone)."""
    store = home / "storage"
    out = {}
    for name in ("tokenizer", "dsir_model", "regressor"):
        j = store / f"{name}.json"
        if j.exists():
            out[name] = json.loads(j.read_text()).get("identity")
    for d in ("proxy_run", "confirm_run"):
        for f in sorted((store / d).glob("*.json")) if (store / d).exists() else []:
            out[f"{d}/{f.stem}"] = json.loads(f.read_text()).get("identity")
    return out


def run_sequence(root: Path, seed: int, steps: int, ops: list[str] | None = None, log=print,
                 max_kill_delay: float = 25.0, plain_checks: int | None = None) -> list[str]:
    """Run one seeded sequence; return the problems found (empty: every step equalled a fresh run).
    ``plain_checks``: after how many raw-file changes (at most) the plain run before ``--refit`` is
    checked (None: after every one)."""
    rng = random.Random(seed)
    shutil.rmtree(root, ignore_errors=True)
    world = World(root, rng, sample_lines(), base_config(root / "config.yaml"))
    world.setup()
    home = root / "home"
    problems: list[str] = []
    first = cli(home, world)
    if first.returncode != 0:
        return [f"seed {seed}: the first run failed: {first.stdout[-1500:]}{first.stderr[-1500:]}"]
    plan = ops or [rng.choice(OPS) for _ in range(steps)]
    for i, op in enumerate(plan):
        note = f"seed {seed} step {i}: "
        if op in ("add", "modify", "remove") and (plain_checks is None or plain_checks > 0):
            plain_checks = None if plain_checks is None else plain_checks - 1
            what = getattr(world, op)()
            fits = _fits(home)
            plain = cli(home, world)
            if plain.returncode != 0:
                problems.append(note + f"{what}: the plain run failed: {plain.stdout[-1500:]}{plain.stderr[-800:]}")
                break
            if _fits(home) != fits:
                changed = sorted(k for k in set(fits) | set(_fits(home)) if fits.get(k) != _fits(home).get(k))
                problems.append(note + f"{what}: a plain run changed fits refit on request only: {changed[:5]}")
            if "fitted on older data" not in plain.stdout:
                problems.append(note + f"{what}: the plain run did not say the fits predate the data")
            done = cli(home, world, "--refit")
        elif op in ("add", "modify", "remove"):
            what = getattr(world, op)()
            done = cli(home, world, "--refit")
        elif op == "config":
            what = world.config()
            done = cli(home, world)
        else:
            delay = killed_run(home, world, rng, max_kill_delay)
            what = f"kill -9 after {delay:.1f}s"
            if rng.random() < 0.5:  # a change lands before the rerun half of the time
                what += "; then " + world.config()
            done = cli(home, world)
        log(note + what)
        if done.returncode != 0:
            problems.append(note + f"{what}: the run failed (exit {done.returncode}): "
                            f"{done.stdout[-2000:]}{done.stderr[-800:]}")
            break
        fresh_home = root / f"fresh-{i}"
        fresh = cli(fresh_home, world, ephemeral=True)
        if fresh.returncode != 0:
            problems.append(note + f"{what}: the fresh run failed: {fresh.stdout[-1500:]}")
            break
        diff = differences(snapshot(home), snapshot(fresh_home))
        shutil.rmtree(fresh_home, ignore_errors=True)
        if diff:
            problems.append(note + f"{what}: incremental != fresh:\n    " + "\n    ".join(diff[:12])
                            + (f"\n    ... {len(diff) - 12} more" if len(diff) > 12 else ""))
            break
    return problems


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sequences", type=int, default=10)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--seed", type=int, default=int(time.time()) % 100_000, help="first sequence's seed")
    ap.add_argument("--root", default="/tmp/metarater-differential")
    args = ap.parse_args()
    failed = 0
    t0 = time.time()
    for s in range(args.seed, args.seed + args.sequences):
        problems = run_sequence(Path(args.root) / f"seq-{s}", s, args.steps)
        failed += bool(problems)
        print(f"sequence seed {s}: {'ok' if not problems else 'FAILED'}", flush=True)
        for p in problems:
            print("  " + p, flush=True)
    print(f"{args.sequences - failed} passed, {failed} failed ({args.sequences} sequences of {args.steps} steps, "
          f"seeds {args.seed}..{args.seed + args.sequences - 1}, {time.time() - t0:.0f} s)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
