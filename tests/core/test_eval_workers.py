"""The evaluation's trainings: in worker processes, one thread each, the same results as in this
process, in the jobs' order."""
import joblib
import numpy as np
import pytest

from metarater_assets.core import trainings
from metarater_assets.core import corpus, proxy_lm, token_store as ts
from conftest import SAMPLE


@pytest.fixture(scope="module")
def jobs(tmp_path_factory):
    d = tmp_path_factory.mktemp("evalw")
    docs = corpus.read_shard(str(SAMPLE / "raw" / "shard-0004.jsonl")).docs.column("text").to_pylist()
    tok = proxy_lm.train_tokenizer(docs, vocab_size=512)
    ids = proxy_lm.encode(tok, docs)
    eos = tok.eos_token_id
    stores = []
    for k, part in enumerate((ids[:120], ids[60:180])):  # two "arms": different documents
        w = ts.TokenStoreWriter(str(d / f"store{k}"), vocab_size=len(tok), eos_id=eos)
        for x in part:
            w.add(x)
        w.close()
        stores.append(str(d / f"store{k}"))
    cfg = proxy_lm.get_preset("test", token_budget=4096)
    held = {"v": (ids[200:230], ["a"] * 15 + ["b"] * 15)}
    tune = {"v": (ids[230:250], ["a"] * 20)}
    info = {"vocab_size": len(tok), "eos_id": eos}
    comp = proxy_lm.Compute(threads=1)
    return [(cfg, s, held, tune, held, 2, info, comp, seed) for s in stores for seed in (0, 1)]


def test_worker_processes_give_the_in_process_results_in_order(jobs):
    here = list(trainings.run_trainings(jobs, 1))
    there = list(trainings.run_trainings(jobs, 2))
    assert len(here) == len(there) == 4
    for (l1, t1, _, p1), (l2, t2, _, p2) in zip(here, there):
        assert l1["v"]["loss"] == pytest.approx(l2["v"]["loss"], abs=1e-6)
        assert t1["v"]["loss"] == pytest.approx(t2["v"]["loss"], abs=1e-6)
        assert [p["step"] for p in p1] == [p["step"] for p in p2] and len(p1) >= 2
        assert np.allclose([p["v"] for p in p1], [p["v"] for p in p2], atol=1e-6)
    # the jobs differ (data, seed), so an out-of-order result would not match
    losses = [r[0]["v"]["loss"] for r in here]
    assert len(set(np.round(losses, 6))) == 4


def test_workers_follow_the_cores_and_the_budget():
    cores = joblib.cpu_count()
    cpu = proxy_lm.Compute()
    n, comp = trainings.training_workers(cpu, 9, 150_000)
    assert n == min(9, cores) and comp.threads == 1
    n, comp = trainings.training_workers(proxy_lm.Compute(threads=cores), 9, 150_000)
    assert n == 1 and comp.threads == cores
    assert trainings.training_workers(cpu, 9, 4096)[0] == 1  # too short to pay for a worker
    gpu = proxy_lm.Compute(accelerator="gpu", devices=[0])
    assert trainings.training_workers(gpu, 9, 150_000) == (1, gpu)
