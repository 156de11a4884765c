import numpy as np
import pytest
import lightning.pytorch as pl

from metarater_assets.core import corpus, proxy_lm, token_store as ts
from conftest import SAMPLE


@pytest.fixture(scope="module")
def tok_and_docs(tmp_path_factory):
    docs = corpus.read_shard(str(SAMPLE / "raw" / "shard-0004.jsonl")).docs
    texts = docs.column("text").to_pylist()
    tok = proxy_lm.train_tokenizer(texts, vocab_size=512)
    d = tmp_path_factory.mktemp("tok")
    proxy_lm.save_tokenizer(tok, str(d))
    tok = proxy_lm.load_tokenizer(str(d))  # the same from_pretrained path a hub id takes
    ids = proxy_lm.encode(tok, texts)
    return tok, ids


def test_encode_gives_the_ids_of_calling_the_tokenizer(tok_and_docs):
    tok, ids = tok_and_docs
    texts = corpus.read_shard(str(SAMPLE / "raw" / "shard-0004.jsonl")).docs.column("text").to_pylist()
    want = tok(texts + [""], add_special_tokens=False)["input_ids"]
    got = proxy_lm.encode(tok, texts + [""], batch=7)  # several batches, and an empty document
    assert [list(map(int, g)) for g in got] == want and all(g.dtype == np.int32 for g in got)
    n, flat = proxy_lm.encode_flat(tok, texts)
    assert n.tolist() == [len(w) for w in want[:-1]] and flat.tolist() == [i for w in want[:-1] for i in w]


CFG = proxy_lm.get_preset("test", token_budget=8192, checkpoint_every=4)


def _source(tok, ids, cfg=CFG, seed=7):
    return ts.WindowSource(ts.docs_stream(ids[:200], tok.eos_token_id), cfg.seq_len, cfg.batch_size, seed)


def _train(tok, ids, ckpt, callbacks=(), source=None, cfg=CFG):
    model, info = proxy_lm.train_lm(source or _source(tok, ids, cfg), tok.eos_token_id, len(tok), cfg, seed=7,
                                    ckpt_dir=str(ckpt), callbacks=callbacks)
    src = ["s"] * 50
    return proxy_lm.evaluate_loss(model, ids[200:250], src, cfg.seq_len, tok.eos_token_id), info, model


def test_tokenizer_roundtrip_through_memory_fs(tok_and_docs):
    tok, _ = tok_and_docs
    proxy_lm.save_tokenizer(tok, "memory://mr-tok/t")
    again = proxy_lm.load_tokenizer("memory://mr-tok/t")
    text = "Meta-rater selects data."
    assert again(text)["input_ids"] == tok(text)["input_ids"]
    assert again.decode(again(text)["input_ids"]) == text


def test_an_interrupted_tokenizer_save_keeps_the_previous_one(tok_and_docs, tmp_path, monkeypatch):
    import os
    import shutil

    tok, _ = tok_and_docs
    d = str(tmp_path / "tokenizer")
    proxy_lm.save_tokenizer(tok, d)
    other = proxy_lm.train_tokenizer(["a small other corpus, a small other vocabulary"] * 20, vocab_size=300)
    assert len(other) != len(tok)
    text = "Meta-rater selects data."
    real_rename = os.rename

    def rename_fails_for_the_staged_folder(src, dst):
        if ".tmp-" in os.path.basename(str(src)):
            raise OSError("simulated crash while swapping the new tokenizer in")
        return real_rename(src, dst)

    def copy_fails(src, dst, **k):
        os.makedirs(dst)  # half a copy
        shutil.copyfile(os.path.join(src, "tokenizer.json"), os.path.join(dst, "tokenizer.json"))
        raise OSError("simulated crash while staging")

    for target, seam in ((os, ("rename", rename_fails_for_the_staged_folder)),
                         (shutil, ("copytree", copy_fails))):
        with monkeypatch.context() as m:
            m.setattr(target, *seam)
            with pytest.raises(OSError, match="simulated crash"):
                proxy_lm.save_tokenizer(other, d)
        again = proxy_lm.load_tokenizer(d, require_marker=True)  # the previous one, whole
        assert len(again) == len(tok) and again(text)["input_ids"] == tok(text)["input_ids"]
        assert sorted(os.listdir(tmp_path)) == ["tokenizer"]  # no staged or old folder left behind
    proxy_lm.save_tokenizer(other, d)  # an uninterrupted save does replace it
    assert len(proxy_lm.load_tokenizer(d, require_marker=True)) == len(other)


def test_a_tokenizer_folder_without_its_marker_is_refused(tok_and_docs, tmp_path, monkeypatch):
    from metarater_assets.core import storage

    tok, _ = tok_and_docs
    d = tmp_path / "tokenizer"
    proxy_lm.save_tokenizer(tok, str(d))
    (d / proxy_lm.TOKENIZER_MARKER).unlink()
    assert len(proxy_lm.load_tokenizer(str(d))) == len(tok)  # the files are all there ...
    with pytest.raises(FileNotFoundError, match="incomplete"):
        proxy_lm.load_tokenizer(str(d), require_marker=True)  # ... but nothing says the save finished
    # on a remote store the marker goes first and comes back last: a save stopped half-way is refused
    uri = "memory://mr-tok-interrupted/t"
    proxy_lm.save_tokenizer(tok, uri)
    assert len(proxy_lm.load_tokenizer(uri, require_marker=True)) == len(tok)
    real_put, calls = storage.put_atomic, []

    def put_fails_after_one_file(src, dst):
        calls.append(dst)
        if len(calls) > 1:
            raise OSError("simulated crash while uploading")
        return real_put(src, dst)

    monkeypatch.setattr(storage, "put_atomic", put_fails_after_one_file)
    with pytest.raises(OSError, match="simulated crash"):
        proxy_lm.save_tokenizer(tok, uri)
    with pytest.raises(FileNotFoundError, match="incomplete"):
        proxy_lm.load_tokenizer(uri, require_marker=True)


