"""Stage 'pool' (tokens): the tokenizer, per-shard token ids and the validation sets' tokens."""

import hashlib

import numpy as np
import pyarrow as pa
import xxhash

import dagster as dg

from . import identity
from .batched import for_each_shard
from .core import corpus, proxy_lm, storage as st
from .partitions import shards
from resources import MetaraterConfig

GROUP = "pool"
TOKEN_ROW_GROUP = 1024  # doc_tokens row groups: a training-data writer reads only those it keeps
DIGEST_KEY = b"metarater.digest"  # a content digest in a per-shard file's footer


#: the tokenizer sample's hash seed (part of the tokenizer's code version)
SAMPLE_SEED = 0


def sample_hashes(key: str, doc_ids, seed: int = SAMPLE_SEED) -> np.ndarray:
    """A seeded 64-bit hash per document of shard ``key``: the tokenizer sample keeps the lowest."""
    prefix = f"{seed}:{key}:"
    return np.fromiter((xxhash.xxh3_64_intdigest((prefix + str(i)).encode()) for i in doc_ids), dtype=np.uint64,
                       count=len(doc_ids))


def sample_threshold(hash_batches, limit: int) -> int | None:
    """The largest hash among the ``limit`` lowest of every batch (None: the pool has no more than
    ``limit`` documents, keep them all). Memory: ``limit`` hashes plus one batch."""
    best = np.empty(0, dtype=np.uint64)
    total = 0
    for h in hash_batches:
        total += len(h)
        best = np.concatenate([best, h])
        if len(best) > limit:
            best = np.partition(best, limit - 1)[:limit]
    if total <= limit:
        return None
    return int(best.max())


def _texts(settings: MetaraterConfig, keys: list[str], limit: int, tracer: identity.Tracer):
    """The tokenizer's training sample, streamed: the ``limit`` documents of the whole pool with
    the lowest seeded hash of (shard, doc id), so a pool sorted by source gives a tokenizer of every
    source. Two passes: the doc ids (for the hash threshold), then the texts under it."""
    def ids():
        for key in keys:
            for batch in tracer.batches(settings.files, "raw_docs", key, ["doc_id"], rows=65536):
                yield sample_hashes(key, batch.column(0).to_pylist())

    cut = sample_threshold(ids(), limit)
    for key in keys:
        for batch in tracer.batches(settings.files, "raw_docs", key, ["doc_id", "text"], rows=1000):
            texts = batch.column(1).to_pylist()
            if cut is None:
                yield from texts
                continue
            keep = sample_hashes(key, batch.column(0).to_pylist()) <= np.uint64(cut)
            yield from (t for t, k in zip(texts, keep) if k)


@dg.asset(io_manager_key="json_io_manager", group_name=GROUP, code_version="tokenizer-3",
          deps=[dg.AssetDep("raw_docs", partition_mapping=dg.AllPartitionMapping())],
          description="Byte-level BPE trained with HF tokenizers on a streamed sample of the pool "
                      "(tokenizer.sample_docs documents spread over every shard by a seeded hash; saved with "
                      "save_pretrained), or the HF tokenizer named by tokenizer.path (then nothing "
                      "of the pool is read). Refit on request.")
def tokenizer(context: dg.AssetExecutionContext, settings: MetaraterConfig):
    cfg = settings.load()
    tracer = identity.for_run(context, settings, cfg)
    if cfg.tokenizer_path:
        tok = proxy_lm.load_tokenizer(cfg.tokenizer_path)
        out = {"uri": cfg.tokenizer_path, "vocab_size": len(tok), "trained": False, "eos_id": tok.eos_token_id}
        return identity.output(tracer, "tokenizer", out, identity.digest(["tokenizer", tracer.code_version("tokenizer"),
                                                                          sorted(out.items())]))
    ident = tracer.identity("tokenizer")
    keys = tracer.active("shards")
    if not keys:
        raise dg.Failure("no ingested shard to train the tokenizer on: run the ingest stage first", allow_retries=False)
    counter = {"n": 0}

    def sample():
        for t in _texts(settings, keys, cfg.tokenizer_sample_docs, tracer):
            counter["n"] += 1
            yield t

    tok = proxy_lm.train_tokenizer(sample(), cfg.tokenizer_vocab_size)
    # a folder per identity: what reads the tokenizer never loads another fit's files
    uri = f"{settings.artifacts_uri}/tokenizer/{ident}"
    proxy_lm.save_tokenizer(tok, uri)
    digest = hashlib.sha1(tok.backend_tokenizer.to_str().encode()).hexdigest()
    return identity.output(tracer, "tokenizer", {"uri": uri, "vocab_size": len(tok), "trained": True,
                                                 "eos_id": tok.eos_token_id, "digest": digest}, ident,
                           {"vocab_size": len(tok), "trained_on_docs": counter["n"], "uri": uri})


def load(tok_info: dict, tracer: identity.Tracer | None = None):
    if tracer is not None:
        tracer.check_json("tokenizer", tok_info)
    return proxy_lm.load_tokenizer(tok_info["uri"], require_marker=bool(tok_info.get("trained")))


TOKENS_SCHEMA = pa.schema([("doc_id", pa.string()), ("n_tokens", pa.int64()), ("ids", pa.list_(pa.int32()))])


