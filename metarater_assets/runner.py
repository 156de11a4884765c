"""Execution for the CLI: register shards, then materialise what is missing or stale, step by step.

Each step's stale partitions are grouped into batches of up to ``compute.shards_per_run``
consecutive shards (the same partition-key ranges a UI backfill launches with the assets'
``BackfillPolicy``); each batch is one Dagster run on the persistent instance, so the UI shows
every run. Up to ``compute.workers`` runs go at once, each in its own process. A batch that fails
is retried shard by shard, so one bad file fails alone. The raw folder is listed once per
invocation and staleness costs a few paged queries per asset, whatever the number of partitions.
"""
from __future__ import annotations

import os
import time
import warnings
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Callable

import dagster as dg

from . import identity
from .core import corpus
from .core.devices import usable_cpus
from .defs import ON_REQUEST, STAGE_NAMES, all_assets, build_resources, steps_for
from .ingest import ingest_facts
from .proxies import TIERS, kind_config
from .registry import Registration, register, small_files_hint
from resources import Settings

RANGE_START = "dagster/asset_partition_range_start"
RANGE_END = "dagster/asset_partition_range_end"

#: Dagster's console logger is silent in the CLI (it prints its own progress and each error once;
#: the full trace stays in the run's event log, visible in the UI); METARATER_LOG_LEVEL overrides.
def _logs() -> dict:
    return {"loggers": {"console": {"config": {"log_level": os.environ.get("METARATER_LOG_LEVEL", "CRITICAL")}}}}


warnings.filterwarnings("ignore", category=dg.BetaWarning)
warnings.filterwarnings("ignore", category=dg.PreviewWarning)
warnings.filterwarnings("ignore", message=".*LeafSpec.*")


