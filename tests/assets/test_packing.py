"""Many small files packed into partitions (``ingest.pack_bytes``): registration, ingest, lineage
back to each file, new / changed / removed files, and sticky registration."""
import gzip
import json
import re
import shutil

import dagster as dg
import pyarrow.parquet as pq
import yaml

from metarater_assets.core import corpus, packs
from metarater_assets.explain import explain
from metarater_assets.runner import run_pipeline
from resources import Settings
from conftest import SAMPLE, read_jsonl_lines, write_config

LINES = read_jsonl_lines(SAMPLE / "raw" / "shard-0000.jsonl.gz")
SHORT = sorted(LINES, key=len)[:400]  # real documents, short ones: the tiny files stay under pack_bytes


def _tiny(dest, start: int, n: int, docs: int = 4) -> None:
    for i in range(start, start + n):
        with gzip.open(dest / f"t{i:03d}.jsonl.gz", "wt", encoding="utf-8") as f:
            f.writelines(SHORT[i * docs:(i + 1) * docs])


def _lines_of(path) -> list[str]:
    return read_jsonl_lines(path) if str(path).endswith(".gz") else [l for l in open(path) if l.strip()]


def _run(settings, instance, log=None):
    lines = [] if log is None else log
    summary = run_pipeline(settings, "curated", instance=instance, echo=lines.append)
    assert not summary.failed, summary.failed
    return summary


