"""One's own corpus on the first try: a field mapping, loud first failures, `metarater init`."""
import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from conftest import SAMPLE, write_config
from metarater_assets.runner import run_pipeline
from resources import Settings, ShardFiles


def _sample_rows(n: int) -> list[dict]:
    with gzip.open(SAMPLE / "raw" / "shard-0000.jsonl.gz", "rt") as f:
        return [json.loads(line) for line, _ in zip(f, range(n))]


def _content_pool(dest: Path, per_shard: int = 150) -> Path:
    """Two .jsonl.gz files whose text is under `content`, id under `uid`, source and url nested in meta."""
    rows = _sample_rows(2 * per_shard)
    dest.mkdir(parents=True)
    for s in range(2):
        with gzip.open(dest / f"part-{s}.jsonl.gz", "wt") as f:
            for r in rows[s * per_shard:(s + 1) * per_shard]:
                f.write(json.dumps({"content": r["text"], "uid": r["id"],
                                    "meta": {"source": r["meta"]["source"], "url": f"https://example.org/{r['id']}"}})
                        + "\n")
    return dest


def _raw_content_pool(dest: Path, per_shard: int = 150) -> Path:
    """Two Parquet files laid out as RedPajama-V2 ships them: `raw_content`, `doc_id`, a `meta` struct."""
    rows = _sample_rows(2 * per_shard)
    dest.mkdir(parents=True)
    for s in range(2):
        part = rows[s * per_shard:(s + 1) * per_shard]
        pq.write_table(pa.table({
            "doc_id": [r["id"] for r in part], "raw_content": [r["text"] for r in part],
            "meta": [{"url": f"https://example.org/{r['id']}", "source_domain": r["meta"]["source"]} for r in part],
            "quality_signals": ["{}"] * len(part)}), dest / f"part-{s}.parquet")
    return dest


def _settings(tmp_path, raw, **over):
    cfg = write_config(tmp_path / "config.yaml", **over)
    s = Settings(home=str(tmp_path / "home"), raw_uri=str(raw), config_path=str(cfg))
    os.environ.pop("DAGSTER_HOME", None)  # this test's own instance, under its home
    s.ensure_dagster_home()
    return s


def test_init_then_run_reaches_the_curated_corpus_with_no_other_edit(tmp_path):
    """`metarater init RAW --quick` in a fresh folder finds `content` / `uid` / `meta.source`, and
    `metarater run --stage curated` there (no METARATER_* set) reads ./metarater.yaml, keeps its
    state in ./.metarater and reaches the curated corpus."""
    raw = _content_pool(tmp_path / "mydata")
    work = tmp_path / "project"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("METARATER_", "DAGSTER_HOME"))}
    cli = [sys.executable, "-m", "metarater_assets.cli"]
    out = subprocess.run([*cli, "init", str(raw), "--quick"], cwd=work, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "text: content  id: uid  source: meta.source" in out.stdout and "metarater run --stage curated" in out.stdout
    cfg = yaml.safe_load((work / "metarater.yaml").read_text())
    assert cfg["raw"] == str(raw) and cfg["ingest"]["text_field"] == "content" and cfg["ingest"]["id_field"] == "uid"
    again = subprocess.run([*cli, "init", str(raw)], cwd=work, env=env, capture_output=True, text=True)
    assert again.returncode == 2 and "--force" in again.stderr  # never overwrites a config silently
    run = subprocess.run([*cli, "run", "--stage", "curated"], cwd=work, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert f"config: {work / 'metarater.yaml'}" in run.stdout and f"raw: {raw}" in run.stdout
    manifest = json.loads((work / ".metarater" / "curated" / "_manifest.json").read_text())
    assert manifest["docs"] > 0
    texts = {r["id"]: r["text"] for r in _sample_rows(300)}
    kept = pq.read_table(manifest["files"][0]).to_pylist()
    assert kept and all(texts[r["doc_id"]] == r["text"] for r in kept)  # the uid is the doc id, content the text


def test_a_raw_content_parquet_pool_runs_to_the_curated_corpus_with_the_mapping(tmp_path):
    raw = _raw_content_pool(tmp_path / "rpv2")
    settings = _settings(tmp_path, raw, ingest={"text_field": "raw_content", "id_field": "doc_id",
                                                "meta_fields": ["meta.url", "meta.source_domain"]})
    import dagster as dg

    with dg.DagsterInstance.get() as instance:
        summary = run_pipeline(settings, "curated", instance=instance, echo=lambda m: None)
    assert not summary.failed and not summary.blocked
    docs = pq.read_table(ShardFiles(settings.storage_uri).uri("raw_docs", "part-0.parquet")).to_pylist()
    first = _sample_rows(1)[0]
    assert docs[0]["doc_id"] == first["id"] and docs[0]["text"] == first["text"]
    assert json.loads(docs[0]["meta"]) == {"meta.url": f"https://example.org/{first['id']}",
                                           "meta.source_domain": first["meta"]["source"]}
    assert "quality_signals" not in docs[0]["meta"]  # only the named meta fields
    manifest = json.loads(open(f"{settings.home}/curated/_manifest.json").read())
    assert manifest["docs"] > 0


@pytest.mark.parametrize("layout,field", [("jsonl", "content"), ("parquet", "raw_content")])
def test_without_the_mapping_ingest_fails_on_the_first_shard_and_says_what_to_set(tmp_path, layout, field):
    raw = (_content_pool if layout == "jsonl" else _raw_content_pool)(tmp_path / "pool")
    settings = _settings(tmp_path, raw)
    import dagster as dg

    with dg.DagsterInstance.get() as instance:
        summary = run_pipeline(settings, "ingest", instance=instance, echo=lambda m: None)
    assert summary.failed
    errors = " ".join(f["error"] or "" for f in summary.failed)
    assert field in errors and "ingest.text_field" in errors, errors
    assert not [k for k, _ in summary.materialised if k == "raw_docs"]
    if layout == "jsonl":  # every row is still in the quarantine table, with its reason
        q = pq.read_table(ShardFiles(settings.storage_uri).uri("raw_quarantine", "part-0.jsonl.gz")).to_pylist()
        assert len(q) == 150 and {r["reason"] for r in q} == {"missing_text"}
