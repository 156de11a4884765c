"""Stage 'ingest': raw shard files -> normalised documents + quarantine rows (+ scores already in
the shards, with ``precomputed``), one shard (a file, or a pack of small files) at a time,
batched runs."""

import os
import tempfile

import dagster as dg

from . import identity
from .batched import combine_checks, for_each_shard
from .core import corpus, packs, precomputed
from .partitions import shards
from .registry import PACK_MEMBERS, Resolver
from resources import MetaraterConfig

INGEST_VERSION = "2"
GROUP = "ingest"


def ingest_facts(instance: dg.DagsterInstance, keys: list[str] | None = None) -> dict[str, dict]:
    """The latest ingest facts of each shard (file, fingerprint, row counts, reasons) from the
    per-shard observations the ingest step records: a few paged queries, not one per shard."""
    out: dict[str, dict] = {}
    cursor = None
    while True:
        res = instance.fetch_observations(dg.AssetRecordsFilter(asset_key=dg.AssetKey("raw_docs")),
                                          limit=5000, cursor=cursor)
        for rec in res.records:
            pk = rec.partition_key
            if pk in out or (keys is not None and pk not in keys):
                continue
            md = rec.asset_observation.metadata
            out[pk] = {k: getattr(v, "value", v) for k, v in md.items()}
        cursor = res.cursor
        if not res.has_more:
            return out


#: a shard where at least this share of the rows is quarantined for one reason fails its ingest
#: (after writing the quarantine table): a wrong field name or format, not a few bad rows
LOUD_SHARE = 0.95

_HINTS = {
    "missing_text": "the rows have no {text!r} field: set ingest.text_field to the field that holds the text "
                    "(a dotted path into nested JSON such as doc.body, or a Parquet column)",
    "null_text": "{text!r} is null in the rows: is ingest.text_field the field that holds the text?",
    "empty_text": "{text!r} is empty in the rows: is ingest.text_field the field that holds the text?",
    "non_string_text": "{text!r} is not a string in the rows: set ingest.text_field to the field that holds the text",
    "invalid_json": "the lines are not JSON objects: is this file JSONL (one JSON object per line)?",
    "not_an_object": "the lines are JSON but not objects: each line must be one JSON object",
    "invalid_utf8": "the file is not UTF-8 text (or its compression does not match its name)",
    "blank_line": "the file's lines are blank",
    "bad_score_value": "the precomputed score columns hold values that are not numbers: see precomputed.scores",
}


def loud_failure(key: str, counts, fields, first_file: tuple[str, str] | None, quarantine_uri: str) -> str | None:
    """The error for a shard whose rows are (nearly) all quarantined for one reason, naming the
    reason, the fields the first rows hold and the setting to change; None for a usable shard."""
    if not counts.rows_in or not counts.reasons:
        return None
    reason, n = max(counts.reasons.items(), key=lambda kv: kv[1])
    if n < LOUD_SHARE * counts.rows_in:
        return None
    found = corpus.peek_fields(*first_file) if first_file else []
    hint = _HINTS.get(reason, "see the quarantine table").format(text=fields.text)
    return (f"{key}: {n} of {counts.rows_in} rows quarantined as {reason}: {hint}. The first rows hold the "
            f"field(s): {', '.join(found[:30]) or '(none readable)'}. Every row is in the quarantine table "
            f"{quarantine_uri}; fix the config and run again (or take the shard out with ingest.exclude).")


