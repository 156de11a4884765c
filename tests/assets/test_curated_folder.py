"""The curated folder holds exactly the manifest's files, each from the manifest's cut.

The module fixture runs the chain to `curated` once on three small shards (`a.jsonl` and the two of
conftest); a test that changes anything works on its own copy (``clone``), so the tests pass in any
order."""
import json
from pathlib import Path
import shutil
import threading

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import dagster as dg

from metarater_assets import curation
from metarater_assets.runner import run_pipeline
from resources import MetaraterConfig, Settings

N = 40  # documents per shard


def sample_lines(start: int, stop: int) -> list[str]:
    from conftest import SAMPLE, read_jsonl_lines

    return read_jsonl_lines(SAMPLE / "raw" / "shard-0000.jsonl.gz")[start:stop]


def run(settings, instance, **kw):
    return run_pipeline(settings, "curated", instance=instance, echo=lambda m: None, **kw)


@pytest.fixture(scope="module")
def curated(tmp_path_factory):
    from conftest import write_config, write_small_shards

    tmp = tmp_path_factory.mktemp("curated")
    raw = write_small_shards(tmp / "raw", n=N)  # shard-0000.jsonl.gz holds the sample's lines [0, N)
    (raw / "a.jsonl").write_text("".join(sample_lines(N, 2 * N)))
    cfg = write_config(tmp / "config.yaml")
    settings = Settings(home=str(tmp / "home"), raw_uri=str(raw), config_path=str(cfg))
    (tmp / "dg").mkdir()
    summary = run(settings, dg.DagsterInstance.local_temp(str(tmp / "dg")))
    assert summary.failed == [], summary.failed
    return tmp


def clone(tmp: Path, dest: Path):
    for name in ("raw", "home", "dg", "config.yaml"):
        src = tmp / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, dest / name)
    s = Settings(home=str(dest / "home"), raw_uri=str(dest / "raw"), config_path=str(dest / "config.yaml"))
    return s, dg.DagsterInstance.local_temp(str(dest / "dg"))


def folder(settings) -> Path:
    return Path(settings.home) / "curated"


def manifest(settings) -> dict:
    return json.loads((folder(settings) / curation.MANIFEST).read_text())


def assert_folder_is_the_manifest(settings) -> dict:
    """The folder's curated files are the manifest's, each footer names the manifest's cut, and
    reading the folder as a dataset gives exactly the documents of the manifest's files, once each."""
    m = manifest(settings)
    out = folder(settings)
    listed = {Path(f).name for f in m["files"]}
    assert {p.name for p in out.iterdir() if p.name != curation.MANIFEST} == listed
    assert {f: (pq.read_schema(f).metadata or {}).get(b"metarater.cut") for f in m["files"]} == \
        {f: m["cut_id"].encode() for f in m["files"]}
    ids = pq.read_table(out, columns=["doc_id"]).column("doc_id").to_pylist()
    listed_ids = [i for f in m["files"] for i in pq.read_table(f, columns=["doc_id"]).column("doc_id").to_pylist()]
    assert len(ids) == len(set(ids)) == m["docs"]
    assert set(ids) == set(listed_ids)
    return m


def test_every_curated_file_names_the_manifests_cut(curated, tmp_path):
    settings, _ = clone(curated, tmp_path)
    m = assert_folder_is_the_manifest(settings)
    sel = json.loads((Path(settings.storage_uri) / "curated_selection.json").read_text())
    assert m["cut_id"] == sel["cut_id"]
    assert len(m["files"]) == 3
    for f in m["files"]:
        assert pq.read_schema(f).metadata[b"metarater.cut"].decode() == m["cut_id"]


def test_renamed_output_leaves_no_stale_file(curated, tmp_path):
    """a.parquet appears next to a.jsonl: both curated files are renamed a-<hash>.parquet and the
    old a.parquet (a.jsonl's documents under the earlier cut) goes."""
    settings, instance = clone(curated, tmp_path)
    assert (folder(settings) / "a.parquet").exists()
    rows = [json.loads(line) for line in sample_lines(2 * N, 3 * N)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "raw" / "a.parquet")
    summary = run(settings, instance)
    assert summary.failed == [], summary.failed
    m = assert_folder_is_the_manifest(settings)
    names = {Path(f).name for f in m["files"]}
    assert "a.parquet" not in names and len([n for n in names if n.startswith("a-")]) == 2, names
    assert not (folder(settings) / "a.parquet").exists()


def test_removed_shard_leaves_no_stale_file(curated, tmp_path):
    settings, instance = clone(curated, tmp_path)
    (tmp_path / "raw" / "a.jsonl").unlink()
    summary = run(settings, instance)
    assert summary.failed == [], summary.failed
    m = assert_folder_is_the_manifest(settings)
    # Today the pool keeps a removed file's shard (its outputs stay from the last ingest), so its
    # curated file stays, listed. Once the pool follows the raw folder, the file must go with it.
    if "a.jsonl" not in m["per_shard"]:
        assert not (folder(settings) / "a.parquet").exists()


