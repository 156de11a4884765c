"""GPU checks, one short script (run on a lent H100/H200; CPU-only machines skip it):

1. PRRC rater training on the bundled annotations with Lightning in bf16-mixed (MiniLM encoder,
   512 tokens): held-out macro-F1 / accuracy per dimension beside the majority class.
2. Rater inference docs/s with the trained rater: bf16 and fp32, with and without length
   bucketing, on the bundled sample pool.
3. Proxy LM training throughput (GPT-2 small shape) in bf16-mixed vs 32-true through the same
   ``train_lm`` the pipeline uses.

Usage: python bench/gpu_checks.py --encoder PATH_OR_minilm --out DIR
Only core modules are imported (no Dagster), so it runs where just torch / lightning /
transformers / sklearn / pyarrow / xxhash are installed.
"""
import argparse
import gzip
import json
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from metarater_assets.core import corpus, proxy_lm, rater_training as rt, raters  # noqa: E402


def pool_texts() -> list[str]:
    texts = []
    raw = os.path.join(ROOT, "data", "sample", "raw")
    for name in sorted(os.listdir(raw)):
        try:
            texts += corpus.read_shard(os.path.join(raw, name)).docs.column("text").to_pylist()
        except Exception as e:  # e.g. .zst without zstandard installed on the device
            print(f"skip {name}: {type(e).__name__}: {e}", flush=True)
    return texts


def timed(fn, sync):
    sync()
    t = time.perf_counter()
    out = fn()
    sync()
    return out, time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--encoder", default="minilm")
    ap.add_argument("--out", default=os.environ.get("OUT", "bench/out"))
    ap.add_argument("--max-tokens", type=int, default=512)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--skip", default="")
    ap.add_argument("--proxy-steps", type=int, default=60)
    ap.add_argument("--docs", type=int, default=0, help="use only the first N pool documents (a dry run)")
    ap.add_argument("--max-train-docs", type=int, default=0)
    ap.add_argument("--per-dimension", action="store_true",
                    help="also train one rater per PRRC dimension (the paper's layout) to compare with the shared encoder")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    import torch
    import transformers

    res: dict = {"torch": torch.__version__, "transformers": transformers.__version__,
                 "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"}
    gpu = torch.cuda.is_available()
    sync = torch.cuda.synchronize if gpu else (lambda: None)
    print(json.dumps(res), flush=True)

    with gzip.open(os.path.join(ROOT, "data", "sample", "annotations", "prrc.jsonl.gz"), "rt") as f:
        rows = [json.loads(line) for line in f]
    model_dir = os.path.join(tempfile.mkdtemp(), "prrc")
    if "train" not in a.skip:
        cfg = rt.TrainConfig(encoder=a.encoder, max_tokens=a.max_tokens, batch_size=32, lr=5e-5,
                             max_epochs=a.epochs, patience=2, accelerator="gpu" if gpu else "cpu",
                             precision="bf16-mixed" if gpu else "32-true", max_train_docs=a.max_train_docs or None)
        report, wall = timed(lambda: rt.train_rater(rows, model_dir, cfg), sync)
        res["prrc_training"] = {"seconds": round(wall, 1), "split": report["split"],
                                "best_epoch": report["best_epoch"], "epochs_run": report["epochs_run"],
                                "val_macro_f1_by_epoch": report["val_macro_f1_by_epoch"],
                                "test": report["test"],
                                "table": rt.summary_table(report, rt.PAPER_MODERNBERT_F1)}
        print(res["prrc_training"]["table"], flush=True)
        print(f"training: {wall:.1f} s", flush=True)

    if a.per_dimension:
        single = {}
        for d in rt.DIMENSIONS:
            cfg = rt.TrainConfig(encoder=a.encoder, dims=(d,), max_tokens=a.max_tokens, batch_size=32, lr=5e-5,
                                 max_epochs=a.epochs, patience=2, accelerator="gpu" if gpu else "cpu",
                                 precision="bf16-mixed" if gpu else "32-true", max_train_docs=a.max_train_docs or None)
            rep, wall = timed(lambda: rt.train_rater(rows, os.path.join(tempfile.mkdtemp(), d), cfg), sync)
            single[d] = {**rep["test"][d], "seconds": round(wall, 1), "best_epoch": rep["best_epoch"]}
            print(f"per-dimension {d}: macro-F1 {single[d]['macro_f1']:.3f} accuracy {single[d]['accuracy']:.3f} "
                  f"({wall:.1f} s)", flush=True)
        res["prrc_per_dimension"] = single

    texts = pool_texts()
    if a.docs:
        texts = texts[:a.docs]
    res["pool_docs"] = len(texts)
    if "infer" not in a.skip and os.path.exists(model_dir):
        specs = rt.registry_entries(model_dir, rt.DIMENSIONS, max_tokens=512, batch_size=64)
        heads = [s.head for s in specs.values()]
        spec = next(iter(specs.values()))
        inf = {}
        for dtype in ("bf16", None):
            rater = raters.HFRater(spec, device="cuda" if gpu else "cpu", dtype=dtype if gpu else None)
            for bucket in (True, False):  # warm-up: every batch shape once (kernel selection)
                rater.score_heads(texts, heads, sort_by_length=bucket)
            for bucket in (True, False):
                wall = sorted(timed(lambda: rater.score_heads(texts, heads, sort_by_length=bucket), sync)[1]
                              for _ in range(3))[1]  # median of three
                key = f"{dtype or 'fp32'}_{'bucketed' if bucket else 'unsorted'}"
                inf[key] = round(len(texts) / wall, 1)
                print(f"inference {key}: {inf[key]} docs/s", flush=True)
            del rater
            if gpu:
                torch.cuda.empty_cache()
        res["rater_inference_docs_per_s"] = inf

    if "proxy" not in a.skip:
        tok = proxy_lm.train_tokenizer(texts[:2000], vocab_size=8192)
        docs = proxy_lm.encode(tok, texts)
        eos = tok.eos_token_id if tok.eos_token_id is not None else 0
        cfg = proxy_lm.ProxyConfig(n_layer=12, n_embd=768, n_head=12, seq_len=1024, batch_size=16, lr=3e-4,
                                   token_budget=16 * 1024 * a.proxy_steps, checkpoint_every=1000)
        prox = {}
        for precision in ("bf16-mixed", "32-true"):
            comp = proxy_lm.Compute(accelerator="gpu" if gpu else "cpu", precision=precision)
            with tempfile.TemporaryDirectory() as d:
                _, info = proxy_lm.train_lm(docs, eos, len(tok), cfg, seed=0, ckpt_dir=d, compute=comp)
            prox[precision] = {"tokens_per_second": round(info["tokens_per_second"]),
                               "seconds": round(info["train_seconds"], 1),
                               "final_train_loss": round(info["final_train_loss"], 4)}
            print(f"proxy {precision}: {prox[precision]}", flush=True)
        res["proxy_training_gpt2_small"] = prox

    with open(os.path.join(a.out, "gpu_checks.json"), "w") as f:
        json.dump(res, f, indent=2, default=str)


if __name__ == "__main__":
    main()
