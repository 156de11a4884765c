"""A shard streamed in small row batches gives exactly the outputs of one batch per shard: the
per-shard files (scores, token ids, the index), the cuts, the proxies' data and the curated
corpus. Memory per step is one batch (``core.storage.SHARD_BATCH_ROWS``, ``core.scan.batch_rows``);
bench/shard_memory.py measures it on 20k- and 200k-document shards."""
import json

import dagster as dg
import pyarrow.parquet as pq
import pytest

from metarater_assets.core import scan, storage
from metarater_assets.runner import run_pipeline
from resources import Settings
from conftest import write_config, write_small_shards

PER_SHARD = ("raw_docs", "rpv2_scores", "dsir_counts", "dsir_scores", "doc_tokens", "shard_index")


def _run(tmp_path, name, raw, cfg):
    settings = Settings(home=str(tmp_path / name), raw_uri=str(raw), config_path=str(cfg))
    with dg.DagsterInstance.ephemeral() as instance:
        summary = run_pipeline(settings, "curated", instance=instance, echo=lambda m: None)
    assert not summary.failed, summary.failed
    return tmp_path / name


def test_small_row_batches_give_the_outputs_of_whole_shards(tmp_path, monkeypatch):
    raw = write_small_shards(tmp_path / "raw", n=150)
    cfg = write_config(tmp_path / "c.yaml", evaluation={"seeds": [0]})
    whole = _run(tmp_path, "whole", raw, cfg)  # 150-document shards: one batch each
    monkeypatch.setattr(storage, "SHARD_BATCH_ROWS", 16)  # 10 batches per shard, the last one short
    monkeypatch.setattr(scan, "MIN_BATCH_ROWS", 7)
    monkeypatch.setattr(scan, "BATCH_CELLS", 7 * 6)  # the 6-vector plan's scans: 7 rows per batch
    small = _run(tmp_path, "small", raw, cfg)

    shards = sorted(p.name for p in (whole / "storage" / "shard_index").iterdir())
    assert len(shards) == 2
    for asset in PER_SHARD:
        for name in shards:
            a = pq.read_table(whole / "storage" / asset / name)
            b = pq.read_table(small / "storage" / asset / name)
            assert a.num_rows > 0 and a.equals(b), (asset, name)
    # the index is written in row groups of at most 16 rows in the batched run: it did stream
    assert pq.ParquetFile(small / "storage" / "shard_index" / shards[0]).metadata.num_row_groups >= 10

    def summary(home, name):
        return json.loads(storage.file_metadata(str(home / "storage" / "shard_index" / name))[b"metarater.summary"])

    for name in shards:
        a, b = summary(whole, name), summary(small, name)
        assert (a["docs"], a["tokens"], a["sources"]) == (b["docs"], b["tokens"], b["sources"])
        for score, s in a["scores"].items():
            t = b["scores"][score]
            assert (s["count"], s["nulls"], s["min"], s["max"]) == (t["count"], t["nulls"], t["min"], t["max"])
            assert s["mean"] == pytest.approx(t["mean"], rel=1e-12, abs=1e-12)
            assert s["m2"] == pytest.approx(t["m2"], rel=1e-9, abs=1e-9)

    runs = sorted(p.name for p in (whole / "storage" / "proxy_data").iterdir())
    assert runs
    for r in runs:  # every proxy run's selection and sample: the same cut, the same documents
        a = json.loads((whole / "storage" / "proxy_data" / r).read_text())
        b = json.loads((small / "storage" / "proxy_data" / r).read_text())
        assert {k: a[k] for k in ("cut", "selected", "sampled")} == {k: b[k] for k in ("cut", "selected", "sampled")}
    ma = json.loads((whole / "curated" / "_manifest.json").read_text())
    mb = json.loads((small / "curated" / "_manifest.json").read_text())
    assert (ma["cut"], ma["per_shard"], ma["weights"]) == (mb["cut"], mb["per_shard"], mb["weights"])
    for f in ma["files"]:
        name = f.rsplit("/", 1)[1]
        a = pq.read_table(whole / "curated" / name)
        b = pq.read_table(small / "curated" / name)
        assert a.num_rows > 0 and a.equals(b), name