def make_ingest(cfg, policy):
    extractor = precomputed.Extractor(cfg.precomputed) if cfg and cfg.precomputed else None
    fields = (cfg.fields if cfg is not None and cfg.fields is not None else corpus.DEFAULT_FIELDS)
    outs = {
        "raw_docs": dg.AssetOut(
            description="Normalised documents of one shard: doc_id, text, source, meta, raw_row.",
            code_version=INGEST_VERSION, group_name=GROUP, is_required=True),
        "raw_quarantine": dg.AssetOut(
            description="Rows of the shard that could not be used: raw_row, reason, preview.",
            code_version=INGEST_VERSION, group_name=GROUP, is_required=True),
    }
    if extractor is not None:
        outs["precomputed_scores"] = dg.AssetOut(
            description="Scores read from the shard's own columns (precomputed.scores in the config): "
                        "doc_id + one column per score.",
            code_version=f"precomputed-{precomputed.PRECOMPUTED_VERSION}-{precomputed.digest(cfg.precomputed)}",
            group_name="scores", is_required=True)

    @dg.multi_asset(
        name="raw_shard", outs=outs, partitions_def=shards, backfill_policy=policy,
        check_specs=[dg.AssetCheckSpec("rows_balance", asset="raw_docs", blocking=True,
                                       description="rows read from the file == rows written + rows quarantined")],
        retry_policy=dg.RetryPolicy(max_retries=2, delay=2),
    )
    def raw_shard(context: dg.AssetExecutionContext, settings: MetaraterConfig):
        """Stream each shard file through fsspec (JSONL, JSONL.gz, JSONL.zst, Parquet) into Parquet."""
        files = settings.files
        tracer = identity.for_run(context, settings)
        outputs = {"docs": "raw_docs", "quarantine": "raw_quarantine", **({"scores": "precomputed_scores"} if extractor else {})}

        resolver = Resolver(context.instance, settings.raw_uri)

        def one(key: str):
            with tempfile.TemporaryDirectory(prefix="metarater-ingest-") as tmp:
                paths = {n: os.path.join(tmp, f"{n}.parquet") for n in ("docs", "quarantine", "scores")}
                try:
                    members = resolver.files(key)
                    # the identity of what is read: the files' fingerprints (or the partition holding them)
                    tracer.sources.put(key, packs.fingerprint(key, members) if members
                                       else f"owned-by:{resolver.owner(key) or ''}")
                    ids = {n: tracer.identity(a, key) for n, a in outputs.items()}
                    res = corpus.ingest_files([(m.uri, m.name) for m in members], paths["docs"],
                                              paths["quarantine"], extractor=extractor,
                                              scores_path=paths["scores"] if extractor else None,
                                              footers={n: identity.footer(i) for n, i in ids.items()},
                                              fields=fields)
                except corpus.ShardError as e:  # the file itself is bad: retrying cannot help
                    raise dg.Failure(description=f"ShardError: {e}", allow_retries=False) from e
                files.put("raw_quarantine", key, paths["quarantine"])
                loud = loud_failure(key, res, fields, (members[0].uri, members[0].name) if members else None,
                                    files.uri("raw_quarantine", key))
                if loud:  # the quarantine table is written (nothing lost); no documents are recorded
                    raise dg.Failure(description=f"ShardError: {loud}", allow_retries=False)
                files.put("raw_docs", key, paths["docs"])
                if extractor:
                    files.put("precomputed_scores", key, paths["scores"])
            facts = {"rows_in": res.rows_in, "rows_ok": res.rows_ok, "rows_quarantined": res.rows_quarantined,
                     "quarantine_reasons": dg.MetadataValue.json(res.reasons)}
            if members:
                facts.update({"file": members[0].uri, "fingerprint": packs.fingerprint(key, members)})
            if packs.is_pack_key(key):
                facts.update({"files": len(members), PACK_MEMBERS: dg.MetadataValue.json([
                    {"key": m.key, "name": m.name, "fingerprint": m.fingerprint, "rows": n}
                    for m, n in zip(members, res.member_rows)])})
            elif not members:  # two registrations raced and an earlier partition holds this file: nothing to read here
                facts.update({"file": "", "owned_by": resolver.owner(key) or ""})
            balanced = res.rows_in == res.rows_ok + res.rows_quarantined
            # recorded only now that every output of the shard is committed: a crash before this line
            # leaves the old record, so the shard reruns; a failed check blocks what reads it
            context.log_event(tracer.observation("raw_docs", key, ids["docs"], ok=balanced, **facts))
            for n, a in outputs.items():
                if a != "raw_docs":
                    context.log_event(tracer.observation(a, key, ids[n], ok=balanced))
            check = dg.AssetCheckResult(asset_key="raw_docs", check_name="rows_balance", passed=balanced,
                                        metadata={"rows_in": res.rows_in, "rows_written": res.rows_ok,
                                                  "rows_quarantined": res.rows_quarantined})
            return res, check

        done = for_each_shard(context, one)
        rows = {k: r for k, (r, _) in done.items()}
        reasons: dict[str, int] = {}
        for r in rows.values():
            for k, v in r.reasons.items():
                reasons[k] = reasons.get(k, 0) + v
        yield dg.MaterializeResult(asset_key="raw_docs", metadata={
            "shards": len(rows), "rows_in": sum(r.rows_in for r in rows.values()),
            "rows_ok": sum(r.rows_ok for r in rows.values())})
        yield dg.MaterializeResult(asset_key="raw_quarantine", metadata={
            "rows": sum(r.rows_quarantined for r in rows.values()), "reasons": dg.MetadataValue.json(reasons)})
        if extractor:
            yield dg.MaterializeResult(asset_key="precomputed_scores", metadata={
                "scores": ", ".join(extractor.names), "docs": sum(r.rows_ok for r in rows.values())})
        yield combine_checks({k: c for k, (_, c) in done.items()})

    return raw_shard
