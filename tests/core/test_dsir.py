import collections

import numpy as np
import pyarrow as pa

from metarater_assets.core import corpus, dsir
from conftest import SAMPLE


def _pool():
    return pa.concat_tables([corpus.read_shard(s.uri, s.name).docs
                             for s in corpus.list_shards(str(SAMPLE / "raw"))])


def test_matching_source_scores_highest_per_target():
    pool = _pool()
    texts = pool.column("text").to_pylist()
    sources = pool.column("source").to_pylist()
    targets = {n: dsir.count_buckets(corpus.read_documents(str(SAMPLE / "targets" / f"{n}.jsonl.gz"))
                                     .column("text").to_pylist()) for n in ("books", "wiki", "math")}
    model = dsir.DsirModel.fit(dsir.count_buckets(texts), targets)
    scores = model.score(texts)
    expected = {"books": "debian-handbook", "wiki": "foldoc", "math": "math-doc"}
    for name, src in expected.items():
        by = collections.defaultdict(list)
        for s, v in zip(sources, scores[name]):
            by[s].append(v)
        medians = {s: np.median(v) for s, v in by.items() if len(v) >= 5}
        assert max(medians, key=medians.get) == src, (name, sorted(medians.items(), key=lambda kv: -kv[1])[:3])


def test_shard_counts_add_up_to_pool_counts():
    pool = _pool()
    texts = pool.column("text").to_pylist()
    a, b = texts[:1000], texts[1000:]
    np.testing.assert_array_equal(dsir.count_buckets(a) + dsir.count_buckets(b), dsir.count_buckets(texts))


def test_hash_is_unsalted_and_stable():
    flat, offs = dsir.doc_buckets(["the cat sat", ""], buckets=10_000)
    assert offs.tolist() == [0, 5, 5]  # 3 unigrams + 2 bigrams, empty doc has none
    # fixed values: a salted hash would change between interpreters
    import xxhash
    assert flat[0] == xxhash.xxh3_64_intdigest(b"the") % 10_000


def test_empty_document_scores_zero():
    m = dsir.DsirModel.fit(np.ones(100, dtype=np.int64), {"t": np.arange(100)})
    assert m.score([""])["t"][0] == 0.0


def test_a_documents_score_does_not_depend_on_its_batch():
    """Bit for bit: the per-shard step scores a shard in row batches, and a document's score must
    not change with the batch it falls in (nor with the empty documents around it)."""
    texts = _pool().column("text").to_pylist()[:400]
    texts[3] = texts[250] = ""
    model = dsir.DsirModel.fit(dsir.count_buckets(texts),
                               {"t": dsir.count_buckets(texts[::3]), "u": dsir.count_buckets(texts[1::5])})
    whole = model.score(texts)
    for step in (1, 7, 64):
        for name in ("t", "u"):
            parts = np.concatenate([model.score(texts[i:i + step])[name] for i in range(0, len(texts), step)])
            assert parts.tobytes() == whole[name].tobytes(), (step, name)
    assert whole["t"][3] == 0.0 and whole["t"][250] == 0.0
