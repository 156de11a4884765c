"""Stage 'curated': the global cut under the optimal weights, curated shards and a manifest.

``curated_selection`` is small: the weights, the normalisation, the cut (threshold and tie break)
and the counts per shard and per source (from one group-by per shard). Each ``curated_corpus``
shard cuts its own documents with them. The curated folder opens as a dataset as it is (pandas,
pyarrow, DuckDB, ``datasets``): ``<name>.parquet`` per shard, ``_manifest.json`` beside them (a
leading ``_`` is skipped by every dataset reader), ``_jsonl/<name>.jsonl.zst`` copies when asked.

A publication is: the curated files of one cut (each Parquet footer names it, ``metarater.cut``), then
the manifest (written only once every listed file carries the selection's cut), then the removal of
every curated file the manifest does not list, so after each run the folder holds exactly the
manifest's files. ``publish_lock`` keeps two publications (two ``metarater run``, the CLI and the
sensor) from interleaving their writes; the ``metarater_publish`` pool does the same across machines.
"""

import datetime as _dt
import fcntl
import hashlib
import itertools
import json
import os
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

import dagster as dg

from . import identity
from .batched import for_each_shard
from .core import corpus, dsir, packs, perplexity, pool as cp, precomputed, proxy_lm, regression, scan, selection, signals
from .core import storage as st
from .partitions import shards
from .pool import normalisation, oriented, pool_files
from resources import MetaraterConfig

GROUP = "curated"
MANIFEST = "_manifest.json"
CUT_KEY = b"metarater.cut"  # Parquet footer key: the cut (curated_selection's cut_id) a curated file holds
JSONL = "_jsonl"
POOL = "metarater_publish"  # Dagster concurrency pool of the two assets that write the curated folder


def lock_path(settings: MetaraterConfig) -> str:
    """The publication lock file: ``<home>/locks/publish.lock`` when the metarater home (the folder
    above ``storage_uri``) is local; under DAGSTER_HOME when the home is remote (s3://, ...). A local
    file lock only excludes publications on this machine: across machines, exclusivity needs the
    Dagster pool ``metarater_publish`` with a limit of 1 on the instance (``concurrency: pools:``)."""
    storage = (settings.storage_uri or "").rstrip("/")
    home = storage.rsplit("/", 1)[0] if storage else ""
    if home and fsspec.utils.get_protocol(home) in ("file", "local"):  # no remote client needed to tell
        return str(Path(st.fs_and_path(home)[1]) / "locks" / "publish.lock")
    dagster_home = os.environ.get("DAGSTER_HOME") or str(Path.cwd() / ".metarater" / "dagster")
    return str(Path(dagster_home) / "locks" / "publish.lock")


@contextmanager
def publish_lock(settings: MetaraterConfig, timeout: float | None = None, log=None):
    """Hold the exclusive publication lock (``fcntl.flock``; released when the process dies).
    ``timeout`` (seconds): raise ``TimeoutError`` instead of waiting longer; ``log`` is told once
    when another publication holds the lock."""
    path = lock_path(settings)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        t0 = time.monotonic()
        told = False
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if timeout is not None and time.monotonic() - t0 >= timeout:
                    raise TimeoutError(f"the publication lock {path} is held by another publication") from None
                if log is not None and not told:
                    log(f"waiting for the publication lock {path} (another publication of the curated folder)")
                    told = True
                time.sleep(0.05)
        try:
            yield path
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def footer_cut(uri: str) -> str | None:
    """The cut a curated Parquet file's footer names (None: no cut, not a curated file of this kind)."""
    fs, path = st.fs_and_path(uri)
    with fs.open(path, "rb") as f:
        meta = pq.read_schema(f).metadata or {}
    v = meta.get(CUT_KEY)
    return v.decode() if v is not None else None


def stale_files(files: list[str], cut_id: str) -> list[str]:
    """The listed curated files whose footer does not name ``cut_id``."""
    return [f for f in files if footer_cut(f) != cut_id]


