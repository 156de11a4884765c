"""One identity per output: what made it, recorded with it, checked by whoever reads it.

Every output (a per-shard file, a pool-level result, a proxy run, a token store, a checkpoint) has

* a **recipe**: ``digest(code version, recipes of its inputs)`` -- the code and configuration
  (by content: every asset's code version carries a digest of the config fields it reads) of the
  output and of everything upstream of it, whatever the data;
* an **identity**: ``digest(code version, partition, identities of the inputs it read)``, down to
  the raw files' fingerprints -- a verifying trace (Shake, "Build systems a la carte"), as Nix
  names a build by the hash of its inputs.

Both are written with the output in the same commit (a Parquet footer, a field of a JSON result,
a path segment) and recorded in the instance only after the output is committed: a per-partition
output logs an ``AssetObservation`` of its partition (``identity``, ``recipe``, ``ok``; batched runs
commit shard by shard, and Dagster copies one data version to every partition of a batched run --
dagster-io/dagster#34013 -- so the observation is the per-partition record), a pool-level output
carries them as its materialisation's metadata and data version.

An output is **current** when its record exists, its checks passed, and its recorded identity is
the one its inputs' recorded identities give now, every input current too. "Stale" is that
comparison, never the presence of a file. Fits refit on request (``ON_REQUEST``) are *held*: while
their recipe is unchanged, a change of data alone leaves them in use (what reads them takes their
recorded identity) until ``--refit``; a changed recipe (code or config) reruns them like anything else.

Pool steps read exactly the active partitions of what they depend on: the registered shards whose
files are listed now (``ingest.exclude`` takes shards out by name), the runs of the current plan.
"""
from __future__ import annotations

import fnmatch
import hashlib
import json
from dataclasses import dataclass, field

import dagster as dg

from .core import storage as st

#: Parquet footer key of a per-shard file's identity
FOOTER = b"metarater.identity"
#: the field of a JSON result that holds its identity
FIELD = "identity"
PAGE = 10_000

#: per-shard assets whose content score_stats' identity covers (pool steps reach them through it)
VIA_POOL = frozenset({"shard_index", "doc_tokens"})
#: plans a run-partitioned asset is registered from: a run's key addresses its spec's content, so
#: the plan orders the runs but is not part of each run's identity
PLANS = frozenset({"proxy_plan", "confirm_plan", "orientation_plan"})
#: run partitions and the plan asset that lists the current ones
PLAN_OF = {"proxy_runs": "proxy_plan", "confirm_runs": "confirm_plan", "orientation_runs": "orientation_plan"}
#: assets that read a subset of the runs: a run that failed or is missing is named, not fatal
TOLERANT = frozenset({"proxy_run", "confirm_run", "orientation_run"})
#: sources: the per-shard assets read from raw files (their fingerprints are their inputs)
SOURCES = frozenset({"raw_docs", "raw_quarantine", "precomputed_scores"})