def quiet_libraries() -> None:
    """Transformers at errors only and without progress bars, through its environment variables (read
    when it is imported: nothing heavy is imported here); Lightning is turned down where it is
    imported (``core.proxy_lm.quiet_lightning``)."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")


@dataclass
class RunSummary:
    materialised: list[tuple[str, str | None]] = field(default_factory=list)
    failed: list[dict] = field(default_factory=list)
    blocked: list[dict] = field(default_factory=list)  # could not run: an input failed, is missing or excluded
    held: list[str] = field(default_factory=list)  # on-request fits kept although their data changed
    new_shards: list[str] = field(default_factory=list)
    changed_shards: list[str] = field(default_factory=list)
    runs: int = 0
    queries: int = 0


def register_shards(instance: dg.DagsterInstance, files: list[corpus.ShardFile], cfg) -> tuple[Registration, list[str]]:
    """Register new files as partitions (packed with ``ingest.pack_bytes``); return the
    registration and the partitions whose files changed since their ingest."""
    reg = register(instance, files, cfg.pack_bytes, cfg.pack_max_files)
    facts = ingest_facts(instance)
    present = reg.present
    changed = [k for k in reg.order if k in present and k in facts
               and facts[k].get("fingerprint") not in (None, reg.fingerprint(k))]
    return reg, changed


def user_error(err) -> str:
    """The first error in a chain that is not a Dagster wrapper, as 'Class: message'."""

    def short(e):
        return e.cls_name.rsplit(".", 1)[-1]

    while (short(err).startswith("Dagster") or short(err).startswith("RetryRequested")) and err.cause is not None:
        err = err.cause
    msg = err.message.strip()
    if short(err) == "Failure":
        return msg.split("Failure: ", 1)[-1] if msg.startswith("dagster.") else msg
    return msg if msg.startswith(f"{short(err)}:") else f"{short(err)}: {msg}"


def _error_message(result) -> str:
    for ev in result.all_events:
        if ev.is_step_failure:
            return user_error(ev.step_failure_data.error)
    for ev in result.all_events:
        if ev.event_type_value == "ASSET_CHECK_EVALUATION":
            data = ev.event_specific_data
            if not data.passed:
                return f"asset check {data.check_name} failed"
    return "run failed"


@dataclass(frozen=True)
class Batch:
    assets: tuple[str, ...]
    partitions: tuple[str, ...]  # () for an unpartitioned step
    stage: str

    @property
    def label(self) -> str:
        p = self.partitions
        where = "" if not p else f" [{p[0]}]" if len(p) == 1 else f" [{p[0]} .. {p[-1]}: {len(p)}]"
        return ", ".join(self.assets) + where


# ------------------------------------------------------------------------------------------
# Running one batch (here or in a worker process)

_CHILD: dict = {}


def _execute(settings: Settings, batch: Batch, instance: dg.DagsterInstance | None = None,
             assets=None, resources=None, extra_tags: dict | None = None) -> tuple[bool, str, float]:
    t0 = time.perf_counter()
    instance = instance or dg.DagsterInstance.get()
    from .runs import run_tags

    tags = {"metarater/cli": "run", "metarater/stage": batch.stage, "metarater/assets": ",".join(batch.assets),
            **run_tags(), **(extra_tags or {})}
    kw = {}
    if len(batch.partitions) == 1:
        kw["partition_key"] = batch.partitions[0]
    elif batch.partitions:
        tags.update({RANGE_START: batch.partitions[0], RANGE_END: batch.partitions[-1]})
    result = dg.materialize(assets, selection=list(batch.assets), instance=instance, resources=resources,
                            raise_on_error=False, run_config=_logs(), tags=tags, **kw)
    return result.success, "" if result.success else _error_message(result), time.perf_counter() - t0


def _child_init(settings: tuple, dagster_home: str, threads: int) -> None:
    os.environ["DAGSTER_HOME"] = dagster_home
    from resources.settings import sqlite_commit_mode

    sqlite_commit_mode()
    # torch (imported only by a step that needs it) takes its intra-op threads from OMP_NUM_THREADS
    os.environ["OMP_NUM_THREADS"] = str(threads)
    quiet_libraries()
    s = Settings(*settings)
    from .core.config import load_config

    cfg = load_config(s.config_path)
    _CHILD.update(settings=s, assets=all_assets(cfg), resources=build_resources(s, cfg),
                  instance=dg.DagsterInstance.get())


def _child_run(batch: Batch, tags: dict | None = None) -> tuple[bool, str, float]:
    return _execute(_CHILD["settings"], batch, _CHILD["instance"], _CHILD["assets"], _CHILD["resources"], tags)


class Launcher:
    """Runs batches in this process (``workers`` 1) or in a pool of worker processes."""

    def __init__(self, settings: Settings, instance: dg.DagsterInstance, assets, resources, workers: int):
        self.settings, self.instance, self.assets, self.resources = settings, instance, assets, resources
        self.workers = max(1, workers)
        self._pool = None

    def _ensure_pool(self):
        if self._pool is None:
            import multiprocessing as mp

            threads = max(1, usable_cpus() // self.workers)
            s = self.settings
            self._pool = ProcessPoolExecutor(
                self.workers, mp_context=mp.get_context("spawn"), initializer=_child_init,
                initargs=((s.home, s.raw_uri, s.config_path), self.instance.root_directory, threads))
        return self._pool

    def run(self, batches: list[Batch], done: Callable[[Batch, bool, str, float], list[Batch]]) -> None:
        """Run every batch; ``done`` is called as each finishes and may return batches to run next."""
        queue = list(batches)
        if self.workers == 1 or len(queue) == 1 or self.instance.root_directory is None:
            while queue:
                b = queue.pop(0)
                queue.extend(done(b, *_execute(self.settings, b, self.instance, self.assets, self.resources)))
            return
        pool = self._ensure_pool()
        running = {}
        while queue or running:
            while queue and len(running) < self.workers:
                b = queue.pop(0)
                running[pool.submit(_child_run, b)] = b
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for fut in finished:
                b = running.pop(fut)
                queue.extend(done(b, *fut.result()))

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()


# ------------------------------------------------------------------------------------------
# compute.engine: ray -- the batches of partitioned steps as Ray tasks

BATCH_TAG = "metarater/batch"
NODE_TAG = "metarater/ray_node"
ACTOR_TAG = "metarater/ray_actor"
#: proxy steps: they train a model on an accelerator (so do the model scores, ``score_<name>``)
PROXY_RUN_ASSETS = ("proxy_run", "confirm_run", "orientation_run")


def _ray_batch(settings: tuple, dagster_home: str, threads: int, batch: Batch, token: str) -> tuple[bool, str, float]:
    """One batch in a Ray worker process: the run it makes is a Dagster run on the shared instance,
    tagged with the submission's token (a retried task's dead attempt is found by it)."""
    import ray

    key = (settings, dagster_home)
    if _CHILD.get("key") != key:  # a Ray worker serves many tasks: load the project once
        _child_init(settings, dagster_home, threads)
        _CHILD["key"] = key
    ctx = ray.get_runtime_context()
    tags = {BATCH_TAG: token, NODE_TAG: ctx.get_node_id()}
    if ctx.get_actor_id():  # a model worker: its batches share its process and its models
        tags[ACTOR_TAG] = ctx.get_actor_id()
    return _child_run(batch, tags)


class _ModelWorker:
    """A Ray actor for the steps that hold a model (model scores, proxy runs): it holds its GPU (or
    the stand-in resource) for the whole command and runs batch after batch in one process, so a
    rater is loaded once per actor, not once per batch (``scoring.held_rater``)."""

    def run(self, settings: tuple, dagster_home: str, threads: int, batch: Batch, token: str):
        return _ray_batch(settings, dagster_home, threads, batch, token)


class RayLauncher:
    """``compute.engine: ray``: each batch of a partitioned step is a Ray task on the cluster named
    by ``RAY_ADDRESS`` (a local Ray when unset), at most ``workers`` at a time; a task whose worker
    or node dies is retried by Ray (``compute.ray.max_retries``) on the nodes that remain. Batches
    of the steps that hold a model go to actors instead (``_ModelWorker``: one per GPU slot of the
    cluster, at most ``workers``), each keeping its model loaded for all the step's batches it is
    given, and let go when the step's batches are out; an actor whose node dies is restarted by
    Ray and its batch retried. Outputs are committed by the shard that wrote them, so
    a retried batch rewrites nothing that a reader could have taken for complete. Unpartitioned
    steps run here, in the driver."""

    def __init__(self, settings: Settings, instance: dg.DagsterInstance, assets, resources, workers: int, cfg):
        import ray

        self.settings, self.instance, self.assets, self.resources = settings, instance, assets, resources
        ray_cfg = cfg.compute.get("ray") or {}
        self.cpus = float(ray_cfg.get("num_cpus", 1))
        self.gpu_resource = ray_cfg.get("gpu_resource")
        self.gpus = float(cfg.compute.get("devices") or 1) if cfg.compute.get("accelerator") in ("gpu", "cuda") else 0.0
        self.retries = int(ray_cfg.get("max_retries", 3))
        from .scoring import score_asset

        # steps that hold a model on an accelerator: a GPU each, or the configured stand-in resource
        self.gpu_assets = {*PROXY_RUN_ASSETS, *(score_asset(n) for n in cfg.model_scores)}
        if not ray.is_initialized():
            address = os.environ.get("RAY_ADDRESS") or None
            # a cluster of one's own (RAY_ADDRESS), or a Ray started here for this run
            ray.init(address=address, log_to_driver=False, configure_logging=False,
                     **({} if address else {"include_dashboard": False}))
        self.workers = max(1, workers)
        # per-shard batches: tasks, retried by Ray when their worker or node dies (not on errors)
        self._task = ray.remote(_ray_batch).options(num_cpus=self.cpus, max_retries=self.retries,
                                                    retry_exceptions=False)
        self._actor_cls = ray.remote(_ModelWorker)
        self._actors: list = []  # model workers, made when a batch first needs one
        self._idle: list = []

    def _accelerator(self) -> dict:
        if self.gpus:
            return {"num_gpus": self.gpus}
        if self.gpu_resource:
            return {"resources": {str(self.gpu_resource): 1}}
        return {}

    def _holds_model(self, batch: Batch) -> bool:
        return bool(self.gpu_assets.intersection(batch.assets))

    def _slots(self) -> int:
        """Model workers the cluster can place at once: its GPUs (or stand-in units) over what one
        asks for, at most ``workers``."""
        import ray

        total = ray.cluster_resources()
        if self.gpus:
            have, need, what = total.get("GPU", 0.0), self.gpus, "GPU"
        elif self.gpu_resource:
            have, need, what = total.get(str(self.gpu_resource), 0.0), 1.0, f"resource {self.gpu_resource!r}"
        else:
            return self.workers
        if have < need:
            raise RuntimeError(f"the Ray cluster has {have:g} {what} and a model step needs {need:g}: start nodes "
                               f"with it (ray start --num-gpus / --resources) or change compute.ray.gpu_resource")
        return max(1, min(self.workers, int(have // need)))

    def _actor(self):
        """An idle model worker, a new one while the cluster can place one more, else None."""
        if self._idle:
            return self._idle.pop()
        if len(self._actors) < self._slots():
            actor = self._actor_cls.options(num_cpus=self.cpus, max_restarts=self.retries,
                                            max_task_retries=self.retries, **self._accelerator()).remote()
            self._actors.append(actor)
            return actor
        return None

    def _dead_attempts(self, token: str) -> None:
        """Runs of this batch still in progress: attempts whose worker died (the task was retried)."""
        from .runs import IN_PROGRESS

        for r in self.instance.get_runs(filters=dg.RunsFilter(tags={BATCH_TAG: token}, statuses=IN_PROGRESS)):
            self.instance.report_run_failed(r)

    def run(self, batches: list[Batch], done: Callable[[Batch, bool, str, float], list[Batch]]) -> None:
        import uuid

        import ray

        queue = list(batches)
        s = self.settings
        threads = max(1, int(self.cpus))
        running: dict = {}
        args = ((s.home, s.raw_uri, s.config_path), self.instance.root_directory, threads)
        while queue or running:
            while queue and len(running) < self.workers:
                b = queue[0]
                if not b.partitions:  # a pool-level step: here, in the driver
                    queue.pop(0)
                    queue.extend(done(b, *_execute(s, b, self.instance, self.assets, self.resources)))
                    continue
                token = uuid.uuid4().hex
                if self._holds_model(b):
                    actor = self._actor()
                    if actor is None:  # every model worker is busy: wait for one
                        break
                    queue.pop(0)
                    ref = actor.run.remote(*args, b, token)
                else:
                    actor = None
                    queue.pop(0)
                    ref = self._task.remote(*args, b, token)
                running[ref] = (b, token, actor)
            if not running:
                continue
            ready, _ = ray.wait(list(running), num_returns=1)
            for ref in ready:
                b, token, actor = running.pop(ref)
                if actor is not None:
                    self._idle.append(actor)
                if not any(self._holds_model(q) for q in queue):
                    self._release_idle()  # the step's model batches are out: its CPUs and GPUs back
                try:
                    res = ray.get(ref)
                except ray.exceptions.RayError as e:  # its retries spent: the worker or node kept dying
                    res = (False, f"Ray: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}", 0.0)
                self._dead_attempts(token)
                queue.extend(done(b, *res))

    def _release_idle(self) -> None:
        import ray

        for actor in self._idle:
            ray.kill(actor)
            self._actors.remove(actor)
        self._idle = []

    def close(self) -> None:
        import ray

        for actor in self._actors:  # their GPUs back to the cluster now, not when the driver goes
            ray.kill(actor)
        self._actors, self._idle = [], []
        if ray.is_initialized():
            ray.shutdown()


def _contiguous(keys: list[str], order: list[str], size: int) -> list[list[str]]:
    pos = {k: i for i, k in enumerate(order)}
    out, cur = [], []
    for k in sorted(keys, key=pos.__getitem__):
        if cur and (pos[k] != pos[cur[-1]] + 1 or len(cur) >= size):
            out.append(cur)
            cur = []
        cur.append(k)
    if cur:
        out.append(cur)
    return out


def _workers(cfg, override: int | None) -> int:
    if override:
        return override
    w = cfg.compute.get("workers")
    return int(w) if w not in (None, "auto") else usable_cpus()


def run_pipeline(settings: Settings, stage: str, instance: dg.DagsterInstance | None = None,
                 echo: Callable[[str], None] = print, force: tuple[str, ...] = (),
                 refit: bool = False, workers: int | None = None, only: tuple[str, ...] = ()) -> RunSummary:
    """Materialise, step by step up to ``stage``, every asset partition that is missing or stale
    (``ON_REQUEST`` assets: only when missing, their own code/config changed, forced or ``refit``);
    with ``only``, just those assets (what they need must already be there)."""
    if stage not in STAGE_NAMES:
        raise ValueError(f"unknown stage {stage!r}; stages: {', '.join(STAGE_NAMES)}")
    instance = instance or dg.DagsterInstance.get()
    quiet_libraries()
    from .core.config import load_config

    cfg = load_config(settings.config_path)  # a broken config stops here, clearly
    assets = all_assets(cfg)
    resources = build_resources(settings, cfg)
    size = int(cfg.compute["shards_per_run"])
    summary = RunSummary()
    files = corpus.list_shards(settings.raw_uri)  # the only listing of the raw folder
    reg, changed = register_shards(instance, files, cfg)
    new = reg.new
    summary.new_shards, summary.changed_shards = new, changed
    if new:
        packed = f" ({reg.new_files} files packed by ingest.pack_bytes)" if reg.new_files > len(new) else ""
        echo(f"registered {len(new)} new shard(s){packed}: {_short(new)}")
        hint = small_files_hint(reg, cfg.pack_bytes)
        if hint:
            echo(hint)
    if changed:
        echo(f"{len(changed)} shard(s) with files changed since ingest: {_short(changed)}")
    if reg.missing:
        echo(f"{len(reg.missing)} shard(s) skipped, file(s) removed (their outputs stay from the last ingest): "
             f"{_short(sorted(reg.missing))}")
    present = reg.present
    if not present:
        echo(f"warning: no shard files under {settings.raw_uri} (looked for {', '.join(sorted(corpus.FORMATS))}; "
             "dot-files and partial uploads are ignored)")
    gone = identity.excluded(sorted(present), cfg.exclude)
    if gone:
        echo(f"{len(gone)} shard(s) taken out of the pool by ingest.exclude: {_short(gone)}")
    sources = identity.Sources.of({k: reg.fingerprint(k) for k in present if k not in gone}, gone)
    from .runs import mark_dead_runs

    dead = mark_dead_runs(instance)
    if dead:
        echo(f"{len(dead)} run(s) of a worker that died (e.g. killed by the OOM killer) marked failed: {_short(dead)}")
    if cfg.compute.get("engine") == "ray":
        if instance.root_directory is None:
            raise ValueError("compute.engine: ray needs a persistent Dagster instance (DAGSTER_HOME) that every "
                             "Ray worker can reach")
        launcher = RayLauncher(settings, instance, assets, resources, _workers(cfg, workers), cfg)
    else:
        launcher = Launcher(settings, instance, assets, resources, _workers(cfg, workers))
    failed_shards: set[str] = set()
    stop = False
    steps = steps_for(cfg, stage)
    if only:
        known = {k for ks, _ in steps for k in ks}
        unknown = sorted(set(only) - known)
        if unknown:
            raise ValueError(f"--only: unknown asset(s) {unknown} up to stage {stage}; known: {sorted(known)}")
        steps = [([k for k in ks if k in only], p) for ks, p in steps]
        steps = [(ks, p) for ks, p in steps if ks]
    tracer, ran, counted = None, False, 0
    try:
        for keys, part in steps:
            if stop:
                break
            # identities from fresh records after any step that ran something: what it wrote is
            # current now (a step that ran nothing changed no record: its reads are reused)
            if tracer is None or ran:
                tracer = identity.Tracer(instance, assets, sources, settings.storage_uri, ON_REQUEST)
                counted, ran = 0, False
            if part == "shards":  # registration order: a batch is a partition-key range in Dagster's order
                active = set(sources.shards)  # (ranges never span an inactive shard: _contiguous splits there)
                order = list(instance.get_dynamic_partitions("shards"))
                partitions = [k for k in order if k in active and k not in failed_shards]
            elif part in ("proxy_runs", "confirm_runs", "orientation_runs"):
                planned = set(tracer.active(part))  # exactly the current plan's runs, in Dagster's order
                order = list(instance.get_dynamic_partitions(part))
                partitions = [k for k in order if k in planned]
            else:
                order, partitions = [], [None]
            todo: dict = {}
            for pk in partitions:
                stale: list[str] = []
                for k in keys:
                    v = tracer.verdict(k, pk, refit=refit)
                    if k in force:
                        why = "forced"
                    elif v.held:
                        why = None
                        if k not in summary.held:
                            summary.held.append(k)
                            echo(f"  {k}: kept, fitted on older data (its inputs changed since); "
                                 "metarater run --refit refits it")
                    else:
                        why = "; ".join(v.reasons) or None
                    if why and v.blocked and not all(a in stale for a, _ in v.blocked):
                        # an input that is not current and does not run now: this cannot run
                        summary.blocked.append({"asset": k, "partition": pk, "inputs": identity.labels(v.blocked)})
                        echo(f"  blocked {k}{f' [{pk}]' if pk else ''}: needs {identity.labels(v.blocked)} "
                             "(failed, missing or excluded)")
                        continue
                    if why:
                        stale.append(k)
                        if part is None and why not in ("missing", "forced"):
                            echo(f"  {k}: {why}")
                for k in keys:  # what runs in this step stales what reads it in this step
                    if k not in stale and any(u in stale for u, _ in tracer.nodes[k].deps) and \
                            not any(b["asset"] == k and b["partition"] == pk for b in summary.blocked):
                        stale.append(k)
                stale.sort(key=keys.index)
                if stale:
                    if any(k.startswith("raw_") for k in stale) or "precomputed_scores" in stale:
                        stale = sorted(set(stale) | {k for k in keys if k in ("raw_docs", "raw_quarantine",
                                                                              "precomputed_scores")}, key=keys.index)
                    todo.setdefault(tuple(stale), []).append(pk)
            summary.queries += tracer.ledger.queries - counted
            counted = tracer.ledger.queries
            if not todo:
                continue
            ran = True
            stage_name = _stage(keys)
            batches = []
            for sel, pks in todo.items():
                if part is None:
                    batches.append(Batch(sel, (), stage_name))
                else:
                    tier = TIERS.get(keys[0]) if len(keys) == 1 else None
                    if tier is not None:  # n-gram proxies in batches; a transformer proxy per run, in
                        per = size if kind_config(cfg, tier).kind == "ngram" else 1  # parallel up to workers
                    else:
                        per = size if part == "shards" else len(pks)
                    batches += [Batch(sel, tuple(c), stage_name) for c in _contiguous(pks, order, per)]
            total = sum(max(1, len(b.partitions)) for b in batches)
            echo(f"== {stage_name}: {', '.join(sorted({k for b in batches for k in b.assets}))} "
                 f"({total} partition(s), {len(batches)} run(s))" if part else f"== {stage_name}: {', '.join(keys)}")
            progress = {"done": 0, "t0": time.perf_counter()}

            def done(b: Batch, ok: bool, err: str, dt: float) -> list[Batch]:
                nonlocal stop
                summary.runs += 1
                if ok:
                    summary.materialised.extend((k, p) for k in b.assets for p in (b.partitions or (None,)))
                    progress["done"] += max(1, len(b.partitions))
                    el = time.perf_counter() - progress["t0"]
                    eta = el / progress["done"] * (total - progress["done"])
                    echo(f"  ok   {b.label} ({dt:.1f}s)" + (f"  {progress['done']}/{total} done, "
                                                            f"ETA {eta:.0f}s" if total > 1 else ""))
                    return []
                if len(b.partitions) > 1:  # retry shard by shard: only the bad one fails
                    echo(f"  retry {b.label} one shard at a time (a shard failed)")
                    return [Batch(b.assets, (p,), b.stage) for p in b.partitions]
                echo(f"  FAIL {b.label}: {err}")
                summary.failed.append({"assets": list(b.assets), "partition": b.partitions[0] if b.partitions else None,
                                       "error": err})
                if part == "shards" and b.partitions:
                    failed_shards.add(b.partitions[0])
                elif not b.partitions:
                    echo(f"stopping: {b.label} failed")
                    stop = True
                progress["done"] += max(1, len(b.partitions))
                return []

            launcher.run(batches, done)
        if refit and not stop:  # runs this refit left out (older plans, failed refits) are never held later
            reached = {k for ks, _ in steps for k in ks}  # (only the fits this run's stage reaches)
            gone = identity.supersede(identity.Tracer(instance, assets, sources, settings.storage_uri, ON_REQUEST),
                                      ON_REQUEST & reached)
            if gone:
                echo(f"{len(gone)} proxy run(s) outside the refit (older plans or failed) marked superseded: "
                     "they retrain if a plan takes them in again")
    finally:
        launcher.close()
    return summary


def _stage(keys) -> str:
    from .defs import stage_of

    return "+".join(dict.fromkeys(stage_of(k) for k in keys))


def _short(keys: list[str], n: int = 8) -> str:
    return ", ".join(keys[:n]) + (f" ... ({len(keys)} in all)" if len(keys) > n else "")
