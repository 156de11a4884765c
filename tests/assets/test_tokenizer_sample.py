"""The tokenizer's training sample is spread over the whole pool, not the first shards."""
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from metarater_assets import identity, tokens
from resources import ShardFiles


class _NoChecks:
    """A tracer that reads like the real one and accepts any identity."""

    batches, _check_schema = identity.Tracer.batches, identity.Tracer._check_schema

    def check_file(self, *args):  # identities are tested elsewhere (tests/assets/test_identity.py)
        pass


def _pool(tmp_path, sizes: dict[str, int]):
    files = ShardFiles(str(tmp_path / "storage"))
    for key, n in sizes.items():
        path = files.uri("raw_docs", key)
        (tmp_path / "storage" / "raw_docs").mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table({"doc_id": [f"{key}-{i}" for i in range(n)],
                                 "text": [f"{key} document {i}" for i in range(n)]}), path)
    return SimpleNamespace(files=files)


def test_a_pool_sorted_by_source_gives_a_sample_of_every_shard(tmp_path):
    # three shards, one source each, 3000 documents; a budget of 600 (a fifth) would be the first
    # shard alone in shard order
    sizes = {"a-books.jsonl": 1000, "b-code.jsonl": 1500, "c-web.jsonl": 500}
    settings = _pool(tmp_path, sizes)
    texts = list(tokens._texts(settings, list(sizes), 600, _NoChecks()))
    assert len(texts) == 600 and len(set(texts)) == 600  # exactly the budget, no document twice
    per = {k: sum(t.startswith(k + " ") for t in texts) for k in sizes}
    for k, n in sizes.items():  # each shard in proportion to its size (a fifth), give or take sampling noise
        assert abs(per[k] - n / 5) < 4 * np.sqrt(n / 5), per
    # deterministic: the same sample again; and a pool under the budget is read whole
    assert list(tokens._texts(settings, list(sizes), 600, _NoChecks())) == texts
    assert len(list(tokens._texts(settings, list(sizes), 5000, _NoChecks()))) == 3000


def test_sample_threshold_keeps_exactly_the_lowest_hashes():
    rng = np.random.default_rng(0)
    batches = [rng.integers(0, 2**63, size=n, dtype=np.uint64) for n in (10, 400, 3, 250)]
    everything = np.sort(np.concatenate(batches))
    assert tokens.sample_threshold(iter(batches), 100) == int(everything[99])
    assert tokens.sample_threshold(iter(batches), 663) is None  # the pool fits the budget
