"""Builds data/released-sample/raw/: real documents of the bundled sample in the layout of the
released SlimPajama-Meta-rater data (text, meta, id + 22 score columns). The rps_* and dsir_*
values are computed by this project's raters (DSIR fitted on these shards with the bundled
targets); the model-rater columns are seeded logits (the released values come from models this
machine cannot download). Run from the repo root: python data/released-sample/make_fixture.py
"""
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import zstandard

from metarater_assets.core import corpus, dsir, signals

ROOT = Path(__file__).resolve().parent
SAMPLE = ROOT.parent / "sample"
SHARDS = {"example_train_0.jsonl.zst": (0, 150), "example_train_1.parquet": (150, 250)}


def main() -> None:
    docs = corpus.read_shard(str(SAMPLE / "raw" / "shard-0004.jsonl")).docs.slice(0, 250).to_pylist()
    texts = [d["text"] for d in docs]
    targets = {n: dsir.count_buckets(corpus.read_documents(str(SAMPLE / "targets" / f"{n}.jsonl.gz"))
                                     .column("text").to_pylist()) for n in ("books", "wiki", "math")}
    model = dsir.DsirModel.fit(dsir.count_buckets(texts), targets)
    ds = model.score(texts)
    sig = signals.compute_signals(texts)
    rng = np.random.default_rng(2504_14194)
    rows = []
    for i, d in enumerate(docs):
        r = {"id": d["doc_id"], "text": d["text"], "meta": {"redpajama_set_name": json.loads(d["meta"]).get("source", d["source"])}}
        r.update({n: (None if sig[n][i] is None else float(sig[n][i])) for n in signals.SIGNAL_NAMES})
        r.update({f"dsir_{n}": float(ds[n][i]) for n in ("wiki", "math", "books")})
        r["fineweb_edu"] = [float(rng.normal(1.5, 0.8))]
        r["qurater"] = [float(x) for x in rng.normal(0, 2, 4)]
        r["ad_en"] = [float(x) for x in rng.normal(0, 1.5, 2)]
        r["fluency_en"] = [float(x) for x in rng.normal(0, 1.5, 2)]
        for dim in ("professionalism", "readability", "reasoning", "cleanliness"):
            r[f"modernbert_{dim}"] = [float(x) for x in rng.normal(0, 1.5, 6)]
        rows.append(r)
    out = ROOT / "raw"
    out.mkdir(exist_ok=True)
    for name, (a, b) in SHARDS.items():
        part = rows[a:b]
        if name.endswith(".parquet"):
            t = pa.Table.from_pylist([{**r, "meta": json.dumps(r["meta"])} for r in part])
            pq.write_table(t, out / name)
        else:
            with open(out / name, "wb") as f, zstandard.ZstdCompressor(level=10).stream_writer(f) as z:
                for r in part:
                    z.write((json.dumps(r) + "\n").encode())


if __name__ == "__main__":
    main()
