"""Which asset partitions are missing or stale, by identity (``identity.py``): a partition is

* **missing**: no output recorded;
* **stale**: its recorded identity is not the one its inputs' recorded identities give now, its
  recipe (its own or an upstream's code or config, by content) changed, or its check failed;
* **held**: a fit refit on request (``ON_REQUEST``) whose data changed; kept until ``--refit``.

Never by the presence of a file, never by event order: one paged query per asset, whatever the
number of partitions.
"""
from __future__ import annotations

import dagster as dg

from . import identity


class Staleness:
    """Staleness of every asset partition as ``metarater run`` decides it."""

    def __init__(self, instance: dg.DagsterInstance, assets, settings=None, sources: identity.Sources | None = None):
        from .defs import ON_REQUEST

        if sources is None:
            if settings is not None:
                from .core.config import load_config

                sources = identity.Sources(instance, settings.raw_uri, load_config(settings.config_path).exclude)
            else:  # no raw folder to list: the files as they were ingested
                from .ingest import ingest_facts

                sources = identity.Sources.of({k: f["fingerprint"] for k, f in ingest_facts(instance).items()
                                               if f.get("fingerprint")})
        self.tracer = identity.Tracer(instance, assets, sources, settings.storage_uri if settings else "",
                                      ON_REQUEST)
        self.nodes = self.tracer.nodes

    @property
    def queries(self) -> int:
        return self.tracer.ledger.queries

    def reasons(self, key: str, partition: str | None = None) -> list[str]:
        """Why ``key[partition]`` must run ([] = current, or held)."""
        return self.tracer.verdict(key, partition).reasons

    def needs_run(self, key: str, partition: str | None = None) -> str | None:
        """'missing', 'stale' or None (current)."""
        r = self.reasons(key, partition)
        if not r:
            return None
        return "missing" if r == ["missing"] else "stale"

    def own_code_changed(self, key: str, partition: str | None = None) -> bool:
        rec = self.tracer.recorded(key, partition)
        return rec is not None and rec.code_version != self.tracer.code_version(key)

    def causes(self, key: str, partition: str | None = None) -> list[str]:
        return self.reasons(key, partition)