def clean_folder(curated_uri: str, keep: set[str]) -> tuple[list[str], list[str]]:
    """Remove every curated file under ``curated_uri`` that ``keep`` (names relative to it) does not
    hold: top-level ``*.parquet`` and every file under ``_jsonl/``. The manifest, dot-files and other
    unknown entries stay; returns (removed, other), both relative names."""
    fs, base = st.fs_and_path(curated_uri)
    base = base.rstrip("/")
    if not fs.exists(base):
        return [], []
    removed, other = [], []
    for e in fs.ls(base, detail=True):
        name = e["name"].rstrip("/").rsplit("/", 1)[-1]
        if name == MANIFEST:
            continue
        if e["type"] == "directory" and name == JSONL:
            for f in sorted(fs.find(f"{base}/{JSONL}")):
                rel = f[len(base) + 1:]  # "_jsonl/<name>.jsonl.zst" (find answers in the form of base)
                if rel not in keep:
                    fs.rm(f)
                    removed.append(rel)
        elif e["type"] != "directory" and name.endswith(".parquet") and not name.startswith("."):
            if name not in keep:
                fs.rm(f"{base}/{name}")
                removed.append(name)
        else:
            other.append(name + ("/" if e["type"] == "directory" else ""))
    return sorted(removed), sorted(other)


def resolve_weights(cfg, optimal: dict, tier_agreement: dict | None = None) -> tuple[np.ndarray, list[str], str]:
    """The curation weights: ``curation.weights_file`` when set, else the tier-2 run with the lowest
    tuning loss (``curation.weights: best_confirmed``), else the regressor's predicted optimum."""
    names = list(optimal["names"])
    wf = cfg.curation.get("weights_file")
    if wf:
        fs, p = st.fs_and_path(wf)
        if not fs.exists(p):
            raise dg.Failure(f"curation.weights_file {wf!r} does not exist")
        with fs.open(p, "r") as f:
            user = yaml.safe_load(f) or {}
        try:
            return selection.validate_weights(user, names), names, f"file:{wf}"
        except ValueError as e:
            raise dg.Failure(f"curation.weights_file {wf}: {e}") from None
    if cfg.curation.get("weights") == "best_confirmed":
        if tier_agreement is None:
            raise dg.Failure("curation.weights: best_confirmed needs tier_agreement", allow_retries=False)
        b = tier_agreement["best_confirmed"]
        if set(b["weights"]) != set(names):
            raise dg.Failure("the tier-2 runs are over other scores than the optimal weights: rerun confirm",
                             allow_retries=False)
        return np.array([b["weights"][n] for n in names]), names, f"best_confirmed:{b['key']} ({b['kind']})"
    return np.array([optimal["weights"][n] for n in names]), names, "optimal_weights"


def curated_names(keys) -> dict[str, str]:
    """Curated file name per shard key: the key without its shard extension, ``.parquet``; keys
    that would collide (``a.jsonl`` and ``a.parquet``) keep a short hash of the key."""
    stems = {}
    for k in keys:
        fmt_ext = next((e for e in sorted(corpus.FORMATS, key=len, reverse=True) if k.lower().endswith(e)), "")
        stems[k] = k[: len(k) - len(fmt_ext)] if fmt_ext else k
    counts: dict[str, int] = {}
    for s in stems.values():
        counts[s] = counts.get(s, 0) + 1
    return {k: (s if counts[s] == 1 else f"{s}-{hashlib.sha1(k.encode()).hexdigest()[:8]}") for k, s in stems.items()}