def digest(obj) -> str:
    """A short, stable digest of a JSON-able value."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str, separators=(",", ":")).encode()).hexdigest()[:24]


@dataclass(frozen=True)
class Commit:
    identity: str  # what readers find in the output (the trace, or its content digest: early cutoff)
    recipe: str | None
    code_version: str | None
    ok: bool
    trace: str = ""  # the trace it was made under (its inputs' identities); = identity unless by content


def commit_metadata(identity: str, recipe: str, code_version: str | None, ok: bool = True,
                    trace: str | None = None) -> dict:
    return {"identity": identity, "recipe": recipe, "code_version": code_version or "", "ok": bool(ok),
            "trace": trace or identity}


def _commit(md) -> Commit | None:
    if "identity" not in md:
        return None
    val = lambda k: getattr(md.get(k), "value", md.get(k))  # noqa: E731
    return Commit(str(val("identity")), val("recipe") or None, val("code_version") or None,
                  bool(val("ok")) if "ok" in md else True, str(val("trace") or val("identity")))


class Ledger:
    """Recorded identities, read from the instance once per asset (a few paged queries, newest
    first): per-partition assets from their commit observations, pool-level assets from their
    latest materialisation. With a ``scope`` (a partitions name and keys: a batched run's own
    partitions), assets of those partitions are read for those keys only."""

    def __init__(self, instance: dg.DagsterInstance, scope: tuple[str, list[str]] | None = None):
        self.instance = instance
        self.scope = scope
        self._by_asset: dict[str, dict[str | None, Commit]] = {}
        self.queries = 0

    def _filters(self, asset: str, partitions: str | None):
        key = dg.AssetKey(asset)
        if partitions is not None and self.scope is not None and partitions == self.scope[0]:
            keys = list(self.scope[1])
            return [dg.AssetRecordsFilter(asset_key=key, asset_partitions=keys[i:i + 500])
                    for i in range(0, len(keys), 500)]
        return [dg.AssetRecordsFilter(asset_key=key)]

    def commits(self, asset: str, partitions: str | None) -> dict[str | None, Commit]:
        """``{partition: its latest commit}`` (``partitions``: the asset's partitions name, or None)."""
        if asset in self._by_asset:
            return self._by_asset[asset]
        out: dict[str | None, Commit] = {}
        partitioned = partitions is not None
        fetch = self.instance.fetch_observations if partitioned else self.instance.fetch_materializations
        for flt in self._filters(asset, partitions):
            cursor = None
            while True:
                res = fetch(flt, limit=PAGE if partitioned else 1, cursor=cursor)
                self.queries += 1
                for rec in res.records:
                    ev = rec.asset_observation if partitioned else rec.asset_materialization
                    if rec.partition_key in out:
                        continue
                    c = _commit(ev.metadata or {})
                    if c is not None:
                        out[rec.partition_key] = c
                    elif not partitioned:
                        out[None] = Commit("", None, (ev.tags or {}).get("dagster/code_version"), False)  # pre-identity
                cursor = res.cursor
                if not partitioned or not res.has_more:
                    break
        self._by_asset[asset] = out
        return out



@dataclass(frozen=True)
class Node:
    key: str
    code_version: str | None
    partitions: str | None  # dynamic partitions name, or None
    deps: tuple[tuple[str, str], ...]  # (upstream key, "same" | "pool" | "all")


def graph(assets) -> dict[str, Node]:
    """The asset graph as identities need it, from the assets' public specs."""
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
        if ("score_stats", "pool") in deps:  # the pool's content is score_stats' identity
            deps = [(u, m) for u, m in deps if not (m == "all" and u in VIA_POOL)]
        if pd in PLAN_OF:  # the run's key addresses its spec: the plan is not an input of the run
            deps = [(u, m) for u, m in deps if u not in PLANS]
        out[key] = Node(key, spec.code_version, pd, tuple(sorted(deps)))
    return out


class Sources:
    """The raw side: the active shards (registered, every file listed now, not excluded by
    ``ingest.exclude``) and each one's fingerprint (what its files are now). Given, or listed once
    on first use; a per-shard step that needs a few fingerprints looks up just those files."""

    def __init__(self, instance: dg.DagsterInstance | None = None, raw_uri: str | None = None, exclude=(),
                 fingerprints: dict[str, str] | None = None, excluded_keys=()):
        self.instance, self.raw_uri, self.exclude = instance, raw_uri, tuple(exclude or ())
        self._fps = fingerprints
        self._excluded = list(excluded_keys)
        self._one: dict[str, str | None] = {}
        self._resolver = None

    @classmethod
    def of(cls, fingerprints: dict[str, str], excluded_keys=()) -> "Sources":
        return cls(fingerprints=dict(fingerprints), excluded_keys=excluded_keys)

    def _load(self) -> dict[str, str]:
        if self._fps is None:
            from . import registry
            from .core import corpus
            from .partitions import shards

            order = list(self.instance.get_dynamic_partitions(shards.name))
            reg = registry.plan(corpus.list_shards(self.raw_uri), order, registry.pack_members(self.instance, order))
            present = sorted(reg.present)
            self._excluded = excluded(present, self.exclude)
            self._fps = {k: reg.fingerprint(k) for k in present if k not in self._excluded}
        return self._fps

    @property
    def shards(self) -> list[str]:
        return sorted(self._load())

    @property
    def excluded(self) -> list[str]:
        self._load()
        return list(self._excluded)

    def put(self, key: str, fingerprint: str | None) -> None:
        """The fingerprint a step found for ``key`` itself (ingest resolves its files anyway)."""
        if self._fps is None:
            self._one[key] = fingerprint

    def fingerprint(self, key: str) -> str | None:
        if self._fps is not None:
            return self._fps.get(key)
        if key not in self._one:  # one shard's files, without listing the raw folder
            from . import registry
            from .core import corpus, packs

            if excluded([key], self.exclude):
                self._one[key] = None
            else:
                if self._resolver is None:
                    self._resolver = registry.Resolver(self.instance, self.raw_uri)
                try:
                    files = self._resolver.files(key)
                    self._one[key] = packs.fingerprint(key, files) if files else None
                except (corpus.ShardError, FileNotFoundError):
                    self._one[key] = None
        return self._one[key]


def labels(items, n: int = 5) -> str:
    """``asset[partition]`` labels of the first ``n`` items, and how many more."""
    out = [f"{a}[{p}]" if p is not None else a for a, p in items[:n]]
    return ", ".join(out) + (f" (+{len(items) - n} more)" if len(items) > n else "")


def excluded(keys, patterns) -> list[str]:
    return [k for k in keys if any(fnmatch.fnmatchcase(k, p) for p in patterns or ())]


@dataclass
class Verdict:
    """Why an asset partition must run, or [] when it is current."""

    reasons: list[str]
    held: bool = False  # an on-request fit whose data changed (kept until --refit)
    blocked: list = field(default_factory=list)  # (asset, partition) inputs not current that it cannot run without


class Tracer:
    """Identities and currency of every asset partition, from the ledger, the graph, the sources
    and the current plans. One per step (it caches what it read)."""

    def __init__(self, instance: dg.DagsterInstance, assets, sources: Sources, storage_uri: str,
                 on_request=frozenset(), scope: tuple[str, list[str]] | None = None, shallow: bool = False):
        self.instance = instance
        self.ledger = Ledger(instance, scope)
        #: inside a batched run: an input is usable when its record exists, passed its checks and has
        #: today's recipe (the runner verified the whole trace before it launched the run); a pool
        #: step and the runner verify every input's trace down to the raw files
        self.shallow = shallow
        self.nodes = graph(assets)
        self.sources = sources
        self.storage_uri = storage_uri.rstrip("/")
        self.on_request = frozenset(on_request)
        self._recipe: dict[str, str] = {}
        self._current: dict[tuple[str, str | None], bool] = {}
        self._active: dict[str, list[str]] = {}

    # -- records -------------------------------------------------------------------------------
    def recorded(self, asset: str, partition: str | None = None) -> Commit | None:
        node = self.nodes[asset]
        return self.ledger.commits(asset, node.partitions).get(partition)

    def code_version(self, asset: str) -> str | None:
        return self.nodes[asset].code_version

    # -- what an output depends on ---------------------------------------------------------------
    def recipe(self, asset: str) -> str:
        if asset not in self._recipe:
            node = self.nodes[asset]
            self._recipe[asset] = digest([asset, node.code_version, [(u, self.recipe(u)) for u, _ in node.deps]])
        return self._recipe[asset]

    def active(self, partitions: str) -> list[str]:
        """The partitions a pool step reads: the active shards, or the current plan's runs."""
        if partitions not in self._active:
            if partitions == "shards":
                keys = self.sources.shards
            else:
                plan = PLAN_OF[partitions]
                uri = f"{self.storage_uri}/{plan}.json"
                rec = self.recorded(plan) if plan in self.nodes else None
                keys = []
                if rec is not None and rec.identity and st.exists(uri):
                    out = st.read_json(uri)
                    if out.get(FIELD) == rec.identity:
                        keys = [r["key"] for r in out["runs"]]
            self._active[partitions] = keys
        return self._active[partitions]

    def inputs(self, asset: str, partition: str | None) -> list[tuple[str, str | None, str]]:
        """(upstream, its partition, mode) of every input of ``asset[partition]``."""
        out = []
        for up, mode in self.nodes[asset].deps:
            if mode == "same":
                out.append((up, partition, mode))
            elif mode == "pool":
                out.append((up, None, mode))
            else:
                out += [(up, q, mode) for q in self.active(self.nodes[up].partitions)]
        return out

    def trace(self, asset: str, partition: str | None) -> tuple[str | None, list[tuple[str, str | None]], list[str]]:
        """(identity, inputs it cannot use, inputs left out): the identity ``asset[partition]``
        gets from its inputs' recorded identities now (None while a required input is not
        current); a tolerant pool step leaves out the runs that are not current."""
        node = self.nodes[asset]
        parts: list = [asset, node.code_version, partition]
        blocked, left_out = [], []
        if asset in SOURCES:
            fp = self.sources.fingerprint(partition)
            if fp is None:
                blocked.append(("raw file", partition))
            parts.append(["source", fp])
        if asset == "proxy_plan":  # the adaptive runs proposed so far join the plan
            uri = f"{self.storage_uri}/proposals.json"
            parts.append(["proposals", digest(st.read_json(uri)) if st.exists(uri) else None])
        for up, q, mode in self.inputs(asset, partition):
            if not self.current(up, q):
                if mode == "all" and up in TOLERANT:
                    left_out.append(q)
                    continue
                blocked.append((up, q))
                continue
            parts.append([up, q, self.recorded(up, q).identity])
        return (None if blocked else digest(parts)), blocked, left_out

    def current(self, asset: str, partition: str | None = None) -> bool:
        """Recorded, checks passed, and the identity its inputs give now (held fits: the recipe)."""
        k = (asset, partition)
        if k not in self._current:
            self._current[k] = False  # no cycles in an asset graph; guards a malformed one
            if self.shallow:
                rec = self.recorded(asset, partition)
                self._current[k] = bool(rec is not None and rec.identity and rec.ok and rec.recipe == self.recipe(asset))
            else:
                self._current[k] = not self.verdict(asset, partition, refit=False).reasons
        return self._current[k]

    def verdict(self, asset: str, partition: str | None = None, refit: bool = False) -> Verdict:
        rec = self.recorded(asset, partition)
        ident, blocked, _ = self.trace(asset, partition)
        if rec is None:
            return Verdict(["missing"], blocked=blocked)
        if not rec.identity:
            return Verdict(["recorded before identities (re-materialise)"], blocked=blocked)
        if not rec.ok:
            return Verdict(["its check failed, or a --refit superseded it"], blocked=blocked)
        if rec.recipe != self.recipe(asset):
            return Verdict([f"code or config of {asset} or upstream changed"
                            + ("" if rec.code_version == self.code_version(asset) else
                               f" ({asset}: {rec.code_version} -> {self.code_version(asset)})")], blocked=blocked)
        if (blocked or ident != rec.trace) and asset in self.on_request and not refit:
            return Verdict([], held=True)  # a fit of older data, kept until --refit
        if blocked:
            return Verdict([f"inputs not current: {labels(blocked)}"], blocked=blocked)
        if ident != rec.trace:
            return Verdict(["inputs changed since it was made"])
        return Verdict([])

    def identity(self, asset: str, partition: str | None = None) -> str:
        """The identity of what ``asset[partition]`` writes now; a ``dg.Failure`` naming the inputs
        that are missing, failed their checks or are stale."""
        ident, blocked, _ = self.trace(asset, partition)
        if ident is None:
            where = f"{asset}[{partition}]" if partition is not None else asset
            shard_inputs = partition is None and any(self.nodes[u].partitions == "shards" for u, _ in self.nodes[asset].deps)
            raise dg.Failure(f"{where} cannot run: its input(s) {labels(blocked, 10)} are missing, failed a "
                             "check or are stale; "
                             "materialise them first (metarater run)"
                             + ("; a shard that cannot be fixed can be taken out of the pool with ingest.exclude"
                                if shard_inputs else ""), allow_retries=False)
        return ident

    # -- reading inputs ----------------------------------------------------------------------------
    def expect(self, asset: str, partition: str | None = None) -> str:
        """The identity a reader must find in ``asset[partition]``'s output: its recorded one, which
        must be current."""
        rec = self.recorded(asset, partition)
        if rec is None or not self.current(asset, partition):
            where = f"{asset}[{partition}]" if partition is not None else asset
            why = "; ".join(self.verdict(asset, partition).reasons) or "not current"
            raise dg.Failure(f"{where} is not current ({why}): materialise it first", allow_retries=False)
        return rec.identity

    def check_file(self, asset: str, partition: str | None, found: str | None, what: str) -> None:
        want = self.expect(asset, partition)
        if found != want:
            where = f"{asset}[{partition}]" if partition is not None else asset
            raise dg.Failure(f"{what} holds identity {found!r}, but the instance records {want!r} for {where}: "
                             "the file was written by another run (a crash between its commit and its record, "
                             "or a concurrent run); re-materialise it", allow_retries=False)

    def read(self, files, asset: str, key: str, columns=None):
        """A per-shard table, after checking its footer carries the recorded, current identity."""
        table = files.read(asset, key, columns)
        self._check_schema(files, asset, key, table.schema)
        return table

    def batches(self, files, asset: str, key: str, columns=None, rows: int | None = None):
        """A per-shard table as batches of ``rows`` rows, after checking its footer (read alone)
        carries the recorded, current identity."""
        self._check_schema(files, asset, key, files.schema(asset, key))
        return files.batches(asset, key, columns, rows)

    def _check_schema(self, files, asset: str, key: str, schema) -> None:
        found = (schema.metadata or {}).get(FOOTER)
        self.check_file(asset, key, found.decode() if found else None, files.uri(asset, key))

    def check_json(self, asset: str, obj: dict) -> dict:
        self.check_file(asset, None, obj.get(FIELD) if isinstance(obj, dict) else None,
                        f"{self.storage_uri}/{asset}.json")
        return obj

    # -- recording outputs ------------------------------------------------------------------------
    def commit(self, asset: str, partition: str | None, identity: str, ok: bool = True,
               trace: str | None = None) -> dict:
        """The record of an output: ``identity`` (what readers find in it), the ``trace`` it was made
        under (default: the identity; an output identified by its content records both, so a rerun
        that gives the same content stales nothing downstream), its recipe and code version."""
        return commit_metadata(identity, self.recipe(asset), self.code_version(asset), ok, trace)

    def observation(self, asset: str, partition: str, identity: str, ok: bool = True, **metadata) -> dg.AssetObservation:
        """The record of one partition's committed output (log it once the output is committed)."""
        return dg.AssetObservation(asset_key=asset, partition=partition,
                                   metadata={**metadata, **self.commit(asset, partition, identity, ok)},
                                   tags={"dagster/data_version": identity})


def for_run(context, settings, cfg=None, **inputs: dict) -> Tracer:
    """A tracer inside a run: the graph of this config, the raw folder listed once (when asked);
    ``inputs`` (asset name -> the JSON result a step was given) are checked against their records."""
    from .defs import ON_REQUEST, all_assets

    cfg = cfg or settings.load()
    sources = Sources(context.instance, settings.raw_uri, cfg.exclude)
    scope = None
    partitioned = context.has_partition_key or context.has_partition_key_range
    pd = getattr(context.assets_def.partitions_def, "name", None) if partitioned else None
    if pd is not None:  # a batched run: its own partitions only, its inputs checked one level deep
        keys = list(context.partition_keys) if context.has_partition_key_range else [context.partition_key]
        scope = (pd, keys)
    tracer = Tracer(context.instance, all_assets(cfg), sources, settings.storage_uri, ON_REQUEST, scope=scope,
                    shallow=scope is not None)
    for name, obj in inputs.items():
        tracer.check_json(name, obj)
    return tracer


def supersede(tracer: Tracer, on_request, partitions=tuple(PLAN_OF)) -> list[tuple[str, str]]:
    """After a ``--refit``: every recorded run of an on-request, run-partitioned asset that is still
    not current (a run of an older plan, or one whose refit failed) is recorded as superseded, so
    that it is never *held* later: a run that re-enters the plan after the refit retrains on today's
    data instead of serving a fit of the data before it."""
    out = []
    for asset, node in tracer.nodes.items():
        if asset not in on_request or node.partitions not in partitions:
            continue
        for p, rec in tracer.ledger.commits(asset, node.partitions).items():
            if rec.ok and tracer.verdict(asset, p, refit=True).reasons:
                tracer.instance.report_runless_asset_event(dg.AssetObservation(
                    asset_key=asset, partition=p,
                    metadata={**commit_metadata(rec.identity, rec.recipe, rec.code_version, False, rec.trace),
                              "superseded": "fitted on data older than the last --refit"}))
                out.append((asset, p))
    return out


def footer(identity: str) -> dict[bytes, bytes]:
    return {FOOTER: identity.encode()}


def stamp(obj: dict, identity: str) -> dict:
    return {**obj, FIELD: identity}


def output(tracer: Tracer, asset: str, obj: dict, identity: str, metadata: dict | None = None,
           trace: str | None = None) -> dg.Output:
    """A pool-level JSON result stamped with its identity, recorded as its data version."""
    return dg.Output(stamp(obj, identity),
                     metadata={**(metadata or {}), **tracer.commit(asset, None, identity, trace=trace)},
                     data_version=dg.DataVersion(identity))


def result(tracer: Tracer, asset: str, identity: str, metadata: dict | None = None, trace: str | None = None,
           **kw) -> dg.MaterializeResult:
    """The materialisation of a pool-level output written by the asset itself."""
    return dg.MaterializeResult(metadata={**(metadata or {}), **tracer.commit(asset, None, identity, trace=trace)},
                                data_version=dg.DataVersion(identity), **kw)
