"""Stage 'scores', Meta-rater's own raters: PRRC annotations and the encoder trained on them."""

import json
import os
import tempfile

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import fsspec
import xxhash

import dagster as dg

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


def _sample_pool(storage_uri: str, n: int, seed: int, max_chars: int) -> list[dict]:
    """The ``n`` pool documents with the smallest hash of (seed, doc id): a stable sample that
    keeps its members when shards are added (read shard by shard, doc_id and text only)."""
    import heapq

    fs, base = storage.fs_and_path(storage.join(storage_uri, "raw_docs"))
    files = sorted(p for p in fs.ls(base, detail=False) if p.endswith(".parquet")) if fs.exists(base) else []
    best: list[tuple[int, str, str]] = []
    for p in files:
        with fs.open(p, "rb") as f:
            t = pq.read_table(f, columns=["doc_id", "text"])
        for doc_id, text in zip(t.column("doc_id").to_pylist(), t.column("text").to_pylist()):
            h = -xxhash.xxh3_64_intdigest(f"{seed}:{doc_id}".encode())
            item = (h, doc_id, text)
            if len(best) < n:
                heapq.heappush(best, item)
            elif h > best[0][0]:
                heapq.heapreplace(best, item)
    out = []
    for _, doc_id, text in sorted(best, reverse=True):
        if len(text) > max_chars:
            text = text[:max_chars] + " $TRUNCATED$"
        out.append({"id": doc_id, "source": "pool", "text": text})
    return out


@dg.asset(io_manager_key="parquet_io_manager", group_name=SCORE_GROUP,
          code_version=f"prrc-annotations-{annotate.ANNOTATE_VERSION}",
          deps=[dg.AssetDep("raw_docs", partition_mapping=dg.AllPartitionMapping())],
          description="PRRC labels (0..5 on professionalism, readability, reasoning, cleanliness): "
                      "read from `prrc.labels`, or asked of an OpenAI-compatible endpoint "
                      "(`prrc.annotate`) for a stable sample of the pool, cached per document. Rows "
                      "with missing or out-of-range labels are quarantined with a reason. Refit on "
                      "request only: new shards do not trigger new (paid) annotation.")
def prrc_annotations(context: dg.AssetExecutionContext, settings: MetaraterConfig) -> pa.Table:
    cfg = settings.load()
    dims = cfg.prrc.dims if cfg.prrc else annotate.DIMENSIONS
    schema = pa.schema([("id", pa.string()), ("source", pa.string()), ("text", pa.string())]
                       + [(d, _LABEL_TYPE) for d in dims])
    if cfg.prrc is None:
        context.add_output_metadata({"enabled": False})
        return schema.empty_table()
    if cfg.prrc.labels:
        rows, bad = _read_label_rows(cfg.prrc.labels)
        origin = cfg.prrc.labels
    else:
        a = cfg.prrc.annotate
        docs = _sample_pool(settings.storage_uri, int(a.get("sample", 500)), int(a.get("seed", 0)),
                            int(a.get("max_chars", 2000)))
        cache_dir = settings.artifacts_uri if "://" not in settings.artifacts_uri else tempfile.gettempdir()
        os.makedirs(os.path.join(cache_dir, "prrc_annotations"), exist_ok=True)
        client = annotate.ChatAnnotator(a["base_url"], a["model"], api_key_env=a.get("api_key_env", "OPENAI_API_KEY"),
                                        cache_path=os.path.join(cache_dir, "prrc_annotations", "cache.jsonl"))
        every = max(1, len(docs) // 10)
        labels = client.annotate([d["text"] for d in docs], dims,
                                 progress=lambda i, n: i % every == 0 and context.log.info(f"annotated {i}/{n}"))
        rows = [{**d, **lab} for d, lab in zip(docs, labels)]
        bad = []
        origin = f"{a['model']} at {a['base_url']}"
    good, quarantined = rater_training.load_annotations(rows, dims)
    quarantined = bad + quarantined
    # written every time (an empty list when clean), so an old quarantine never outlives its labels
    storage.write_json(quarantined, storage.join(settings.artifacts_uri, "prrc_annotations", "quarantine.json"))
    table = pa.Table.from_pylist(good, schema=schema)
    reasons: dict[str, int] = {}
    for q in quarantined:
        for r in q["reason"].split("; "):
            key = r.split("=")[0]
            reasons[key] = reasons.get(key, 0) + 1
    context.add_output_metadata({
        "origin": origin, "usable": len(good), "quarantined": len(quarantined),
        "quarantine_reasons": dg.MetadataValue.json(reasons),
        "label_counts": dg.MetadataValue.json({d: pc.value_counts(table.column(d)).to_pylist()
                                               for d in dims} if len(good) else {}),
    })
    if not good:
        raise dg.Failure(f"no usable PRRC annotations in {origin} ({len(quarantined)} quarantined; see "
                         f"artifacts/prrc_annotations/quarantine.json)", allow_retries=False)
    return table


@dg.asset(io_manager_key="json_io_manager", group_name=SCORE_GROUP,
          code_version=f"prrc-rater-{rater_training.RATER_TRAINING_VERSION}",
          description="The PRRC raters: an encoder per dimension (or one shared encoder, "
                      "prrc.shared_encoder) fine-tuned with Lightning on the annotations as 6-class "
                      "classifiers, early stopping on macro-F1, saved with "
                      "save_pretrained and read back by model_scores through from_pretrained. Metadata: "
                      "held-out macro-F1 / accuracy per dimension beside the majority class and the paper.")
def prrc_rater(context: dg.AssetExecutionContext, prrc_annotations: pa.Table, settings: MetaraterConfig,
               compute: ComputeResource) -> dict:
    cfg = settings.load()
    if cfg.prrc is None:
        context.add_output_metadata({"enabled": False})
        return {"enabled": False}
    comp = compute.resolve()
    train = dict(cfg.prrc.train)
    if comp.accelerator == "gpu":
        train.setdefault("accelerator", "gpu")
        train.setdefault("precision", "bf16-mixed" if comp.precision.startswith("bf16") else "32-true")
    tc = rater_training.TrainConfig(dims=cfg.prrc.dims, **train)
    base = storage.join(settings.artifacts_uri, "prrc_rater")
    out = storage.join(base, context.run_id[:12])
    try:
        report = rater_training.train_prrc(prrc_annotations.to_pylist(), out, tc, shared=cfg.prrc.shared_encoder,
                                           log=context.log.info)
    except (raters.RaterLoadError, ValueError) as e:
        raise dg.Failure(str(e), allow_retries=False) from e
    fs, bpath = storage.fs_and_path(base)
    for old in fs.ls(bpath, detail=False):  # earlier models: the new ones are complete (markers written)
        if old.rstrip("/").rsplit("/", 1)[-1] != context.run_id[:12]:
            fs.rm(old, recursive=True)
    table = rater_training.summary_table(report, rater_training.PAPER_MODERNBERT_F1)
    context.add_output_metadata({
        "model_uri": out, "encoder": tc.encoder,
        "layout": "shared encoder" if report["shared"] else "one model per dimension",
        "split": dg.MetadataValue.json(report["split"]), "best_epoch": dg.MetadataValue.json(report["best_epoch"]),
        "held_out": dg.MetadataValue.md(table),
        **{f"macro_f1_{d}": round(m["macro_f1"], 4) for d, m in report["test"].items()},
    })
    return {"enabled": True, "models": report["models"], "dims": list(cfg.prrc.dims), "max_tokens": tc.max_tokens,
            "shared": report["shared"], "test": report["test"], "split": report["split"],
            "best_epoch": report["best_epoch"]}