def make_curated_selection(cfg):
    """``curated_selection``; with ``orientation: auto`` scores it also follows ``score_orientation``
    (their decided orientation is part of the normalisation it cuts with)."""
    decided = bool(cfg is not None and cfg.auto_oriented)
    confirmed = bool(cfg is not None and cfg.curation.get("weights") == "best_confirmed")
    ins = {"score_stats": dg.AssetIn("score_stats"), "optimal_weights": dg.AssetIn("optimal_weights")}
    if confirmed:  # curation.weights: best_confirmed curates with the best tier-2 run's weights
        ins["tier_agreement"] = dg.AssetIn("tier_agreement")

    @dg.asset(io_manager_key="json_io_manager", group_name=GROUP,
              code_version=f"curated-selection-2-{cp.POOL_VERSION}",
              deps=[dg.AssetDep("shard_index", partition_mapping=dg.AllPartitionMapping()),
                    *(["score_orientation"] if decided else [])],
              ins=ins,
              description="The global cut of the pool under the optimal weights for curation.fraction (of "
                          "tokens or documents) or curation.token_budget: threshold, tie break, and kept "
                          "documents and tokens per shard and per source, and cut_id (a digest of all of "
                          "it). Small: each curated shard cuts its own documents.")
    def curated_selection(context: dg.AssetExecutionContext, score_stats: dict, optimal_weights: dict,
                          settings: MetaraterConfig, **more):
        cfg = settings.load()
        tracer = identity.for_run(context, settings, cfg, score_stats=score_stats, optimal_weights=optimal_weights,
                                  **more)
        ident = tracer.identity("curated_selection")
        w, names, origin = resolve_weights(cfg, optimal_weights, more.get("tier_agreement"))
        norm = normalisation(oriented(settings, cfg, score_stats, tracer))  # auto scores as score_orientation decided
        if list(norm.names) != names:
            raise dg.Failure(f"the weights are over {names} but the pool statistics over {list(norm.names)}: "
                             "re-run the proxies and the regressor (metarater run --refit)", allow_retries=False)
        files = pool_files(settings, score_stats)
        cur = cfg.curation
        cut = scan.cuts(files, norm, w, totals=(score_stats["docs"], score_stats["tokens"]), fraction=cur["fraction"],
                        by=cur["fraction_of"], token_budget=cur.get("token_budget"))[0]
        per_shard, per_source = scan.kept_counts(files, norm, w, cut)
        out = {"names": names, "weights": [float(x) for x in w], "weights_from": origin,
               "normalisation": norm.to_dict(), "cut": cut.to_dict(), "fraction": cur["fraction"],
               "fraction_of": cur["fraction_of"], "token_budget": cur.get("token_budget"),
               "docs": cut.docs, "tokens": cut.tokens, "pool_docs": score_stats["docs"],
               "pool_tokens": score_stats["tokens"], "per_shard": per_shard, "per_source": per_source,
               "files": curated_names(files.keys)}
        digest = hashlib.sha1(json.dumps(out, sort_keys=True).encode()).hexdigest()
        out["cut_id"] = digest  # the cut every curated file's footer and the manifest name
        return identity.output(tracer, "curated_selection", out, ident, {
            "threshold": cut.threshold_score, "kept_docs": cut.docs, "kept_tokens": cut.tokens,
            "pool_docs": score_stats["docs"], "pool_tokens": score_stats["tokens"], "weights_from": origin,
            "cut_id": digest})

    return curated_selection


def combined_of(sel: dict, index: pa.Table) -> np.ndarray:
    """Combined-score units of one shard's documents under the selection's weights."""
    norm = cp.Normalisation.from_dict(sel["normalisation"])
    units = norm.units({n: index.column(n).to_numpy(zero_copy_only=False) for n in norm.names})
    return cp.combined_units(units, cp.weight_units(np.asarray(sel["weights"])))


CURATED_SCHEMA = pa.schema([("doc_id", pa.string()), ("text", pa.string()), ("source", pa.string()),
                            ("n_tokens", pa.int64()), ("combined_score", pa.float64()), ("raw_shard", pa.string()),
                            ("raw_row", pa.int64())])


def kept_table(index: pa.Table, docs: pa.Table, c: np.ndarray, kept: np.ndarray, key: str,
               members: list[dict] | None) -> pa.Table:
    """The kept documents of one batch of a shard, with where each came from: the raw file (a
    pack's member file) and its row in that file."""
    idx = pa.array(np.flatnonzero(kept), pa.int64())
    rows = docs.column("raw_row").take(idx)
    if members:  # a pack: each document's own file and its row in that file
        files_of, raw_rows = packs.locate(members, rows.to_pylist())
        raw_shard = pa.array([m["key"] for m in files_of], pa.string())
        raw_row = pa.array(raw_rows, pa.int64())
    else:
        raw_shard, raw_row = pa.array([key] * len(idx), pa.string()), rows.combine_chunks()
    return pa.Table.from_arrays([
        docs.column("doc_id").take(idx).combine_chunks(), docs.column("text").take(idx).combine_chunks(),
        docs.column("source").take(idx).combine_chunks(), index.column("n_tokens").take(idx).combine_chunks(),
        pa.array(cp.to_score(c[kept])), raw_shard, raw_row], schema=CURATED_SCHEMA)


