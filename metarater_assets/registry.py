"""The shard registry: which raw files each ``shards`` partition reads.

A partition is one file (its key names the file) or, with ``ingest.pack_bytes``, a pack of small
files (a ``pack-...`` key). Registration is the one place where new files become partitions,
shared by ``metarater run`` and the shard sensor: it takes the caller's one listing, packs the
new files, records each pack's members as an observation of ``raw_docs`` (shown on the partition
in the UI; read back with one paged query over the packs only), and only then adds the
partitions. Registration is sticky: a file keeps its partition when the packing settings change.
A file that two racing registrations put in two partitions belongs to the first one
(``packs.owners``), so it is ingested once.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import dagster as dg

from .core import corpus, packs
from .partitions import shards

#: metadata key of a pack's members on its raw_docs observations: [{"key", "name"}, ...]
PACK_MEMBERS = "pack_members"
_CHUNK = 500  # partition keys per query filter


def pack_members(instance: dg.DagsterInstance, keys) -> dict[str, list[dict]]:
    """``{pack key: [{"key", "name"}, ...]}`` for the packs among ``keys``, newest record first:
    a few paged queries over the packs' observations, none when there are no packs."""
    wanted = [k for k in keys if packs.is_pack_key(k)]
    out: dict[str, list[dict]] = {}
    for i in range(0, len(wanted), _CHUNK):
        cursor = None
        while True:
            res = instance.fetch_observations(
                dg.AssetRecordsFilter(asset_key=dg.AssetKey("raw_docs"), asset_partitions=wanted[i:i + _CHUNK]),
                limit=5000, cursor=cursor)
            for rec in res.records:
                md = rec.asset_observation.metadata
                if rec.partition_key not in out and PACK_MEMBERS in md:
                    out[rec.partition_key] = [{"key": m["key"], "name": m["name"]} for m in md[PACK_MEMBERS].value]
            cursor = res.cursor
            if not res.has_more:
                break
    missing = sorted(set(wanted) - set(out))
    if missing:
        raise RuntimeError(f"pack partition(s) without a recorded member list: {missing[:5]} "
                           "(their registration was not recorded; delete the partitions and run again)")
    return out


def _owners(order: list[str], members: dict[str, list[dict]]) -> dict[str, str]:
    return packs.owners(order, {p: [m["key"] for m in ms] for p, ms in members.items()})


def membership_event(key: str, group: list[corpus.ShardFile]) -> dg.AssetObservation:
    return dg.AssetObservation(asset_key="raw_docs", partition=key, metadata={
        PACK_MEMBERS: dg.MetadataValue.json([{"key": f.key, "name": f.name} for f in group]),
        "files": len(group), "bytes": sum(f.size or 0 for f in group)})


@dataclass
class Registration:
    """The shard partitions after a registration, and what it changed."""

    order: list[str]  # every partition, registered before or now, in registration order
    files: dict[str, list[corpus.ShardFile]]  # partition -> the files it reads, as listed now
    missing: dict[str, list[str]] = field(default_factory=dict)  # partition -> its files not listed
    new: list[str] = field(default_factory=list)  # partitions this registration adds
    events: list[dg.AssetObservation] = field(default_factory=list)  # pack members, recorded first
    pending: list[str] = field(default_factory=list)  # new files left for a later registration
    new_files: int = 0

    @property
    def present(self) -> set[str]:
        """Partitions whose files are all there (a partition with a removed file is skipped, its
        outputs kept from its last ingest, as for a removed single file)."""
        return {p for p, fs in self.files.items() if fs and p not in self.missing}

    def fingerprint(self, key: str) -> str:
        return packs.fingerprint(key, self.files[key])

    def owner(self) -> dict[str, str]:
        return {f.key: p for p, fs in self.files.items() for f in fs}


def plan(files: list[corpus.ShardFile], order: list[str], members: dict[str, list[dict]], pack_bytes: int = 0,
         max_files: int = 1000, max_new: int | None = None) -> Registration:
    """Which files each registered partition reads, and the partitions for the files no
    partition holds yet (at most ``max_new`` of them now, the rest in ``pending``)."""
    listed = {f.key: f for f in files}
    own = _owners(order, members)
    reg = Registration(order=list(order), files={})
    for p in order:
        keys = [m["key"] for m in members[p]] if p in members else [p]
        mine = [k for k in keys if own.get(k) == p]
        reg.files[p] = [listed[k] for k in mine if k in listed]
        gone = [k for k in mine if k not in listed]
        if gone:
            reg.missing[p] = gone
    new_files = [f for f in files if f.key not in own]
    if max_new is not None and len(new_files) > max_new:
        reg.pending = [f.key for f in new_files[max_new:]]
        new_files = new_files[:max_new]
    reg.new_files = len(new_files)
    for group in packs.plan_packs(new_files, pack_bytes, max_files):
        key = packs.group_key(group)
        reg.files[key] = group
        reg.new.append(key)
        reg.order.append(key)
        if len(group) > 1:
            reg.events.append(membership_event(key, group))
    return reg


def register(instance: dg.DagsterInstance, files: list[corpus.ShardFile], pack_bytes: int = 0,
             max_files: int = 1000) -> Registration:
    """Plan the registration of ``files`` (the caller's one listing) and record it: the packs'
    member lists first, then the new partitions."""
    order = list(instance.get_dynamic_partitions(shards.name))
    reg = plan(files, order, pack_members(instance, order), pack_bytes, max_files)
    for ev in reg.events:
        instance.report_runless_asset_event(ev)
    if reg.new:
        instance.add_dynamic_partitions(shards.name, reg.new)
    return reg


class Resolver:
    """The files behind partitions inside a run: the registry read once (the partitions and the
    packs' member lists), then one ``info`` call per file."""

    def __init__(self, instance: dg.DagsterInstance, raw_uri: str):
        self.raw_uri = raw_uri
        order = list(instance.get_dynamic_partitions(shards.name))
        self.members = pack_members(instance, order)
        self.own = _owners(order, self.members)

    def files(self, key: str) -> list[corpus.ShardFile]:
        """The files ``key`` reads ([] when an earlier partition holds its file)."""
        if key in self.members:
            return [corpus.shard_at(self.raw_uri, m["name"]) for m in self.members[key] if self.own.get(m["key"]) == key]
        if self.own.get(key, key) != key:
            return []
        return [corpus.find_shard(self.raw_uri, key)]

    def owner(self, file_key: str) -> str | None:
        return self.own.get(file_key)


def small_files_hint(reg: Registration, pack_bytes: int, threshold: int = 1000, small: int = 1 << 20) -> str | None:
    """A hint when many small files became partitions of their own (``ingest.pack_bytes`` unset)."""
    if pack_bytes or len(reg.new) < threshold:
        return None
    sizes = [f.size for k in reg.new for f in reg.files[k] if f.size is not None]
    if not sizes or sum(sizes) / len(sizes) >= small:
        return None
    return (f"hint: {len(reg.new)} new files of {sum(sizes) / len(sizes) / 1e3:.0f} KB on average each became a "
            "partition; the control plane costs about the same per partition whatever its size, so set "
            "ingest.pack_bytes (e.g. 16MB) to pack small files into partitions (README, 'Many small files')")
