"""Token stores: a permutation of windows, write / read back on any fsspec URI, never an
incomplete store read as complete."""
import numpy as np
import pytest

from metarater_assets.core import token_store as ts


@pytest.mark.parametrize("n", [1, 2, 3, 17, 64, 1000, 4097])
def test_permute_is_a_bijection_and_seeded(n):
    p = ts.permute(np.arange(n), n, seed=5)
    assert sorted(p.tolist()) == list(range(n))
    q = ts.permute(np.arange(n), n, seed=6)
    if n > 3:
        assert p.tolist() != q.tolist()


@pytest.mark.parametrize("uri", ["local", "memory://mr-store/run-1"])
def test_store_round_trip(uri, tmp_path):
    uri = str(tmp_path / "store") if uri == "local" else uri
    docs = [np.arange(5), np.array([7, 8]), np.array([], dtype=int), np.array([300, 301, 302])]
    w = ts.TokenStoreWriter(uri, vocab_size=1000, eos_id=0, meta={"run": "x"})
    for d in docs:
        w.add(d)
    info = w.close()
    assert info["n_docs"] == 4 and info["n_tokens"] == 5 + 2 + 0 + 3 + 4 and info["run"] == "x"
    s = ts.TokenStore.open(uri, cache_dir=str(tmp_path / "cache"))
    assert [s.doc(i).tolist() for i in range(4)] == [d.tolist() for d in docs]
    # the stream is every document followed by EOS, as docs_stream builds it independently
    assert np.asarray(s.tokens).tolist() == [0, 1, 2, 3, 4, 0, 7, 8, 0, 0, 300, 301, 302, 0]


def test_a_store_killed_while_committing_is_refused(tmp_path):
    """SIGKILL between the data files and the marker (the fault-injection point in atomic_open):
    the bytes are there, the store is not complete, and nothing reads it."""
    import os
    import subprocess
    import sys

    code = ("import numpy as np\nfrom metarater_assets.core import token_store as ts\n"
            f"w = ts.TokenStoreWriter({str(tmp_path / 's')!r}, vocab_size=10, eos_id=0)\n"
            "w.add(np.array([1, 2]))\nw.close()\n")
    env = {**os.environ, "METARATER_CRASH_BEFORE_COMMIT": "store.json"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True)
    assert out.returncode == -9, out.stderr
    assert (tmp_path / "s" / "tokens.bin").exists() and not (tmp_path / "s" / "store.json").exists()
    with pytest.raises(FileNotFoundError, match="missing or incomplete"):
        ts.TokenStore.open(str(tmp_path / "s"))
    with pytest.raises(ValueError, match="outside"):
        ts.TokenStoreWriter(str(tmp_path / "t"), vocab_size=10, eos_id=0).add(np.array([10]))


def test_windows_are_a_function_of_the_step_and_ranks_split_the_batch():
    tokens = np.arange(10 * 9)  # 10 windows of seq_len 8 + 1
    src = ts.WindowSource(tokens, seq_len=8, batch_size=4, seed=3)
    assert src.n_windows == 10
    b5 = src.batch(5)
    assert b5.shape == (4, 9) and (b5 == src.batch(5)).all()  # same step, same batch
    # each row is one stored window; epochs (steps 0-1 hold windows 0..7, step 2 wraps) cover
    # every window once before any repeats
    rows = np.concatenate([src.batch(s) for s in range(5)])  # 20 windows = 2 epochs
    starts = rows[:, 0] // 9
    assert sorted(starts[:10].tolist()) == list(range(10)) and sorted(starts[10:].tolist()) == list(range(10))
    assert (rows[:, 1:] == rows[:, :1] + np.arange(1, 9)).all()
    halves = np.concatenate([src.batch(5, rank=0, world=2), src.batch(5, rank=1, world=2)])
    assert sorted(map(tuple, halves.tolist())) == sorted(map(tuple, b5.tolist()))
    with pytest.raises(ValueError, match="shorter than one window"):
        ts.WindowSource(np.arange(5), seq_len=8, batch_size=1, seed=0)