def make_curated_corpus(policy):
    @dg.asset(partitions_def=shards, group_name=GROUP, code_version="curated-corpus-3", backfill_policy=policy,
              deps=["raw_docs", "shard_index"], ins={"curated_selection": dg.AssetIn("curated_selection")},
              pool=POOL,
              description="The kept documents of one shard, written under the curated output URI as "
                          "<shard>.parquet: doc_id, text, source, n_tokens, combined_score, raw_shard (the "
                          "key of the raw file the document came from), raw_row (its row in that file); "
                          "the footer names the cut (metarater.cut).")
    def curated_corpus(context: dg.AssetExecutionContext, curated_selection: dict,
                       settings: MetaraterConfig) -> dg.MaterializeResult:
        sel = curated_selection
        cut = cp.Cut.from_dict(sel["cut"])
        cfg = settings.load()
        fmt = cfg.curation["format"]
        tracer = identity.for_run(context, settings, cfg, curated_selection=sel)

        def one(key):
            ident = tracer.identity("curated_corpus", key)
            if key not in sel["per_shard"]:
                raise dg.Failure(f"{key} is not in the pool curated_selection was cut from: re-materialise "
                                 "score_stats and curated_selection first")
            members = packs.pack_members_of(settings.files.schema("raw_docs", key))
            index = tracer.batches(settings.files, "shard_index", key, ["doc_id", "n_tokens", *sel["names"]])
            docs = tracer.batches(settings.files, "raw_docs", key, ["doc_id", "text", "source", "raw_row"])
            base = settings.curated_uri.rstrip("/")
            schema = CURATED_SCHEMA.with_metadata({CUT_KEY: sel["cut_id"].encode(), **identity.footer(ident)})
            kept_docs, aligned = 0, True
            with publish_lock(settings, log=context.log.info), ExitStack() as stack:  # not mid-publication
                out = stack.enter_context(st.parquet_stream(f"{base}/{sel['files'][key]}.parquet", schema))
                js = (stack.enter_context(st.jsonl_zst_stream(f"{base}/{JSONL}/{sel['files'][key]}.jsonl.zst"))
                      if fmt == "jsonl.zst" else None)  # in addition to the Parquet file; the manifest lists it
                row0 = 0
                for ix, d in itertools.zip_longest(index, docs):  # one batch of the shard at a time
                    if ix is None or d is None or not ix.column("doc_id").equals(d.column("doc_id")):
                        aligned = False
                        break
                    c = combined_of(sel, ix)
                    kept = cut.keep(key, c, row0)
                    row0 += ix.num_rows
                    kept_docs += int(kept.sum())
                    part = kept_table(ix, d, c, kept, key, members)
                    out.write(part)
                    if js is not None:
                        js.write(part)
                if not aligned or kept_docs != sel["per_shard"][key]["docs"]:  # nothing is published
                    raise dg.Failure(f"{key}: the shard's documents differ from those curated_selection was cut "
                                     "from; re-materialise shard_index, score_stats and curated_selection")
            context.log_event(tracer.observation("curated_corpus", key, ident))
            return kept_docs

        done = for_each_shard(context, one)
        return dg.MaterializeResult(metadata={"kept_docs": sum(done.values()), "shards": len(done)})

    return curated_corpus


def score_code_versions(cfg, prrc_rater: dict | None) -> dict:
    """The code behind every active score: RPv2 and DSIR versions, each model score's model,
    revision and head (or the trained PRRC rater), the precomputed mapping."""
    from .core import raters, rater_training

    out = {"rpv2": signals.SIGNALS_VERSION, "dsir": dsir.DSIR_VERSION, "selection": cp.POOL_VERSION,
           "proxy": proxy_lm.PROXY_VERSION, "regression": regression.REGRESSION_VERSION}
    if "perplexity" in cfg.raters:
        out["perplexity"] = perplexity.PERPLEXITY_VERSION
    if cfg.precomputed:
        out["precomputed"] = f"{precomputed.PRECOMPUTED_VERSION}:{precomputed.digest(cfg.precomputed)}"
    specs = cfg.rater_specs()
    models = {}
    for n in cfg.model_scores:
        if n in specs:
            models[n] = specs[n].version
        else:
            m = (prrc_rater or {}).get("models", {}).get(n, {})
            models[n] = (f"{raters.RATERS_VERSION}:trained PRRC {(prrc_rater or {}).get('method', 'finetune')} "
                         f"{rater_training.RATER_TRAINING_VERSION} at {m.get('uri')} offset {m.get('offset')}")
    if models:
        out["model_scores"] = models
    return out


def manifest_uri(curated_uri: str) -> str:
    return f"{curated_uri.rstrip('/')}/{MANIFEST}"


