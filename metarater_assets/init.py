"""`metarater init RAW_URI`: a commented config for one's own pool, written without a question.

It lists the pool's shards, reads the first rows of the first one, finds the field that holds the
text (a known name, else the string field with the longest values), the id and the source, and
writes ``./metarater.yaml``: the raw URI, the field mapping, the bundled reference prose as the
quality target and the bundled DSIR targets (both to replace with one's own), and a CPU or GPU
preset chosen from the machine. ``metarater run`` then reads ``./metarater.yaml`` and keeps its
state in ``./.metarater``.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from .core import corpus
from .core.devices import usable_cpus

#: text field names in the order they are preferred (datatrove's text_key; RedPajama-V2's raw_content)
TEXT_NAMES = ("text", "content", "raw_content", "contents", "body", "document", "article", "markdown", "passage")
ID_NAMES = ("id", "doc_id", "document_id", "uid", "uuid", "idx", "guid", "key")
SOURCE_NAMES = ("source", "meta.source", "meta.redpajama_set_name", "dataset", "domain")
BUNDLED = Path(__file__).resolve().parent.parent / "data" / "sample"


def detect_fields(rows: list[dict]) -> dict:
    """``{"text", "id", "source"}`` field paths found in ``rows`` (``id``/``source`` may be None)."""
    paths = corpus.field_values(rows)
    strings = {p: v for p, v in paths.items() if v and sum(isinstance(x, str) for x in v) >= 0.8 * len(v)}
    text = next((n for n in TEXT_NAMES if n in strings), None)
    if text is None and strings:
        text = max(strings, key=lambda p: sum(len(x) for x in strings[p] if isinstance(x, str)) / len(strings[p]))
    if text is None:
        raise ValueError(f"no field of the first rows holds text; fields: {', '.join(paths) or '(none)'}")
    ids = next((n for n in ID_NAMES if n in paths and n != text
                and len({json.dumps(x, default=str) for x in paths[n]}) == len(paths[n])), None)
    source = next((n for n in SOURCE_NAMES if n in paths), None)
    return {"text": text, "id": ids, "source": source, "fields": list(paths)}


def machine_preset() -> dict:
    try:
        import torch

        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:
        gpus = 0
    return {"gpus": gpus, "cpus": usable_cpus()}


def render(raw_uri: str, found: dict, shards: int, first: str, machine: dict, quick: bool = False) -> str:
    gpu = machine["gpus"] > 0 and not quick
    text, id_, src = found["text"], found["id"], found["source"]
    targets = {n: str(BUNDLED / "targets" / f"{n}.jsonl.gz") for n in ("books", "wiki", "math")}
    reference = str(BUNDLED / "reference.jsonl.gz")
    lines = [
        "# metarater config written by `metarater init` for your pool. Every setting: docs/configuration.md",
        f"# {shards} shard(s) under {raw_uri}; fields read from the first rows of {first}:",
        f"#   {', '.join(found['fields'][:20])}",
        f"raw: {raw_uri}",
        "ingest:",
        f"  text_field: {text}" + ("" if text == "text" else "          # the field that holds the text (found)"),
        *([f"  id_field: {id_}"] if id_ and id_ != "id" else []),
        *([] if id_ else ["  # no unique id field found: documents get content ids (h-<hash>); set id_field to use yours"]),
        *([f"  # source: {src} (read as each document's source)"] if src else []),
        "  # meta_fields: [url, meta.date]   # keep only these fields as meta (default: every other field)",
        "  # exclude: [bad-shard.jsonl.gz]   # take shards out of the pool",
        "raters: [rpv2, dsir]            # 11 RedPajama-V2 signals + 3 DSIR importance scores",
        "# raters: [rpv2, dsir, perplexity]   # + fluency: perplexity under a bigram model of dsir.targets (or",
        "#                                      perplexity.targets); it sees shuffled or garbled text (docs/method.md)",
        "dsir:",
        "  buckets: 10000",
        "  targets:                       # examples of the text you want more of: replace with your own",
        *(f"    {n}: {u}" for n, u in targets.items()),
        "validation:",
        "  sets:",
        "    # role: quality = text that is not your pool, what the selection should be good at (the regression",
        "    # target and the evaluation's verdict); add an in_distribution set of your pool's own text to see both",
        f"    reference: {{uri: {reference}, role: quality}}   # edited reference prose (bundled): replace with yours",
        f"  max_docs: {100 if quick else 400}",
        "  held_out: 0.5                 # half of each set is read by the final evaluation only",
        "  target: mean",
        "tokenizer:",
        f"  vocab_size: {32000 if gpu else 1024 if quick else 4096}",
        "proxies:                        # tier 1: the runs the regressor is fitted on",
        f"  n: {256 if gpu else 16 if quick else 512}" + ("               # --quick: a first look in minutes, "
                                                          "not a result (512 by default)" if quick else ""),
        "  seed: 0",
        "  fraction: 0.15",
        "  fraction_of: tokens",
        f"  kind: {'transformer' if gpu else 'ngram'}",
        f"  preset: {'small' if gpu else 'test' if quick else 'tiny'}",
        f"  token_budget: {5_000_000 if gpu else 8192 if quick else 100_000}",
        *(["# confirm: (tier 2) left out by --quick"] if quick else [
            "confirm:                        # tier 2: transformer proxies on the optimum and a spread of tier 1",
            "  kind: transformer",
            f"  preset: {'target-cpu' if gpu else 'tiny'}",
            f"  token_budget: {20_000_000 if gpu else 100_000}",
            "  spread: 6",
            f"  single_score_runs: {'true' if gpu else 6}" + ("" if gpu else
                "          # the 6 single-score vectors best in tier 1 (true: every score)")]),
        f"regressor: {{folds: {3 if quick else 5}, candidates: {20000 if quick else 200000}, top_k: 128, "
        f"bootstrap: {5 if quick else 30}}}",
        "curation:",
        "  fraction: 0.15                # keep the best 15% of the pool's tokens",
        "  fraction_of: tokens",
        "  format: parquet",
        *([] if quick else ["  # weights: best_confirmed     # curate with the best tier-2 run instead of the predicted optimum"]),
        "evaluation:                     # curated vs random vs the best single score, paired by seed",
        f"  preset: {'target-cpu' if gpu else 'test' if quick else 'small'}",
        f"  token_budget: {50_000_000 if gpu else 4096 if quick else 150_000}",
        f"  seeds: {[0, 1] if quick else [0, 1, 2]}",
        "compute:",
        f"  accelerator: {'gpu' if gpu else 'cpu'}",
        f"  precision: {'bf16-mixed' if gpu else '32-true'}",
        *([f"  devices: 1                    # {machine['gpus']} GPU(s) found"] if gpu else
          [f"  # {machine['cpus']} CPU core(s) found, no GPU: the CPU preset"]),
        "model_raters:",
        "  scores: []                    # model raters (QuRating, FineWeb-Edu, ...) need their hub models: see docs",
    ]
    return "\n".join(lines) + "\n"


def init(raw_uri: str, dest: str = ".", force: bool = False, quick: bool = False) -> tuple[str, dict]:
    """Write ``dest/metarater.yaml`` for the pool at ``raw_uri``; returns (path, what was found)."""
    if "://" not in raw_uri:
        raw_uri = str(Path(raw_uri).resolve())
    files = corpus.list_shards(raw_uri)
    if not files:
        raise ValueError(f"no shard files under {raw_uri} (readable: {', '.join(sorted(corpus.FORMATS))})")
    first = files[0]
    rows = corpus.sample_rows(first.uri, first.name)
    if not rows:
        raise ValueError(f"{first.name}: no readable rows (JSON objects per line, or a Parquet table)")
    found = detect_fields(rows)
    out = Path(dest) / "metarater.yaml"
    if out.exists() and not force:
        raise FileExistsError(f"{out} exists; `metarater init --force` replaces it")
    text = render(raw_uri, found, len(files), first.name, machine_preset(), quick=quick)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, out)
    return str(out), {**found, "shards": len(files), "first": first.name}
