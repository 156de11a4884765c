"""The PRRC annotation sample: documents are qualified by their shard, because doc ids are unique
within a shard only (files that number their rows 0..N repeat every id in every shard)."""
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import SAMPLE, read_jsonl_lines
from metarater_assets.core import annotate
from metarater_assets.core.rater_training import load_annotations


def _texts() -> list[str]:
    """Real pool texts: the bundled sample's first shards."""
    jsonl = [json.loads(line)["text"] for line in read_jsonl_lines(SAMPLE / "raw" / "shard-0000.jsonl.gz")]
    parquet = pq.read_table(SAMPLE / "raw" / "shard-0002.parquet", columns=["text"]).column("text").to_pylist()
    texts = list(dict.fromkeys(jsonl[:60] + parquet[:60]))
    assert len(texts) >= 100
    return texts


@pytest.fixture
def pool() -> dict[str, pa.Table]:
    """Two shards whose documents are numbered "0".."49" each, with different texts."""
    texts = _texts()
    return {key: pa.table({"doc_id": [str(i) for i in range(50)], "text": texts[j * 50:(j + 1) * 50]})
            for j, key in enumerate(("part-a.jsonl", "part-b.jsonl"))}


def _sample(pool: dict[str, pa.Table], n: int, seed: int, max_chars: int = 10**9) -> list[dict]:
    reads = []

    def read_texts(key, rows):
        reads.append((key, list(rows)))
        return pool[key].column("text").take(rows).to_pylist()

    out = annotate.sample_pool(sorted(pool), lambda key: pool[key].column("doc_id").to_pylist(), read_texts,
                               n, seed, max_chars)
    assert sum(len(r) for _, r in reads) == n  # the second pass reads the winners' texts only
    return out


def test_the_sample_is_unique_across_shards_and_draws_from_both(pool):
    rows = _sample(pool, 40, seed=3)
    assert len(rows) == 40
    assert len({r["text"] for r in rows}) == 40  # no document twice
    assert len({r["id"] for r in rows}) == 40  # ids qualified by their shard: no duplicate-id quarantine
    assert {r["shard"] for r in rows} == set(pool)
    for r in rows:  # each row's text is its own document's (shard, doc id)
        t = pool[r["shard"]]
        assert r["id"] == annotate.sample_id(r["shard"], r["doc_id"]) == f"{r['shard']}/{r['doc_id']}"
        assert t.column("text")[t.column("doc_id").to_pylist().index(r["doc_id"])].as_py() == r["text"]
    labelled = [{**r, **{d: 3 for d in annotate.DIMENSIONS}} for r in rows]
    good, bad = load_annotations(labelled)
    assert len(good) == 40 and not bad


def test_the_sample_is_deterministic_for_a_seed_and_stable_when_shards_are_added(pool):
    a = _sample(pool, 20, seed=7)
    assert _sample(pool, 20, seed=7) == a
    assert [r["id"] for r in _sample(pool, 20, seed=8)] != [r["id"] for r in a]
    texts = _texts()
    bigger = {**pool, "part-c.jsonl": pa.table({"doc_id": [str(i) for i in range(10)], "text": texts[100:110]})}
    b = _sample(bigger, 20, seed=7)
    # a new shard can only push members out (they are the smallest hashes), never reorder the rest
    kept = [r["id"] for r in a if r["id"] in {x["id"] for x in b}]
    assert kept == [r["id"] for r in b if not r["id"].startswith("part-c")]


def test_a_file_copied_into_two_shards_is_annotated_once(pool):
    """The same documents under the same ids in two shards: one row per text, the sample never
    pays twice for a text."""
    copy = {**pool, "copy-of-a.jsonl": pool["part-a.jsonl"]}
    rows = _sample(copy, 60, seed=0)
    texts = [r["text"] for r in rows]
    assert len(set(texts)) == len(texts)
    assert {r["shard"] for r in rows} >= {"part-b.jsonl"}
    assert len(rows) >= 40  # only the copies' duplicates are dropped


def test_long_texts_are_cut_with_the_truncation_marker(pool):
    rows = _sample(pool, 10, seed=1, max_chars=50)
    assert all(len(r["text"]) <= 50 + len(" $TRUNCATED$") for r in rows)
    assert any(r["text"].endswith(" $TRUNCATED$") for r in rows)


def test_the_asset_reads_the_sample_through_the_shard_files(pool):
    """prrc.sample_pool (the asset's reader) passes each shard's ids and the winners' texts."""
    from metarater_assets import prrc

    class Files:
        def read(self, asset, key, columns):
            assert asset == "raw_docs"
            return pool[key].select(columns)

    class Settings:
        files = Files()

    rows = prrc.sample_pool(Settings(), sorted(pool), 30, 5, 10**9)
    assert rows == _sample(pool, 30, seed=5)
    assert len({r["id"] for r in rows}) == 30 and {r["shard"] for r in rows} == set(pool)
