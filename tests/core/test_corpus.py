import gzip
import json

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from metarater_assets.core import corpus, packs
from conftest import SAMPLE, read_jsonl_lines


def test_each_bundled_format_reads_all_rows():
    shards = corpus.list_shards(str(SAMPLE / "raw"))
    kinds = {corpus.shard_format(s.name) for s in shards}
    assert {("jsonl", None), ("jsonl", "gzip"), ("jsonl", "zstd"), ("parquet", None)} <= kinds
    expected = {"shard-0000.jsonl.gz": 1200, "shard-0001.jsonl.zst": 1200,
                "shard-0002.parquet": 1200, "shard-0004.jsonl": 400}
    for s in shards:
        res = corpus.read_shard(s.uri, s.name)
        assert res.rows_in == expected[s.name] == res.rows_ok + res.rows_quarantined
        assert res.rows_quarantined == 0
        assert res.docs.schema == corpus.RAW_SCHEMA
        assert len(set(res.docs.column("doc_id").to_pylist())) == res.rows_ok
        assert set(res.docs.column("source").to_pylist()) - {"unknown"}


def test_memory_filesystem_roundtrip():
    fs = fsspec.filesystem("memory")
    lines = read_jsonl_lines(SAMPLE / "raw" / "shard-0000.jsonl.gz")[:30]
    fs.pipe("/mr-test/raw/a.jsonl.zst", zstandard.ZstdCompressor().compress("".join(lines).encode()))
    fs.pipe("/mr-test/raw/.hidden.jsonl", b"{}")
    fs.pipe("/mr-test/raw/b.jsonl.part", b"{}")
    shards = corpus.list_shards("memory://mr-test/raw")
    assert [s.name for s in shards] == ["a.jsonl.zst"]
    res = corpus.read_shard(shards[0].uri, shards[0].name)
    assert res.rows_ok == 30
    fs.rm("/mr-test", recursive=True)


def _bad_shard(tmp_path):
    rows = [
        json.dumps({"id": "ok1", "text": "A good document.", "meta": {"source": "x"}}),
        "{not json",
        json.dumps([1, 2, 3]),
        json.dumps({"id": "m", "body": "no text"}),
        json.dumps({"id": "n", "text": None}),
        json.dumps({"id": "i", "text": 42}),
        json.dumps({"id": "e", "text": "   \n "}),
        "",
        json.dumps({"id": "ok2", "text": "Another one."}),
    ]
    data = ("\n".join(rows) + "\n").encode() + b'{"id": "u", "text": "bad \xff byte"}\n'
    p = tmp_path / "bad.jsonl"
    p.write_bytes(data)
    return p


def test_every_quarantine_reason(tmp_path):
    res = corpus.read_shard(str(_bad_shard(tmp_path)))
    reasons = dict(zip(res.quarantine.column("raw_row").to_pylist(),
                       res.quarantine.column("reason").to_pylist()))
    assert reasons == {1: "invalid_json", 2: "not_an_object", 3: "missing_text", 4: "null_text",
                       5: "non_string_text", 6: "empty_text", 7: "blank_line", 9: "invalid_utf8"}
    assert res.docs.column("doc_id").to_pylist() == ["ok1", "ok2"]
    assert res.rows_in == 10 == res.rows_ok + res.rows_quarantined
    assert all(p is not None for p in res.quarantine.column("preview").to_pylist())


def test_bom_crlf_and_duplicate_ids(tmp_path):
    rows = [{"id": "dup", "text": "first"}, {"id": "dup", "text": "second"},
            {"text": "same"}, {"text": "same"}, {"id": 7, "text": "int id"}]
    p = tmp_path / "x.jsonl"
    p.write_bytes(b"\xef\xbb\xbf" + b"\r\n".join(json.dumps(r).encode() for r in rows) + b"\r\n")
    res = corpus.read_shard(str(p))
    ids = res.docs.column("doc_id").to_pylist()
    assert res.rows_ok == 5 and len(set(ids)) == 5
    assert ids[0].startswith("h-") and ids[1].startswith("h-")  # duplicated ids -> content ids
    assert ids[2].endswith("-r2") and ids[3].endswith("-r3")      # identical text -> row suffix
    assert ids[4] == "7"
    assert res.docs.column("text").to_pylist()[0] == "first"


