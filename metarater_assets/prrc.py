"""Stage 'scores', Meta-rater's own raters: PRRC annotations and the rater trained on them."""

import hashlib
import json

import pyarrow as pa
import pyarrow.compute as pc
import fsspec

import dagster as dg

from . import identity

from .core import annotate, rater_training, raters, storage
from .scoring import SCORE_GROUP
from resources import ComputeResource, MetaraterConfig

_LABEL_TYPE = pa.int64()


def _read_label_rows(uri: str) -> tuple[list[dict], list[dict]]:
    """Rows of a JSONL (.gz/.zst: fsspec infers the compression) or Parquet annotation file;
    unparseable lines are quarantined."""
    if uri.endswith(".parquet"):
        return storage.read_parquet(uri).to_pylist(), []
    rows, bad = [], []
    with fsspec.open(uri, "rt", compression="infer", encoding="utf-8", errors="replace") as f:
        for i, line in enumerate(f):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                bad.append({"row": i, "id": "", "reason": f"not JSON ({e.msg})"})
                continue
            if not isinstance(rec, dict):
                bad.append({"row": i, "id": "", "reason": "not a JSON object"})
                continue
            rows.append(rec)
    return rows, bad


def sample_pool(settings: MetaraterConfig, keys: list[str], n: int, seed: int, max_chars: int,
                tracer=None) -> list[dict]:
    """The annotation sample of the ingested shards ``keys`` (``annotate.sample_pool``: the ``n``
    documents with the smallest hash of (seed, shard, doc id), ids qualified by their shard)."""
    def read(key, cols):
        return tracer.read(settings.files, "raw_docs", key, cols) if tracer else settings.files.read("raw_docs", key, cols)

    return annotate.sample_pool(
        keys, lambda key: read(key, ["doc_id"]).column("doc_id").to_pylist(),
        lambda key, rows: read(key, ["text"]).column("text").take(rows).to_pylist(),
        n, seed, max_chars)


def annotations_uri(storage_uri: str) -> str:
    return f"{storage_uri.rstrip('/')}/prrc_annotations.parquet"


@dg.asset(group_name=SCORE_GROUP,
          code_version=f"prrc-annotations-{annotate.ANNOTATE_VERSION}-sample{annotate.SAMPLE_VERSION}",
          deps=[dg.AssetDep("raw_docs", partition_mapping=dg.AllPartitionMapping())],
          description="PRRC labels (0..5 on professionalism, readability, reasoning, cleanliness): "
                      "read from `prrc.labels`, or asked of an OpenAI-compatible endpoint "
                      "(`prrc.annotate`) for a stable sample of the pool (ids `<shard>/<doc id>`: doc ids "
                      "are unique within a shard only), cached per text. Rows "
                      "with missing or out-of-range labels are quarantined with a reason. Refit on "
                      "request only: new shards do not trigger new (paid) annotation.")
