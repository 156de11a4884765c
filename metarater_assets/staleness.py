"""Which asset partitions are missing or stale, via Dagster's own stale-status resolver.

Dagster computes staleness (code version changed, upstream data version changed) for the UI;
this module asks the same resolver, so `metarater run` and the UI agree on what is stale.
"""
from __future__ import annotations

import dagster as dg
from dagster._core.definitions.assets.graph.asset_graph import AssetGraph
from dagster._core.definitions.data_version import (CachingStaleStatusResolver, StaleCauseCategory,
                                                    StaleStatus)
from dagster._core.definitions.temporal_context import TemporalContext
from dagster._core.asset_graph_view.asset_graph_view import AssetGraphView
from dagster._time import get_current_datetime


class Staleness:
    def __init__(self, instance: dg.DagsterInstance, assets):
        graph = AssetGraph.from_assets(assets)
        view = AssetGraphView(
            temporal_context=TemporalContext(effective_dt=get_current_datetime(), last_event_id=None),
            instance=instance, asset_graph=graph)
        self._resolver = CachingStaleStatusResolver(instance=instance, asset_graph=graph,
                                                    loading_context=view)

    def needs_run(self, key: str, partition: str | None = None) -> str | None:
        """'missing', 'stale' or None (fresh)."""
        status = self._resolver.get_status(dg.AssetKey(key), partition)
        if status == StaleStatus.MISSING:
            return "missing"
        if status == StaleStatus.STALE:
            return "stale"
        return None

    def own_code_changed(self, key: str, partition: str | None = None) -> bool:
        """True when the asset's own code version (which carries its config digest) changed."""
        return any(c.category == StaleCauseCategory.CODE and c.key.asset_key == dg.AssetKey(key)
                   for c in self._resolver.get_stale_causes(dg.AssetKey(key), partition))

    def causes(self, key: str, partition: str | None = None) -> list[str]:
        return [f"{c.category.name.lower()}: {c.reason}"
                for c in self._resolver.get_stale_causes(dg.AssetKey(key), partition)]