def test_truncated_gzip_raises_clear_error(tmp_path):
    full = gzip.compress(("".join(read_jsonl_lines(SAMPLE / "raw" / "shard-0000.jsonl.gz")[:200])).encode())
    p = tmp_path / "cut.jsonl.gz"
    p.write_bytes(full[: len(full) // 2])
    with pytest.raises(corpus.ShardError, match=r"cut\.jsonl\.gz: truncated or corrupt gzip"):
        corpus.read_shard(str(p))


def test_parquet_without_text_column(tmp_path):
    p = tmp_path / "notext.parquet"
    pq.write_table(pa.table({"id": ["a"], "body": ["x"]}), p)
    with pytest.raises(corpus.ShardError, match="no 'text' column"):
        corpus.read_shard(str(p))


def test_parquet_null_and_empty_text_quarantined(tmp_path):
    p = tmp_path / "mixed.parquet"
    pq.write_table(pa.table({"id": ["a", "b", "c"], "text": ["fine", None, ""]}), p)
    res = corpus.read_shard(str(p))
    assert res.rows_ok == 1
    assert res.quarantine.column("reason").to_pylist() == ["null_text", "empty_text"]


@pytest.mark.parametrize("name", ["my shard [1], v2|x.jsonl", "données-été.jsonl.gz", "a,b.parquet"])
def test_partition_keys_are_safe_and_stable(name):
    key = corpus.partition_key(name)
    assert key == corpus.partition_key(name)
    assert all(c.isalnum() or c in "._-" for c in key) and key.isascii()
    assert key != corpus.partition_key(name + "x")


def test_ignored_names():
    for bad in (".x.jsonl", "x.jsonl.part", "x.jsonl~", "x.txt", "x.jsonl.tmp-abc"):
        assert not corpus.is_shard_name(bad)


def test_empty_files_zero_rows_control_chars_and_a_huge_document(tmp_path):
    (tmp_path / "empty.jsonl").write_bytes(b"")
    res = corpus.read_shard(str(tmp_path / "empty.jsonl"))
    assert (res.rows_in, res.rows_ok, res.rows_quarantined) == (0, 0, 0)
    pq.write_table(pa.table({"text": pa.array([], pa.string())}), tmp_path / "zero.parquet")
    assert corpus.read_shard(str(tmp_path / "zero.parquet")).rows_in == 0
    big = "word " * 2_000_000  # 10 MB in one document
    ctrl = "bell\x07 nul\x00 esc\x1b text"
    (tmp_path / "odd.jsonl").write_text(json.dumps({"text": big}) + "\n" + json.dumps({"text": ctrl}) + "\n")
    res = corpus.read_shard(str(tmp_path / "odd.jsonl"))
    assert res.rows_ok == 2 and res.docs.column("text").to_pylist() == [big, ctrl]


def test_streaming_ingest_equals_in_memory_read(tmp_path):
    """ingest_shard writes in batches (here 7 rows) and gives exactly what read_shard gives."""
    rows = [json.dumps({"id": "dup", "text": "x"}), json.dumps({"id": "dup", "text": "y"}), "bad json",
            json.dumps({"text": "same"}), json.dumps({"text": "same"})]
    lines = read_jsonl_lines(SAMPLE / "raw" / "shard-0000.jsonl.gz")[:40]
    src = tmp_path / "mix.jsonl"
    src.write_text("\n".join(rows) + "\n" + "".join(lines))
    ref = corpus.read_shard(str(src))
    counts = corpus.ingest_shard(str(src), "mix.jsonl", str(tmp_path / "d.parquet"), str(tmp_path / "q.parquet"),
                                 batch_rows=7)
    assert (counts.rows_in, counts.rows_ok, counts.rows_quarantined) == (45, 44, 1)
    assert counts.reasons == {"invalid_json": 1}
    docs = pq.read_table(tmp_path / "d.parquet")
    assert docs.equals(ref.docs)
    assert pq.ParquetFile(tmp_path / "d.parquet").metadata.num_row_groups >= 6
    assert pq.read_table(tmp_path / "q.parquet").equals(ref.quarantine)


def test_nested_folders_give_stable_unique_safe_keys(tmp_path):
    """SlimPajama's train/chunk1..chunk10/ layout: file names repeat across chunks; keys come from
    the path relative to the raw root, name their file, and never collide."""
    import shutil

    src = SAMPLE / "raw" / "shard-0004.jsonl"
    for chunk in ("chunk1", "chunk2"):
        (tmp_path / "train" / chunk).mkdir(parents=True)
        shutil.copy(src, tmp_path / "train" / chunk / "example_train_0.jsonl")
    (tmp_path / "train" / "chunk 3").mkdir()
    shutil.copy(src, tmp_path / "train" / "chunk 3" / "example_train_0.jsonl")
    (tmp_path / "train" / "_tmp").mkdir()  # a staging folder: ignored
    shutil.copy(src, tmp_path / "train" / "_tmp" / "x.jsonl")
    files = corpus.list_shards(str(tmp_path))
    keys = sorted(f.key for f in files)
    assert keys[:2] == ["train__chunk1__example_train_0.jsonl", "train__chunk2__example_train_0.jsonl"]
    assert keys[2].startswith("train__chunk_3__example_train_0.jsonl-") and len(keys) == 3
    assert all(corpus._UNSAFE.search(k) is None for k in keys)
    assert keys == sorted(f.key for f in corpus.list_shards(str(tmp_path)))  # stable
    for f in files:  # a plain key names its file: one lookup, no listing; a hashed one is found too
        assert corpus.find_shard(str(tmp_path), f.key).uri == f.uri
    assert corpus.relpath_of(keys[0]) == "train/chunk1/example_train_0.jsonl" and corpus.relpath_of(keys[2]) is None


def test_count_rows_counts_lines_on_its_own(tmp_path):
    p = tmp_path / "x.jsonl"
    p.write_bytes(b'{"text": "a"}\n\nnot json\n{"text": "b"}')  # no final newline
    assert corpus.count_rows(str(p), "x.jsonl") == 4
    assert corpus.count_rows(str(SAMPLE / "raw" / "shard-0002.parquet"), "shard-0002.parquet") == 1200


# ------------------------------------------------------------------------------------------
# A pack of small files read as one shard (ingest.pack_bytes; the grouping: test_packs.py)

def test_a_pack_ingests_as_one_shard_and_each_row_finds_its_file(tmp_path):
    lines = read_jsonl_lines(SAMPLE / "raw" / "shard-0000.jsonl.gz")
    (tmp_path / "a.jsonl").write_text("".join(lines[:5]))
    (tmp_path / "b.jsonl").write_text("".join(lines[:2]) + "not json\n" + "".join(lines[5:8]))  # 2 repeated docs
    with gzip.open(tmp_path / "c.jsonl.gz", "wt") as f:
        f.writelines(lines[8:12])
    files = corpus.list_shards(str(tmp_path))
    res = corpus.ingest_files([(f.uri, f.name) for f in files], str(tmp_path / "d.parquet"), str(tmp_path / "q.parquet"))
    assert (res.rows_in, res.rows_ok, res.rows_quarantined, res.member_rows) == (15, 14, 1, (5, 6, 4))
    docs = pq.read_table(tmp_path / "d.parquet")
    ids = docs.column("doc_id").to_pylist()
    assert len(set(ids)) == 14  # ids unique across the pack's files: the repeated docs get content ids
    q = pq.read_table(tmp_path / "q.parquet")
    assert q.column("raw_row").to_pylist() == [7] and q.column("reason").to_pylist() == ["invalid_json"]
    members = packs.pack_members_of(docs.schema)
    assert [(m["name"], m["rows"]) for m in members] == [("a.jsonl", 5), ("b.jsonl", 6), ("c.jsonl.gz", 4)]
    where, rows = packs.locate(members, docs.column("raw_row").to_pylist())
    keys = [m["key"] for m in where]
    by_file = {"a.jsonl": lines[:5], "b.jsonl": lines[:2] + ["not json\n"] + lines[5:8], "c.jsonl.gz": lines[8:12]}
    for text, k, r in zip(docs.column("text").to_pylist(), keys, rows):
        assert json.loads(by_file[k][r])["text"] == text  # each row read back from its own file
    # a single file has no member list
    corpus.ingest_shard(files[0].uri, files[0].name, str(tmp_path / "e.parquet"), str(tmp_path / "f.parquet"))
    assert packs.pack_members_of(pq.read_schema(tmp_path / "e.parquet")) is None


def test_field_mapping_reads_text_id_and_meta_from_nested_json_and_parquet(tmp_path):
    """ingest.text_field / id_field / meta_fields: dotted paths into nested JSON, Parquet columns
    and struct fields; without meta_fields every other field of a JSONL row is kept as meta."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from metarater_assets.core.corpus import Fields, read_shard

    rows = [{"doc": {"body": "First text.", "lang": "en"}, "key": "a1", "meta": {"url": "u1", "source": "web"}},
            {"doc": {"body": "Second text.", "lang": "de"}, "key": "a2", "meta": {"url": "u2", "source": "books"}},
            {"doc": {"lang": "fr"}, "key": "a3"}]
    p = tmp_path / "nested.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    res = read_shard(str(p), fields=Fields(text="doc.body", id="key", meta=("meta.url", "doc.lang")))
    docs = res.docs.to_pylist()
    assert [d["doc_id"] for d in docs] == ["a1", "a2"] and [d["text"] for d in docs] == ["First text.", "Second text."]
    assert [json.loads(d["meta"]) for d in docs] == [{"meta.url": "u1", "doc.lang": "en"}, {"meta.url": "u2", "doc.lang": "de"}]
    assert [d["source"] for d in docs] == ["unknown", "unknown"]  # meta.source was not named
    assert res.quarantine.to_pylist()[0]["reason"] == "missing_text" and res.quarantine.num_rows == 1
    # no meta_fields: every other field is meta, the source found in meta.source
    res = read_shard(str(p), fields=Fields(text="doc.body", id="key"))
    d = res.docs.to_pylist()[0]
    assert d["source"] == "web" and json.loads(d["meta"]) == {"url": "u1", "source": "web"}
    # Parquet: a raw_content column, a doc_id column and a meta struct
    t = pa.table({"doc_id": ["x", "y"], "raw_content": ["Alpha text.", "Beta text."],
                  "meta": [{"url": "p1", "source_domain": "a.org"}, {"url": "p2", "source_domain": "b.org"}]})
    pq.write_table(t, tmp_path / "rp.parquet")
    res = read_shard(str(tmp_path / "rp.parquet"), fields=Fields(text="raw_content", id="doc_id",
                                                                   meta=("meta.source_domain",)))
    docs = res.docs.to_pylist()
    assert [(d["doc_id"], d["text"]) for d in docs] == [("x", "Alpha text."), ("y", "Beta text.")]
    assert json.loads(docs[1]["meta"]) == {"meta.source_domain": "b.org"}
    with pytest.raises(corpus.ShardError, match=r"no .text. column .*raw_content.*ingest.text_field"):
        read_shard(str(tmp_path / "rp.parquet"))


def test_init_finds_the_text_id_and_source_fields():
    from metarater_assets.init import detect_fields

    rows = [{"url": "https://a.org/1", "raw_content": "A long document " * 20, "doc_id": "d1",
             "meta": {"redpajama_set_name": "cc"}},
            {"url": "https://a.org/2", "raw_content": "Another long one " * 20, "doc_id": "d2",
             "meta": {"redpajama_set_name": "cc"}}]
    assert {k: v for k, v in detect_fields(rows).items() if k != "fields"} == {
        "text": "raw_content", "id": "doc_id", "source": "meta.redpajama_set_name"}
    # no known name: the string field with the longest values; an id that repeats is not an id
    rows = [{"title": "t", "passage_html": "x" * 300, "id": "same"}, {"title": "u", "passage_html": "y" * 200, "id": "same"}]
    assert detect_fields(rows)["text"] == "passage_html" and detect_fields(rows)["id"] is None
