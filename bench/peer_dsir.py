"""Runs inside the peers' venv: the `data-selection` package's HashedNgramDSIR on the same files.

argv: raw.jsonl target.jsonl cache_dir -> prints JSON {fit_s, score_s, docs, weights: [...]}
"""
import json
import sys
import time

from data_selection import HashedNgramDSIR

raw, target, cache = sys.argv[1:4]
t0 = time.perf_counter()
d = HashedNgramDSIR([raw], [target], cache_dir=cache, num_proc=1, ngrams=2, num_buckets=10000)
d.fit_importance_estimator(num_tokens_to_fit="all")
t1 = time.perf_counter()
d.compute_importance_weights()
t2 = time.perf_counter()
import glob
import numpy as np

files = sorted(glob.glob(f"{cache}/log_importance_weights/*.npy"), key=lambda p: int(p.rsplit("/", 1)[1].split(".")[0]))
w = np.concatenate([np.load(f) for f in files])
print(json.dumps({"fit_s": t1 - t0, "score_s": t2 - t1, "docs": int(len(w)), "weights": w.tolist()}))