def test_small_files_are_packed_and_every_document_traces_back_to_its_file(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    _tiny(raw, 0, 30)
    shutil.copy(SAMPLE / "raw" / "shard-0004.jsonl", raw / "u-big.jsonl")  # 540 KB: stays alone
    pack_bytes = 2500
    cfg = write_config(tmp_path / "c.yaml", proxies={"n": 4, "single_score_runs": False},
                       ingest={"pack_bytes": pack_bytes, "pack_max_files": 50})
    settings = Settings(home=str(tmp_path / "home"), raw_uri=str(raw), config_path=str(cfg))
    home = tmp_path / "home"
    with dg.DagsterInstance.ephemeral() as instance:
        log: list[str] = []
        first = _run(settings, instance, log)
        keys = instance.get_dynamic_partitions("shards")
        pack_keys = [k for k in keys if packs.is_pack_key(k)]
        sizes = {p.name: p.stat().st_size for p in raw.iterdir()}
        alone = sorted(n for n, s in sizes.items() if s >= pack_bytes)  # files big enough on their own
        small = sorted(n for n in sizes if n not in alone)
        singles = set(keys) - set(pack_keys)  # the big files, and a last small file left on its own
        assert "u-big.jsonl" in alone and set(alone) <= singles and singles - set(alone) <= {small[-1]}
        assert len(pack_keys) >= 3
        assert any(re.search(r"registered \d+ new shard\(s\) \(31 files packed", l) for l in log), log
        # each pack: consecutive small files in listing order, closed as soon as it holds pack_bytes
        members = {}
        for p in pack_keys:
            t = pq.read_schema(home / "storage" / "raw_docs" / f"{p}.parquet")
            members[p] = [m["name"] for m in packs.pack_members_of(t)]
        order = {n: i for i, n in enumerate(small)}
        for p in pack_keys:
            idx = [order[m] for m in members[p]]
            assert idx == list(range(idx[0], idx[0] + len(idx)))  # consecutive among the small files
            total = sum(sizes[m] for m in members[p])
            if small[-1] not in members[p]:
                assert total >= pack_bytes > total - sizes[members[p][-1]]
        packed = sorted(m for p in pack_keys for m in members[p])
        assert packed + sorted(singles - set(alone)) == small  # every small file once
        docs = 30 * 4 + 400
        stats = json.load(open(home / "storage" / "score_stats.json"))
        assert stats["docs"] == docs and stats["shards"] == len(keys)
        assert {k for k, p in first.materialised if k == "raw_docs"} and \
            sorted(p for k, p in first.materialised if k == "raw_docs") == sorted(keys)

        # the curated corpus names each kept document's own file and its row in that file
        curated = [pq.read_table(f) for f in (home / "curated").glob("*.parquet")]
        seen_pack_doc = None
        for t in curated:
            for text, f, r, doc in zip(t.column("text").to_pylist(), t.column("raw_shard").to_pylist(),
                                       t.column("raw_row").to_pylist(), t.column("doc_id").to_pylist()):
                assert json.loads(_lines_of(raw / f)[r])["text"] == text
                if f.startswith("t"):
                    seen_pack_doc = (doc, f, r)
        assert seen_pack_doc is not None
        doc, f, r = seen_pack_doc
        pack = next(p for p in pack_keys if f in members[p])
        assert f"shard={pack} file={f} row={r}" in explain(settings, doc, shard=pack)

        # five new small files: a new pack; only it is ingested, and the pool follows
        _tiny(raw, 30, 5)
        second = _run(settings, instance)
        new = second.new_shards
        assert new and any(packs.is_pack_key(k) for k in new) and not set(new) & set(keys)
        new_members = []
        for p in new:
            m = packs.pack_members_of(pq.read_schema(home / "storage" / "raw_docs" / f"{p}.parquet"))
            new_members += [x["name"] for x in m] if m else [p]
        assert sorted(new_members) == [f"t{i:03d}.jsonl.gz" for i in range(30, 35)]
        assert sorted(p for k, p in second.materialised if k == "raw_docs") == sorted(new)
        assert ("score_stats", None) in second.materialised
        assert json.load(open(home / "storage" / "score_stats.json"))["docs"] == docs + 20

        # a member file changes (one more document): its pack is re-ingested, alone
        victim = members[pack_keys[1]][0]
        with gzip.open(raw / victim, "at", encoding="utf-8") as f:
            f.write(SHORT[399])
        third = _run(settings, instance)
        assert third.changed_shards == [pack_keys[1]]
        assert [p for k, p in third.materialised if k == "raw_docs"] == [pack_keys[1]]
        assert json.load(open(home / "storage" / "score_stats.json"))["docs"] == docs + 21

        # a member file is removed: its pack is skipped (outputs kept), and the run says so
        (raw / members[pack_keys[0]][1]).unlink()
        log = []
        fourth = _run(settings, instance, log)
        assert not [p for k, p in fourth.materialised if k == "raw_docs"]
        assert any("1 shard(s) skipped, file(s) removed" in l and pack_keys[0] in l for l in log), log

        # packing switched off: the packs stay as registered, a new small file is a partition of its own
        c = yaml.safe_load(open(cfg))
        c["ingest"] = {"pack_bytes": 0}
        cfg.write_text(yaml.safe_dump(c))
        _tiny(raw, 40, 1)
        fifth = _run(settings, instance)
        assert fifth.new_shards == ["t040.jsonl.gz"]
        assert set(pack_keys) <= set(instance.get_dynamic_partitions("shards"))


def _fake(n: int, size: int) -> list:
    return [corpus.ShardFile(f"f{i:04d}.jsonl", f"/raw/f{i:04d}.jsonl", f"f{i:04d}.jsonl", f"{size}:1", size)
            for i in range(n)]


def test_registrations_that_raced_ingest_each_file_once():
    from metarater_assets.registry import plan

    files = _fake(4, 10)
    racer = packs.pack_key(["f0001.jsonl", "f0002.jsonl"])
    # f0001 was registered on its own, then a racing registration packed it again with f0002
    reg = plan(files, ["f0000.jsonl", "f0001.jsonl", racer],
               {racer: [{"key": "f0001.jsonl", "name": "f0001.jsonl"}, {"key": "f0002.jsonl", "name": "f0002.jsonl"}]},
               pack_bytes=100)
    assert [f.key for f in reg.files[racer]] == ["f0002.jsonl"] and [f.key for f in reg.files["f0001.jsonl"]] == ["f0001.jsonl"]
    assert reg.new == ["f0003.jsonl"] and reg.present == {"f0000.jsonl", "f0001.jsonl", racer, "f0003.jsonl"}
    # a file registered twice on its own key is one partition; a capped registration leaves the rest pending
    capped = plan(_fake(10, 10), [], {}, pack_bytes=25, max_new=5)
    assert capped.pending == [f"f{i:04d}.jsonl" for i in range(5, 10)] and capped.new_files == 5
    assert [len(capped.files[k]) for k in capped.new] == [3, 2]


def test_many_small_files_without_packing_get_a_hint():
    from metarater_assets.registry import plan, small_files_hint

    assert "ingest.pack_bytes" in small_files_hint(plan(_fake(1000, 30_000), [], {}), pack_bytes=0)
    assert small_files_hint(plan(_fake(999, 30_000), [], {}), pack_bytes=0) is None  # few files
    assert small_files_hint(plan(_fake(1000, 5_000_000), [], {}), pack_bytes=0) is None  # large files
