"""`metarater regress` on a table of proxy runs, checked against the pipeline's own regressor.

Exports the tier-1 proxy runs of a finished `make demo` (``.metarater`` by default) in RegMix's
released layout -- ``weights.csv`` (``index`` + one column per score) and ``losses.csv``
(``index`` + one ``metric/<set>_val_loss`` column per validation set) -- then runs
``metarater regress`` on them as a user with runs made elsewhere would, and compares the result
with the ``regressor`` and ``optimal_weights`` assets (the same functions, so the same model and
the same weights are expected).

    python bench/regress_example.py [--home .metarater] [--out /tmp/metarater-regress]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--home", default=".metarater")
    ap.add_argument("--out", default="/tmp/metarater-regress")
    a = ap.parse_args(argv)
    storage = Path(a.home) / "storage"
    reg = json.loads((storage / "regressor.json").read_text())
    opt = json.loads((storage / "optimal_weights.json").read_text())
    names, keys = reg["names"], reg["keys"]
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    runs = {k: json.loads((storage / "proxy_run" / f"{k}.json").read_text()) for k in keys}
    sets = sorted(next(iter(runs.values()))["losses"])
    pd.DataFrame([{"index": i, **{n: runs[k]["weights"][n] for n in names}} for i, k in enumerate(keys)]).to_csv(
        out / "weights.csv", index=False)
    pd.DataFrame([{"index": i, **{f"metric/{s}_val_loss": runs[k]["losses"][s]["loss"] for s in sets}}
                  for i, k in enumerate(keys)]).to_csv(out / "losses.csv", index=False)
    target = reg["target"]
    cols = [f"metric/{s}_val_loss" for s in (sets if target == "mean" else target.split("+"))]
    cmd = [str(Path(sys.executable).parent / "metarater"), "regress", "--weights", str(out / "weights.csv"),
           "--losses", str(out / "losses.csv"), "--on", "index", "--target", ",".join(cols),
           "--seed", str(reg["seed"])]
    print("$ " + " ".join(cmd).replace(str(Path(sys.executable).parent) + "/", ""))
    text = subprocess.check_output(cmd, text=True)
    print(text)
    got = json.loads(subprocess.check_output(cmd + ["--json"], text=True))
    same_model = got["best"] == reg["best"]
    gap = max(abs(got["weights"][n] - opt["weights"][n]) for n in names)
    print(f"the pipeline's regressor: {reg['best']} (held-out Spearman "
          f"{(reg.get('heldout') or {}).get('spearman')}); metarater regress: {got['best']} "
          f"(held-out Spearman {got['heldout_spearman']}); largest weight difference {gap:.2e}")
    return 0 if same_model and gap < 1e-9 else 1


if __name__ == "__main__":
    sys.exit(main())