@dg.asset(group_name=GROUP, code_version="manifest-3", pool=POOL,
          deps=[dg.AssetDep("curated_corpus", partition_mapping=dg.AllPartitionMapping()), "prrc_rater"],
          ins={"curated_selection": dg.AssetIn("curated_selection"), "optimal_weights": dg.AssetIn("optimal_weights"),
               "regressor": dg.AssetIn("regressor")},
          description="_manifest.json next to the curated data: weights, regressor and proxy runs behind "
                      "them, score code versions, threshold, counts and tokens per shard and per source, "
                      "the files, the cut they hold (cut_id), Dagster run id, time. Written once every "
                      "listed file's footer names the cut; then every curated file it does not list is "
                      "removed.")
def curated_manifest(context: dg.AssetExecutionContext, curated_selection: dict, optimal_weights: dict,
                     regressor: dict, settings: MetaraterConfig) -> dg.MaterializeResult:
    cfg = settings.load()
    sel = curated_selection
    tracer = identity.for_run(context, settings, cfg, curated_selection=sel, optimal_weights=optimal_weights,
                              regressor=regressor)
    ident = tracer.identity("curated_manifest")
    base = settings.curated_uri.rstrip("/")
    names = [sel["files"][k] for k in sorted(sel["per_shard"])]
    files = [f"{base}/{n}.parquet" for n in names]
    jsonl = [f"{base}/{JSONL}/{n}.jsonl.zst" for n in names] if cfg.curation["format"] == "jsonl.zst" else []
    prrc_uri = f"{settings.storage_uri}/prrc_rater.json"
    prrc = tracer.check_json("prrc_rater", st.read_json(prrc_uri)) if st.exists(prrc_uri) else None
    manifest = {
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(),
        "dagster_run_id": context.run_id,
        "config": cfg.source,
        "weights": dict(zip(sel["names"], sel["weights"])), "weights_from": sel["weights_from"],
        "normalisation": sel["normalisation"],
        "regressor": {"model": regressor["best"], "target": regressor["target"], "heldout": regressor.get("heldout"),
                      "cv": {m: {k: v for k, v in r.items() if k != "oof_pred"} for m, r in regressor["cv"].items()}},
        "proxy_runs": regressor["keys"],
        "predicted_loss": optimal_weights.get("predicted_loss"),
        "score_code_versions": score_code_versions(cfg, prrc),
        "threshold": sel["cut"]["threshold_score"], "cut": sel["cut"],
        "fraction": sel["fraction"], "fraction_of": sel["fraction_of"], "token_budget": sel["token_budget"],
        "docs": sel["docs"], "tokens": sel["tokens"], "pool_docs": sel["pool_docs"], "pool_tokens": sel["pool_tokens"],
        "per_shard": {k: sel["per_shard"][k] for k in sorted(sel["per_shard"])},
        "per_source": {k: sel["per_source"][k] for k in sorted(sel["per_source"])},
        "cut_id": sel["cut_id"], "identity": ident, "files": files, "format": cfg.curation["format"],
        "uri": settings.curated_uri,
        **({"jsonl_zst_files": jsonl} if jsonl else {}),
    }
    with publish_lock(settings, log=context.log.info):  # verify, publish and clean as one step
        missing = [f for f in files + jsonl if not st.exists(f)]
        if missing:
            raise dg.Failure(f"{len(missing)} curated shard file(s) are missing (e.g. {missing[0]}): materialise "
                             "curated_corpus for every shard first")
        stale = stale_files(files, sel["cut_id"])
        if stale:
            raise dg.Failure(f"{len(stale)} curated file(s) hold another cut than curated_selection's "
                             f"{sel['cut_id']}: {', '.join(stale[:10])}{' ...' if len(stale) > 10 else ''}; "
                             "re-materialise curated_corpus for their shards (metarater run --force curated_corpus)",
                             metadata={"stale_files": ", ".join(stale)})
        st.write_json(manifest, manifest_uri(settings.curated_uri))
        removed, other = clean_folder(base, {f"{n}.parquet" for n in names}
                                      | {f"{JSONL}/{n}.jsonl.zst" for n in names if jsonl})
    if removed:
        context.log.info(f"removed {len(removed)} curated file(s) the manifest does not list: {removed[:10]}")
    return identity.result(tracer, "curated_manifest", ident, {
        "docs": manifest["docs"], "tokens": manifest["tokens"], "threshold": manifest["threshold"],
        "shards": len(files), "cut_id": sel["cut_id"], "removed_files": dg.MetadataValue.json(removed),
        "other_files": dg.MetadataValue.json(other), "manifest": dg.MetadataValue.path(manifest_uri(settings.curated_uri))})