def prrc_annotations(context: dg.AssetExecutionContext, settings: MetaraterConfig) -> dg.MaterializeResult:
    cfg = settings.load()
    tracer = identity.for_run(context, settings, cfg)
    dims = cfg.prrc.dims if cfg.prrc else annotate.DIMENSIONS
    schema = pa.schema([("id", pa.string()), ("source", pa.string()), ("text", pa.string())]
                       + [(d, _LABEL_TYPE) for d in dims])
    qpath = storage.join(settings.artifacts_uri, "prrc_annotations", "quarantine.json")
    if cfg.prrc is None:
        ident = identity.digest(["prrc_annotations", "disabled"])
        storage.write_parquet(schema.empty_table().replace_schema_metadata(identity.footer(ident)),
                              annotations_uri(settings.storage_uri))
        return identity.result(tracer, "prrc_annotations", ident, {"enabled": False},
                               trace=tracer.identity("prrc_annotations"))
    if cfg.prrc.labels:
        rows, bad = _read_label_rows(cfg.prrc.labels)
        origin = cfg.prrc.labels
    else:
        a = cfg.prrc.annotate
        keys = tracer.active("shards")
        docs = sample_pool(settings, keys, int(a.get("sample", 500)), int(a.get("seed", 0)),
                           int(a.get("max_chars", 2000)), tracer)
        try:
            client = annotate.ChatAnnotator(
                a["base_url"], a["model"], api_key_env=a["api_key_env"],
                cache_path=storage.join(settings.artifacts_uri, "prrc_annotations", "cache.jsonl"))
            every = max(1, len(docs) // 10)
            labels, errors = client.annotate([d["text"] for d in docs], dims,
                                             progress=lambda i, n: i % every == 0 and context.log.info(f"annotated {i}/{n}"))
        except annotate.AnnotationAuthError as e:
            raise dg.Failure(str(e), allow_retries=False) from None
        rows = [{**d, **lab} for d, lab in zip(docs, labels)]
        bad = []
        origin = f"{a['model']} at {a['base_url']}"
    good, quarantined = rater_training.load_annotations(rows, dims)
    if not cfg.prrc.labels:  # the cause of each missing label, not just "missing <dim>"
        cause = {d["id"]: e for d, e in zip(docs, errors)}
        for q in quarantined:
            for dim, err in cause.get(q["id"], {}).items():
                q["reason"] = q["reason"].replace(f"missing {dim}", f"missing {dim} ({err})")
    quarantined = bad + quarantined
    # written every time (an empty list when clean), so an old quarantine never outlives its labels
    storage.write_json(quarantined, qpath)
    # identified by its content (early cutoff): labels that come out the same stale nothing downstream
    trace = tracer.identity("prrc_annotations")
    ident = identity.digest(["prrc_annotations", tracer.code_version("prrc_annotations"),
                             hashlib.sha1(json.dumps(good, sort_keys=True).encode()).hexdigest()])
    table = pa.Table.from_pylist(good, schema=schema)
    storage.write_parquet(table.replace_schema_metadata(identity.footer(ident)), annotations_uri(settings.storage_uri))
    reasons: dict[str, int] = {}
    for q in quarantined:
        for r in q["reason"].split("; "):
            key = r.split("=")[0].split(" (")[0]
            reasons[key] = reasons.get(key, 0) + 1
    if not good:
        raise dg.Failure(f"no usable PRRC annotations in {origin} ({len(quarantined)} quarantined; see "
                         f"{qpath})", allow_retries=False)
    return identity.result(tracer, "prrc_annotations", ident, {
        "origin": origin, "usable": len(good), "quarantined": len(quarantined),
        "quarantine_reasons": dg.MetadataValue.json(reasons),
        "label_counts": dg.MetadataValue.json({d: pc.value_counts(table.column(d)).to_pylist() for d in dims}),
    }, trace=trace)


@dg.asset(io_manager_key="json_io_manager", group_name=SCORE_GROUP, deps=["prrc_annotations"],
          code_version=f"prrc-rater-{rater_training.RATER_TRAINING_VERSION}-{rater_training.PROBE_VERSION}",
          description="The PRRC raters: a probe (frozen encoder embeddings + text features, logistic "
                      "regression per dimension; prrc.method: probe) or encoders fine-tuned with "
                      "Lightning as 6-class classifiers (one per dimension, or one shared encoder), "
                      "saved as folders that model scores read back through the same generic rater. "
                      "Metadata: held-out macro-F1 / accuracy per dimension beside the majority class "
                      "and the paper.")
def prrc_rater(context: dg.AssetExecutionContext, settings: MetaraterConfig, compute: ComputeResource):
    cfg = settings.load()
    tracer = identity.for_run(context, settings, cfg)
    ident = tracer.identity("prrc_rater")
    if cfg.prrc is None:
        return identity.output(tracer, "prrc_rater", {"enabled": False}, ident, {"enabled": False})
    labels = storage.read_parquet(annotations_uri(settings.storage_uri))
    found = (labels.schema.metadata or {}).get(identity.FOOTER)
    tracer.check_file("prrc_annotations", None, found.decode() if found else None, annotations_uri(settings.storage_uri))
    rows = labels.to_pylist()
    with compute.claim() as comp:
        train = dict(cfg.prrc.train)
        if comp.accelerator == "gpu":
            train.setdefault("accelerator", "gpu")
            train.setdefault("precision", "bf16-mixed" if comp.precision.startswith("bf16") else "32-true")
        tc = rater_training.TrainConfig(dims=cfg.prrc.dims, **train)
        base = storage.join(settings.artifacts_uri, "prrc_rater")
        out = storage.join(base, ident)
        try:
            report = rater_training.train_prrc(rows, out, tc, shared=cfg.prrc.shared_encoder,
                                               log=context.log.info, method=cfg.prrc.method)
        except (raters.RaterLoadError, ValueError) as e:
            raise dg.Failure(str(e), allow_retries=False) from e
    fs, bpath = storage.fs_and_path(base)
    for old in fs.ls(bpath, detail=False):  # earlier models: the new ones are complete (markers written)
        if old.rstrip("/").rsplit("/", 1)[-1] != ident:
            fs.rm(old, recursive=True)
    table = rater_training.summary_table(report, rater_training.PAPER_MODERNBERT_F1)
    layout = ("probe (frozen encoder + logistic regression)" if report.get("method") == "probe"
              else "shared encoder" if report["shared"] else "one model per dimension")
    md = {
        "model_uri": out, "encoder": tc.encoder, "layout": layout,
        "split": dg.MetadataValue.json(report["split"]), "best_epoch": dg.MetadataValue.json(report["best_epoch"]),
        "held_out": dg.MetadataValue.md(table),
        "mean_macro_f1": _mean_f1(report["test"]),
        **{f"macro_f1_{d}": round(m["macro_f1"], 4) for d, m in report["test"].items()},
        **({"probe_mean_macro_f1": _mean_f1(report["probe_test"])} if report.get("probe_test") else {}),
    }
    value = {"enabled": True, "method": report.get("method", "finetune"), "models": report["models"],
             "dims": list(cfg.prrc.dims), "max_tokens": tc.max_tokens, "shared": report["shared"],
             "test": report["test"], "split": report["split"], "best_epoch": report["best_epoch"],
             "probe_test": report.get("probe_test")}
    return identity.output(tracer, "prrc_rater", value, ident, md)


def _mean_f1(test: dict) -> float:
    """Mean held-out macro-F1 over the dimensions of a rater's test metrics."""
    return round(sum(m["macro_f1"] for m in test.values()) / len(test), 4)
