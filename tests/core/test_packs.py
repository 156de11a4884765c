"""Packs of small files (ingest.pack_bytes): grouping, keys, ownership."""
from metarater_assets.core import corpus, packs


def _files(sizes: dict[str, int | None]) -> list:
    return [corpus.ShardFile(k, f"/raw/{k}", k, f"{s}:1", s) for k, s in sizes.items()]


def test_plan_packs_groups_small_files_in_listing_order():
    files = _files({"a.jsonl": 40, "b.jsonl": 40, "c.jsonl": 500, "d.jsonl": 30, "e.jsonl": 30,
                    "f.jsonl": 30, "g.jsonl": None, "h.jsonl": 10})
    groups = [[f.key for f in g] for g in packs.plan_packs(files, pack_bytes=100, max_files=3)]
    # c (500 >= 100) and g (size unknown) stay alone; a + b (80) go on past c and close with d
    # (110 >= 100); e, f, h close at max_files (3 files, 70 bytes); groups in order of first file
    assert groups == [["a.jsonl", "b.jsonl", "d.jsonl"], ["c.jsonl"], ["e.jsonl", "f.jsonl", "h.jsonl"], ["g.jsonl"]]
    assert [[f.key for f in g] for g in packs.plan_packs(files, pack_bytes=0)] == [[f.key] for f in files]


def test_pack_keys_are_stable_safe_and_never_a_file_name():
    k = packs.pack_key(["a.jsonl", "b.jsonl.gz"])
    assert k == packs.pack_key(["a.jsonl", "b.jsonl.gz"]) != packs.pack_key(["a.jsonl", "c.jsonl"])
    assert k.startswith("pack-a.jsonl-2f-") and packs.is_pack_key(k)
    assert corpus._UNSAFE.search(k) is None and corpus.relpath_of(k) is None
    assert not packs.is_pack_key("pack-x.jsonl") and not packs.is_pack_key(corpus.partition_key("a b.jsonl"))
    long = packs.pack_key(["x" * 190 + ".jsonl", "y.jsonl"])
    assert len(long) <= corpus.MAX_KEY and packs.is_pack_key(long)
    one = _files({"a.jsonl": 1})
    assert packs.group_key(one) == "a.jsonl"  # a single file keeps its own key


def test_a_file_in_two_partitions_belongs_to_the_first():
    p1 = packs.pack_key(["a", "b"])
    own = packs.owners(["z", p1, "b", packs.pack_key(["b", "c"])],
                        {p1: ["a", "b"], packs.pack_key(["b", "c"]): ["b", "c"]})
    assert own == {"z": "z", "a": p1, "b": p1, "c": packs.pack_key(["b", "c"])}
