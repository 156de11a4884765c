"""Packs: many small files read as one shard partition (``ingest.pack_bytes``).

The control plane costs about the same per partition whatever the partition holds, so a pool of
many small files is cheaper as fewer, larger partitions. New files smaller than ``pack_bytes``
are grouped in listing order (like Spark's ``maxPartitionBytes`` splits); a group of two or more
files gets a pack key; its members go in the raw_docs footer (``corpus.PACK_META``) so that a
document's own file and row can be found again.
"""
from __future__ import annotations

import bisect
import hashlib
import json
import re

import pyarrow as pa

from .corpus import MAX_KEY, PACK_META, ShardFile

#: A pack's partition key: ``pack-<first member's key>-<n>f-<10 hex digits of the members>``. It
#: never ends with a shard extension, so it is never mistaken for a file's own key.
PACK_PREFIX = "pack-"
_PACK_KEY = re.compile(r"pack-.+-[0-9]+f-[0-9a-f]{10}")


def pack_key(member_keys: list[str]) -> str:
    """The partition key of a pack of two or more files (stable: a function of the members)."""
    digest = hashlib.sha1("\n".join(member_keys).encode("utf-8")).hexdigest()[:10]
    return f"{PACK_PREFIX}{member_keys[0][:MAX_KEY - 40]}-{len(member_keys)}f-{digest}"


def is_pack_key(key: str) -> bool:
    return _PACK_KEY.fullmatch(key) is not None


def plan_packs(files: list[ShardFile], pack_bytes: int, max_files: int = 1000) -> list[list[ShardFile]]:
    """Partitions for new files, in listing order. With ``pack_bytes`` 0 every file is a partition
    of its own. Otherwise a file of at least ``pack_bytes`` (or of unknown size) stays alone, and
    smaller files are packed in listing order until a pack holds ``pack_bytes`` or ``max_files``
    files (the last pack may hold less), like Spark's ``maxPartitionBytes`` packing of small files:
    the control plane's cost is per partition, so many small files are cheaper as fewer, larger
    partitions. Each group is ordered as listed; groups are ordered by their first file."""
    if pack_bytes <= 0:
        return [[f] for f in files]
    pos = {f.key: i for i, f in enumerate(files)}
    out, cur, size = [], [], 0
    for f in files:
        if f.size is None or f.size >= pack_bytes:
            out.append([f])
            continue
        cur.append(f)
        size += f.size
        if size >= pack_bytes or len(cur) >= max_files:
            out.append(cur)
            cur, size = [], 0
    if cur:
        out.append(cur)
    return sorted(out, key=lambda g: pos[g[0].key])


def group_key(group: list[ShardFile]) -> str:
    """A single file keeps its own key; two or more files get a pack key."""
    return group[0].key if len(group) == 1 else pack_key([f.key for f in group])


def fingerprint(key: str, files: list[ShardFile]) -> str:
    """A partition's fingerprint: its file's own, or for a pack one digest of its members' (it
    changes when any member changes)."""
    if not is_pack_key(key):
        return files[0].fingerprint
    return "pack:" + hashlib.sha1("\n".join(f.fingerprint for f in files).encode("utf-8")).hexdigest()[:16]


def owners(order: list[str], members: dict[str, list[str]]) -> dict[str, str]:
    """``{file key: partition}``: each file belongs to the first partition, in registration
    ``order``, that holds it (a partition is its own file unless ``members`` lists a pack's files).
    Two registrations that raced and packed the same file twice therefore still ingest it once."""
    out: dict[str, str] = {}
    for p in order:
        for f in members.get(p, [p]):
            out.setdefault(f, p)
    return out


def pack_members_of(schema: pa.Schema) -> list[dict] | None:
    """The member files of a pack from its raw_docs schema (``None`` for a single-file shard)."""
    raw = (schema.metadata or {}).get(PACK_META)
    return json.loads(raw) if raw else None


def locate(members: list[dict], raw_rows) -> tuple[list[dict], list[int]]:
    """For rows of a pack (``raw_row``: numbered across its files), each row's member (its
    ``key`` and ``name``) and its row number inside that file."""
    starts, total = [], 0
    for m in members:
        starts.append(total)
        total += int(m["rows"])
    where, rows = [], []
    for r in raw_rows:
        i = bisect.bisect_right(starts, int(r)) - 1
        where.append(members[i])
        rows.append(int(r) - starts[i])
    return where, rows