def tokens_table(doc_ids: pa.ChunkedArray, n: np.ndarray, values: np.ndarray) -> pa.Table:
    """doc_id, n_tokens, ids of a batch of documents: ``values`` is every document's ids one after
    the other, ``n`` their lengths (one list array over the offsets, no per-document lists)."""
    offsets = np.zeros(len(n) + 1, dtype=np.int32)
    np.cumsum(n, out=offsets[1:])
    return pa.Table.from_arrays([doc_ids.combine_chunks(), pa.array(n),
                                 pa.ListArray.from_arrays(pa.array(offsets), pa.array(values))],
                                schema=TOKENS_SCHEMA)


def make_doc_tokens(policy):
    @dg.asset(partitions_def=shards, group_name=GROUP, code_version="doc-tokens-3", backfill_policy=policy,
              deps=["raw_docs"], ins={"tokenizer": dg.AssetIn("tokenizer")},
              description="Token ids of every document of one shard (doc_id, n_tokens, ids), in row "
                          "groups of 1,024 documents.")
    def doc_tokens(context: dg.AssetExecutionContext, tokenizer: dict, settings: MetaraterConfig):
        tracer = identity.for_run(context, settings)
        tok = load(tokenizer, tracer)

        def one(key):
            ident = tracer.identity("doc_tokens", key)
            h_n, h_ids = hashlib.sha1(), hashlib.sha1()  # the content digest: token counts, then ids
            tokens = 0
            with settings.files.stream("doc_tokens", key, TOKENS_SCHEMA.with_metadata(identity.footer(ident)),
                                       row_group_size=TOKEN_ROW_GROUP) as out:
                for t in tracer.batches(settings.files, "raw_docs", key, ["doc_id", "text"]):
                    n, values = proxy_lm.encode_flat(tok, t.column("text").to_pylist())  # int64, int32
                    h_n.update(n.tobytes())
                    h_ids.update(values.tobytes())  # the same bytes as feeding each document's ids
                    out.write(tokens_table(t.column("doc_id"), n, values))
                    tokens += int(n.sum())
                out.footer({DIGEST_KEY: hashlib.sha1(h_n.digest() + h_ids.digest()).hexdigest().encode()})
            context.log_event(tracer.observation("doc_tokens", key, ident))
            return out.rows, tokens

        done = for_each_shard(context, one)
        return dg.MaterializeResult(metadata={"docs": sum(d for d, _ in done.values()),
                                              "tokens": sum(t for _, t in done.values()), "shards": len(done)})

    return doc_tokens


def held_out(set_name: str, doc_ids, fraction: float) -> np.ndarray:
    """Deterministic split of a validation set by document-id hash: True = held out (read by the
    evaluation only), False = tuning (the proxies' losses and the regression target)."""
    if fraction <= 0:
        return np.zeros(len(doc_ids), dtype=bool)
    u = np.array([xxhash.xxh3_64_intdigest(f"heldout:{set_name}:{d}".encode()) / 2.0 ** 64 for d in doc_ids])
    return u < fraction


def validation_uri(storage_uri: str) -> str:
    return f"{storage_uri.rstrip('/')}/validation_tokens.parquet"


@dg.asset(group_name=GROUP, code_version="val-tokens-2", ins={"tokenizer": dg.AssetIn("tokenizer")},
          description="Token ids of every configured validation set (first validation.max_docs docs), "
                      "each document marked `tune` (proxy losses, the regression target) or `held_out` "
                      "(only the evaluation reads it) by a hash of its id (validation.held_out).")
def validation_tokens(context: dg.AssetExecutionContext, tokenizer: dict, settings: MetaraterConfig):
    cfg = settings.load()
    tracer = identity.for_run(context, settings, cfg)
    ident = tracer.identity("validation_tokens")
    tok = load(tokenizer, tracer)
    parts = []
    counts = {}
    for name, uri in cfg.validation_sets.items():
        docs = corpus.read_documents(uri).slice(0, cfg.validation_max_docs)
        ids = proxy_lm.encode(tok, docs.column("text").to_pylist())
        doc_ids = docs.column("doc_id").to_pylist()
        ho = held_out(name, doc_ids, cfg.validation_held_out)
        parts.append(pa.table({"set": [name] * len(ids), "doc_id": doc_ids, "source": docs.column("source"),
                               "part": np.where(ho, "held_out", "tune").tolist(),
                               "ids": pa.array([x.tolist() for x in ids], pa.list_(pa.int32()))}))
        counts[name] = {"tune": int((~ho).sum()), "held_out": int(ho.sum())}
    table = pa.concat_tables(parts)
    st.write_parquet(table.replace_schema_metadata(identity.footer(ident)), validation_uri(settings.storage_uri))
    return identity.result(tracer, "validation_tokens", ident, {"docs": dg.MetadataValue.json(counts)})


def validation_sets(storage_uri: str, part: str = "tune",
                    tracer: identity.Tracer | None = None) -> dict[str, tuple[list[np.ndarray], list[str]]]:
    """{set: (token arrays, sources)} of one part (``tune`` / ``held_out``; a set without a
    held-out part falls back to all of it for ``tune``); with a tracer, after checking the file is
    the recorded, current one."""
    val = st.read_parquet(validation_uri(storage_uri))
    if tracer is not None:
        found = (val.schema.metadata or {}).get(identity.FOOTER)
        tracer.check_file("validation_tokens", None, found.decode() if found else None, validation_uri(storage_uri))
    out: dict[str, tuple[list, list]] = {}
    for s, src, p, x in zip(val.column("set").to_pylist(), val.column("source").to_pylist(),
                            val.column("part").to_pylist(), val.column("ids").to_pylist()):
        if p != part:
            continue
        out.setdefault(s, ([], []))
        out[s][0].append(np.asarray(x, dtype=np.int32))
        out[s][1].append(src)
    return out