def test_unlisted_files_go_and_unknown_files_stay(curated, tmp_path):
    """Leftovers of another cut (top-level Parquet, _jsonl copies) are removed at publication;
    dot-files and unknown files are left alone and reported."""
    settings, instance = clone(curated, tmp_path)
    out = folder(settings)
    shutil.copy(out / "a.parquet", out / "old.parquet")
    (out / "_jsonl").mkdir()
    (out / "_jsonl" / "old.jsonl.zst").write_bytes(b"")
    (out / ".keep").write_text("")
    (out / "README.txt").write_text("notes")
    summary = run(settings, instance, only=("curated_manifest",), force=("curated_manifest",))
    assert summary.failed == [], summary.failed
    assert not (out / "old.parquet").exists() and not (out / "_jsonl" / "old.jsonl.zst").exists()
    assert (out / ".keep").exists() and (out / "README.txt").exists()
    ev = instance.get_latest_materialization_event(dg.AssetKey("curated_manifest"))
    md = ev.asset_materialization.metadata
    assert sorted(md["removed_files"].value) == ["_jsonl/old.jsonl.zst", "old.parquet"]
    assert {".keep", "README.txt"} <= set(md["other_files"].value)


def test_a_file_of_another_cut_stops_the_manifest(curated, tmp_path):
    settings, instance = clone(curated, tmp_path)
    before = manifest(settings)
    victim = folder(settings) / "shard-0002.parquet"
    t = pq.read_table(victim)
    pq.write_table(t.replace_schema_metadata({**t.schema.metadata, b"metarater.cut": b"another-cut"}), victim)
    summary = run(settings, instance, only=("curated_manifest",), force=("curated_manifest",))
    assert len(summary.failed) == 1
    err = summary.failed[0]["error"]
    assert "shard-0002.parquet" in err and "curated_corpus" in err, err
    assert manifest(settings) == before  # nothing published
    assert victim.exists()


def test_clean_folder_works_on_any_filesystem():
    import fsspec

    fs = fsspec.filesystem("memory")
    base = "memory://cur-test/curated"
    for name in ("a.parquet", "b.parquet", "_manifest.json", "_jsonl/a.jsonl.zst", "_jsonl/b.jsonl.zst", ".x"):
        fs.pipe(f"/cur-test/curated/{name}", b"x")
    fs.pipe("/cur-test/outside.parquet", b"x")
    try:
        removed, other = curation.clean_folder(base, {"a.parquet", "_jsonl/a.jsonl.zst"})
        assert removed == ["_jsonl/b.jsonl.zst", "b.parquet"] and other == [".x"]
        assert sorted(fs.find("/cur-test")) == ["/cur-test/curated/.x", "/cur-test/curated/_jsonl/a.jsonl.zst",
                                                "/cur-test/curated/_manifest.json", "/cur-test/curated/a.parquet",
                                                "/cur-test/outside.parquet"]
    finally:
        fs.rm("/cur-test", recursive=True)


def test_publish_lock_excludes_a_second_holder(tmp_path):
    settings = MetaraterConfig(config_path="c.yaml", raw_uri="raw", artifacts_uri=f"{tmp_path}/home/artifacts",
                               curated_uri=f"{tmp_path}/home/curated", storage_uri=f"{tmp_path}/home/storage")
    assert curation.lock_path(settings) == str(tmp_path / "home" / "locks" / "publish.lock")
    got = {}

    def second():
        try:
            with curation.publish_lock(settings, timeout=0.3):
                got["second"] = "acquired"
        except TimeoutError as e:
            got["second"] = str(e)

    with curation.publish_lock(settings):
        t = threading.Thread(target=second)
        t.start()
        t.join(10)
    assert "held by another publication" in got["second"]
    t = threading.Thread(target=second)  # free again once the first holder is done
    t.start()
    t.join(10)
    assert got["second"] == "acquired"


def test_publish_lock_falls_back_to_dagster_home_for_a_remote_home(tmp_path, monkeypatch):
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dg"))
    settings = MetaraterConfig(config_path="c.yaml", raw_uri="raw", artifacts_uri="s3://b/home/artifacts",
                               curated_uri="s3://b/home/curated", storage_uri="s3://b/home/storage")
    assert curation.lock_path(settings) == str(tmp_path / "dg" / "locks" / "publish.lock")
    with curation.publish_lock(settings) as path:
        assert Path(path).exists()


def test_selection_follows_score_orientation_only_with_auto_scores(tmp_path):
    from conftest import write_config

    from metarater_assets.core.config import load_config

    def deps(cfg):
        a = curation.make_curated_selection(cfg)
        return {d.asset_key.to_user_string() for d in a.specs_by_key[dg.AssetKey("curated_selection")].deps}

    plain = load_config(str(write_config(tmp_path / "plain.yaml")))
    auto_yaml = write_config(tmp_path / "auto.yaml", scores={"orientation": {"rps_doc_word_count": "auto"}})
    auto = load_config(str(auto_yaml))
    assert "score_orientation" not in deps(plain) and "score_orientation" not in deps(None)
    assert "score_orientation" in deps(auto)


def test_the_writers_of_the_curated_folder_share_a_pool():
    corpus_ = curation.make_curated_corpus(None)
    assert corpus_.op.pool == curation.curated_manifest.op.pool == "metarater_publish"
