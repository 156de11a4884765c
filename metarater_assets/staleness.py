"""Which asset partitions are missing or stale, from the instance's materialisation records
through Dagster's public API only, at any number of partitions.

For each asset the records are read once, page by page (a bounded number of queries per asset,
never one per partition), newest first; the latest record of each partition carries the code
version it ran with and its storage id (the event's position in the log). A partition is

* **missing**: no materialisation;
* **stale (code)**: its code version (which carries the asset's config digest) changed;
* **stale (upstream)**: an upstream it reads was materialised after it: the same shard of a
  per-shard upstream; a pool-level upstream whose data version changed since (pool-level outputs
  carry content-hash data versions, so a refit with the same result stales nothing); any shard of
  a per-shard upstream of a pool-level asset ("is there a materialisation of an upstream after
  this asset's last one"). Dagster's own resolver stops tracking upstream partitions past 100; this
  one does not.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import dagster as dg

PAGE = 10_000
#: per-shard assets whose content score_stats' data version covers
VIA_POOL = frozenset({"shard_index", "doc_tokens"})


@dataclass
class Rec:
    storage_id: int
    code_version: str | None
    data_version: str | None


@dataclass
class AssetState:
    """Every partition's records (newest first) of one asset."""

    by_partition: dict[str | None, list[Rec]] = field(default_factory=dict)
    max_storage_id: int = -1

    def latest(self, partition: str | None) -> Rec | None:
        recs = self.by_partition.get(partition)
        return recs[0] if recs else None

    def version_before(self, partition: str | None, storage_id: int) -> str | None:
        """The data version the partition had just before ``storage_id``."""
        for r in self.by_partition.get(partition) or []:  # newest first
            if r.storage_id < storage_id:
                return r.data_version
        return None

    def updated_after(self, storage_id: int) -> list[str | None]:
        return [p for p, recs in self.by_partition.items() if recs and recs[0].storage_id > storage_id]


@dataclass(frozen=True)
class Node:
    key: str
    code_version: str | None
    partitions: str | None  # dynamic partitions name, or None
    deps: tuple[tuple[str, str], ...]  # (upstream key, "same" | "pool" | "all")


def graph(assets) -> dict[str, Node]:
    """The asset graph as the staleness rules need it, from the assets' public specs."""
    specs = {}
    for ad in assets:
        for spec in ad.specs:
            specs[spec.key.to_user_string()] = spec
    out = {}
    for key, spec in specs.items():
        pd = getattr(spec.partitions_def, "name", None)
        deps = []
        for d in spec.deps:
            up = d.asset_key.to_user_string()
            if up not in specs:
                continue
            up_pd = getattr(specs[up].partitions_def, "name", None)
            if up_pd is None:
                mode = "pool"
            elif pd == up_pd and not isinstance(d.partition_mapping, dg.AllPartitionMapping):
                mode = "same"
            else:
                mode = "all"
            deps.append((up, mode))
        # pool steps that read the shards through score_stats follow its data version, which digests
        # every shard's index and token ids: a shard re-indexed with the same content stales nothing
        if ("score_stats", "pool") in deps:
            deps = [(u, m) for u, m in deps if not (m == "all" and u in VIA_POOL)]
        out[key] = Node(key, spec.code_version, pd, tuple(deps))
    return out


class Staleness:
    def __init__(self, instance: dg.DagsterInstance, assets):
        self.instance = instance
        self.nodes = graph(assets)
        self._state: dict[str, AssetState] = {}
        self.queries = 0

    def state(self, key: str) -> AssetState:
        if key not in self._state:
            st = AssetState()
            cursor = None
            while True:
                res = self.instance.fetch_materializations(dg.AssetRecordsFilter(asset_key=dg.AssetKey(key)),
                                                           limit=PAGE, cursor=cursor)
                self.queries += 1
                for r in res.records:
                    tags = r.asset_materialization.tags or {}
                    st.by_partition.setdefault(r.partition_key, []).append(
                        Rec(r.storage_id, tags.get("dagster/code_version"), tags.get("dagster/data_version")))
                    st.max_storage_id = max(st.max_storage_id, r.storage_id)
                cursor = res.cursor
                if not res.has_more:
                    break
            self._state[key] = st
        return self._state[key]

    def reasons(self, key: str, partition: str | None = None) -> list[str]:
        """Why ``key[partition]`` must run ([] = fresh)."""
        node = self.nodes[key]
        rec = self.state(key).latest(partition)
        if rec is None:
            return ["missing"]
        out = []
        if node.code_version is not None and rec.code_version != node.code_version:
            out.append(f"code: {key} code version {rec.code_version} -> {node.code_version}")
        for up, mode in node.deps:
            ust = self.state(up)
            if ust.max_storage_id <= rec.storage_id:
                continue
            if mode == "same":
                u = ust.latest(partition)
                if u is not None and u.storage_id > rec.storage_id:
                    out.append(f"upstream: {up}[{partition}] updated")
            elif mode == "pool":
                u = ust.latest(None)
                if u is not None and u.storage_id > rec.storage_id and \
                        u.data_version != ust.version_before(None, rec.storage_id):
                    out.append(f"upstream: {up} changed")
            else:
                n = len(ust.updated_after(rec.storage_id))
                if n:
                    out.append(f"upstream: {n} partition(s) of {up} updated")
        return out

    def needs_run(self, key: str, partition: str | None = None) -> str | None:
        """'missing', 'stale' or None (fresh)."""
        r = self.reasons(key, partition)
        if not r:
            return None
        return "missing" if r == ["missing"] else "stale"

    def own_code_changed(self, key: str, partition: str | None = None) -> bool:
        return any(r.startswith("code:") for r in self.reasons(key, partition))

    def causes(self, key: str, partition: str | None = None) -> list[str]:
        return self.reasons(key, partition)
