"""Training a model from a run's token store and measuring it: one proxy or evaluation arm, and
many of them at once in worker processes on a CPU. Nothing here imports Dagster, so a worker
process starts with torch, Lightning and transformers only."""
from __future__ import annotations

import tempfile
from dataclasses import replace

from . import proxy_lm, token_store as ts
from .devices import usable_cpus


def train_and_evaluate(kind: str, pcfg: proxy_lm.ProxyConfig, store_uri: str, val_sets: dict, tok_info: dict,
                       ckpt_uri: str, compute, seed: int, callbacks=()) -> tuple[dict, dict, object]:
    """(losses per set, train info, model) of one proxy trained from its token store."""
    store = ts.TokenStore.open(store_uri)
    source = ts.WindowSource(store.tokens, pcfg.seq_len, pcfg.batch_size, seed)
    eos, V = int(tok_info.get("eos_id", 0)), int(tok_info["vocab_size"])
    if kind == "ngram":
        model = proxy_lm.NgramProxy(V).fit(source.stream(pcfg.steps))
        losses = {s: model.evaluate(d, src, pcfg.seq_len, eos) for s, (d, src) in val_sets.items()}
        return losses, {"tokens": pcfg.steps * pcfg.batch_size * pcfg.seq_len, "store_tokens": len(store.tokens)}, model
    model, info = proxy_lm.train_lm(source, eos, V, pcfg, seed, ckpt_uri, compute, callbacks=callbacks)
    losses = {s: proxy_lm.evaluate_loss(model, d, src, pcfg.seq_len, eos, device=compute.torch_device)
              for s, (d, src) in val_sets.items()}
    return losses, {**info, "store_tokens": len(store.tokens)}, model


#: trainings shorter than this many tokens run in this process (a worker's start-up, importing torch
#: and Lightning, costs more than they do)
PARALLEL_MIN_TOKENS = 50_000


def training_workers(comp: proxy_lm.Compute, jobs: int, tokens: int) -> tuple[int, proxy_lm.Compute]:
    """How many trainings run at once, and the compute each gets. On a CPU every training runs
    with ``compute.threads`` torch threads (default 1), each in its own worker process, as many at
    once as the cores allow: small models use several threads poorly (on 2 cores, 2 processes of
    1 thread train about a third faster than one process of 2), and a training's result does not
    depend on the machine's core count. On a GPU they run one after another on the claimed device."""
    if comp.accelerator != "cpu":
        return 1, comp
    threads = comp.threads or 1
    cores = usable_cpus()  # affinity and cgroup quotas
    workers = max(1, min(jobs, cores // threads)) if tokens >= PARALLEL_MIN_TOKENS else 1
    return workers, replace(comp, threads=threads)


def train_one(pcfg: proxy_lm.ProxyConfig, store_uri: str, vsets: dict, tune: dict | None, curve_sets: dict,
              every: int, tokenizer: dict, comp: proxy_lm.Compute, seed: int) -> tuple[dict, dict | None, dict, list]:
    """One arm and seed: (held-out losses, tuning losses of the target's sets or None, train info,
    loss-curve points). A module-level function, so a worker process can run it."""
    import torch

    eos = int(tokenizer.get("eos_id", 0))
    cb = proxy_lm.eval_callback(curve_sets, every, pcfg.seq_len, eos, comp.torch_device)
    threads = torch.get_num_threads()  # train_lm sets compute.threads; this process keeps its own
    try:
        with tempfile.TemporaryDirectory(prefix="metarater-eval-") as tmp:
            losses, info, model = train_and_evaluate("transformer", pcfg, store_uri, vsets, tokenizer, tmp, comp,
                                                     seed, callbacks=[cb])
        tune_losses = None if tune is None else {
            s: proxy_lm.evaluate_loss(model, x, src, pcfg.seq_len, eos, device=comp.torch_device)
            for s, (x, src) in tune.items()}
    finally:
        torch.set_num_threads(threads)
    return losses, tune_losses, info, cb.points


def run_trainings(jobs: list[tuple], workers: int):
    """``train_one`` of every job, in the jobs' order: in this process (``workers`` 1), else in a
    pool of worker processes (joblib's loky: fresh interpreters, no forked torch state). A failed
    training raises here, and the evaluation writes nothing."""
    if workers <= 1:
        return (train_one(*j) for j in jobs)
    from joblib import Parallel, delayed

    return Parallel(n_jobs=workers, backend="loky", return_as="generator")(delayed(train_one)(*j) for j in jobs)
