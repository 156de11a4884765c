import gzip
import os

import dagster as dg
import fsspec
import pyarrow.parquet as pq

from metarater_assets.core import corpus
from metarater_assets.report import build_report
from metarater_assets.runner import run_pipeline
from resources import Settings
from conftest import write_small_shards


def _settings(tmp_path, raw) -> Settings:
    from conftest import write_config

    return Settings(home=str(tmp_path / "home"), raw_uri=str(raw),
                    config_path=str(write_config(tmp_path / "c.yaml")))


def _instance(tmp_path) -> dg.DagsterInstance:
    return dg.DagsterInstance.ephemeral()


def test_truncated_shard_fails_alone_and_leaves_nothing(tmp_path):
    raw = write_small_shards(tmp_path / "raw", n=40)
    good = (raw / "shard-0000.jsonl.gz").read_bytes()
    full = gzip.compress(gzip.decompress(good))
    (raw / "broken.jsonl.gz").write_bytes(full[: len(full) // 2])
    settings = _settings(tmp_path, raw)
    with _instance(tmp_path) as instance:
        summary = run_pipeline(settings, "ingest", instance=instance, echo=lambda m: None)
        assert [f["partition"] for f in summary.failed] == ["broken.jsonl.gz"]
        assert "truncated or corrupt gzip" in summary.failed[0]["error"]
        storage = tmp_path / "home" / "storage" / "raw_docs"
        assert sorted(os.listdir(storage)) == ["shard-0000.jsonl.gz.parquet", "shard-0002.parquet.parquet"]
        rep = build_report(settings, instance)
        assert rep["ingest"]["shards"] == 2 and rep["ingest"]["rows_in"] == 80
        assert rep["ingest"]["failed_shards"][0]["shard"] == "broken.jsonl.gz"
        assert "broken.jsonl.gz" in rep["ingest"]["failed_shards"][0]["error"]


def test_quarantine_rows_are_stored_and_balanced(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "mixed.jsonl").write_bytes(b'{"text": "good doc"}\nnot json\n{"text": ""}\n\xff\xfe\n')
    settings = _settings(tmp_path, raw)
    with _instance(tmp_path) as instance:
        summary = run_pipeline(settings, "ingest", instance=instance, echo=lambda m: None)
        assert not summary.failed
        q = pq.read_table(tmp_path / "home" / "storage" / "raw_quarantine" / "mixed.jsonl.parquet")
        assert q.column("reason").to_pylist() == ["invalid_json", "empty_text", "invalid_utf8"]
        rep = build_report(settings, instance)["ingest"]
        assert (rep["rows_in"], rep["rows_ok"], rep["rows_quarantined"]) == (4, 1, 3)


def test_memory_storage_and_raw_uri(tmp_path):
    """Raw shards and every asset output on memory:// (any fsspec URI works the same)."""
    fs = fsspec.filesystem("memory")
    src = write_small_shards(tmp_path / "raw", n=20)
    for name in os.listdir(src):
        fs.pipe(f"/mr-mem/raw/{name}", (src / name).read_bytes())
    from conftest import write_config

    settings = Settings(home="memory://mr-mem/home", raw_uri="memory://mr-mem/raw",
                        config_path=str(write_config(tmp_path / "c.yaml")))
    with dg.instance_for_test() as instance:
        summary = run_pipeline(settings, "ingest", instance=instance, echo=lambda m: None)
        assert not summary.failed and len(summary.materialised) == 4
        from metarater_assets.core import storage as st

        t = st.read_parquet("memory://mr-mem/home/storage/raw_docs/shard-0002.parquet.parquet")
        assert t.num_rows == 20 and t.column_names == corpus.RAW_SCHEMA.names
    fs.rm("/mr-mem", recursive=True)


def test_awkward_file_names_ingest_under_safe_keys(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    body = b'{"id": "a", "text": "A real enough document."}\n{"id": "b", "text": "Another one."}\n'
    names = ["my shard [1], v2.jsonl", "pipes|and spaces.jsonl", "données été.jsonl", "../evil.jsonl"]
    for n in names[:3]:
        (raw / n).write_bytes(body)
    (raw / ".evil.jsonl").write_bytes(body)  # dot-file: ignored
    (raw / "big~").write_bytes(body)          # editor backup: ignored
    settings = _settings(tmp_path, raw)
    with _instance(tmp_path) as instance:
        summary = run_pipeline(settings, "ingest", instance=instance, echo=lambda m: None)
        assert not summary.failed
        keys = sorted(instance.get_dynamic_partitions("shards"))
        assert len(keys) == 3
        assert all(k.isascii() and not set(k) & set(" []|,/\\") for k in keys)
        written = sorted(os.listdir(tmp_path / "home" / "storage" / "raw_docs"))
        assert written == sorted(f"{k}.parquet" for k in keys)  # nothing escaped the storage root
        assert build_report(settings, instance)["ingest"]["rows_ok"] == 6


def test_rows_balance_counts_written_rows_independently(tmp_path, monkeypatch):
    """The check compares the lines read from the file with the rows actually written to the docs
    and quarantine files (their Parquet footers): a writer that loses a row fails it."""
    raw = write_small_shards(tmp_path / "raw", n=30)
    settings = _settings(tmp_path, raw)
    real_ok = corpus._WriterSink.ok

    def lossy_ok(self, row, *args, **kw):
        if row == 7:  # the id list still counts it; the file never gets it
            self.k += 1
            return
        return real_ok(self, row, *args, **kw)

    monkeypatch.setattr(corpus._WriterSink, "ok", lossy_ok)
    with _instance(tmp_path) as instance:
        summary = run_pipeline(settings, "ingest", instance=instance, echo=lambda m: None)
        evals = [e for e in instance.fetch_materializations(dg.AssetKey("raw_docs"), limit=10).records]
        assert evals  # the data was written, but the blocking check failed
        checks = instance.event_log_storage.get_asset_check_execution_history(
            dg.AssetCheckKey(dg.AssetKey("raw_docs"), "rows_balance"), limit=10)
        assert checks and not any(c.event.dagster_event.event_specific_data.passed for c in checks)
        assert sorted(f["partition"] for f in summary.failed) == ["shard-0000.jsonl.gz", "shard-0002.parquet"]
        assert all("rows_balance" in f["error"] for f in summary.failed)