def test_same_weights_and_seed_give_same_loss(tok_and_docs, tmp_path):
    tok, ids = tok_and_docs
    a, _, _ = _train(tok, ids, tmp_path / "a")
    b, _, _ = _train(tok, ids, tmp_path / "b")
    assert abs(a["loss"] - b["loss"]) < 1e-6
    assert a["loss"] < np.log(len(tok))  # it learned something


class _Crash(pl.Callback):
    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if trainer.global_step == 10:
            raise RuntimeError("simulated crash")


def test_interrupted_run_resumes_from_checkpoint(tok_and_docs, tmp_path):
    tok, ids = tok_and_docs
    ref, _, _ = _train(tok, ids, tmp_path / "ref")
    with pytest.raises(RuntimeError, match="simulated crash"):
        _train(tok, ids, tmp_path / "run", callbacks=[_Crash()])
    assert (tmp_path / "run" / "last.ckpt").exists()
    resumed, info, _ = _train(tok, ids, tmp_path / "run")
    assert info["resumed_from_step"] == 8  # last checkpoint before the crash
    assert abs(resumed["loss"] - ref["loss"]) < 1e-6


def test_training_from_a_token_store_equals_an_in_memory_pack(tok_and_docs, tmp_path):
    """The same documents in the same order, once through an on-disk store (memory-mapped,
    memory O(batch)) and once as a plain array packed here by hand: the same batches, the same
    model (1e-6)."""
    tok, ids = tok_and_docs
    w = ts.TokenStoreWriter(str(tmp_path / "store"), vocab_size=len(tok), eos_id=tok.eos_token_id)
    for d in ids[:200]:
        w.add(d)
    w.close()
    store = ts.TokenStore.open(str(tmp_path / "store"))
    assert isinstance(store.tokens, np.memmap)
    packed = np.concatenate([np.append(np.asarray(d, dtype=np.int64), tok.eos_token_id) for d in ids[:200]])
    from_store, _, m1 = _train(tok, ids, tmp_path / "a",
                               source=ts.WindowSource(store.tokens, CFG.seq_len, CFG.batch_size, 7))
    in_memory, _, m2 = _train(tok, ids, tmp_path / "b", source=ts.WindowSource(packed, CFG.seq_len, CFG.batch_size, 7))
    assert abs(from_store["loss"] - in_memory["loss"]) < 1e-6
    for a, b in zip(m1.parameters(), m2.parameters()):
        assert float((a - b).abs().max()) < 1e-6


def test_ngram_proxy_beats_uniform(tok_and_docs):
    tok, ids = tok_and_docs
    cfg = proxy_lm.get_preset("test")
    stream = _source(tok, ids, cfg).stream(cfg.steps)
    assert len(stream) == cfg.steps * cfg.batch_size * (cfg.seq_len + 1)
    ng = proxy_lm.NgramProxy(len(tok)).fit(stream)
    res = ng.evaluate(ids[200:250], ["s"] * 50, cfg.seq_len, tok.eos_token_id)
    assert res["loss"] < np.log(len(tok))


def test_spread_subset_spans_the_whole_set_in_order():
    idx = proxy_lm.spread_subset(200, 50, seed=0)
    assert len(idx) == len(set(idx)) == 50 and idx == sorted(idx)
    # both ends of an ordered file (e.g. one source after another), not its first 50 items
    assert min(idx) < 50 and max(idx) >= 150
    assert idx == proxy_lm.spread_subset(200, 50, seed=0) != proxy_lm.spread_subset(200, 50, seed=1)
    assert proxy_lm.spread_subset(30, 50) == list(range(30))


def test_tokens_to_reach():
    curve = [{"tokens": 0, "x": 5.0}, {"tokens": 100, "x": 4.0}, {"tokens": 200, "x": 3.0}]
    assert proxy_lm.tokens_to_reach(curve, "x", 3.5) == 150.0
    assert proxy_lm.tokens_to_reach(curve, "x", 2.0) is None


def test_config_validation():
    with pytest.raises(ValueError, match="must divide"):
        proxy_lm.ProxyConfig(n_embd=10, n_head=3)
    with pytest.raises(ValueError, match="unknown model preset"):
        proxy_lm.get_preset("nope")


def test_two_process_ddp_gives_the_single_process_loss(tok_and_docs, tmp_path):
    """Lightning DDP on CPU (gloo, 2 forked processes): each rank trains on its half of the same
    global batch, so the result equals one process within float tolerance."""
    tok, ids = tok_and_docs
    cfg = proxy_lm.get_preset("test", token_budget=8192, batch_size=4, checkpoint_every=8)
    losses = {}
    for name, comp in (("single", proxy_lm.Compute()),
                       ("ddp", proxy_lm.Compute(devices=2, strategy="ddp_fork"))):
        model, info = proxy_lm.train_lm(_source(tok, ids, cfg), tok.eos_token_id, len(tok), cfg, seed=7,
                                        ckpt_dir=str(tmp_path / name), compute=comp)
        losses[name] = proxy_lm.evaluate_loss(model, ids[200:250], ["s"] * 50, cfg.seq_len,
                                              tok.eos_token_id)["loss"]
    assert abs(losses["single"] - losses["ddp"]) < 1e-5, losses
