"""`metarater score`: score one file outside the asset graph, with the pool's own fitted raters
where they exist (DSIR model, trained PRRC rater), the registry's model raters, or the scores
already in the file (``precomputed``)."""
from __future__ import annotations

import pyarrow as pa

from .core import corpus, dsir, precomputed, rater_training, raters, signals, storage as st
from .core.config import load_config
from .scoring import dsir_model_uri, load_dsir_model
from resources import Settings

BUILTIN = ("rpv2", "dsir", "perplexity", "prrc", "precomputed")


def score_file(settings: Settings, wanted: list[str], inp: str, out: str,
               config_path: str | None = None) -> tuple[pa.Table, list[str]]:
    st.table_format(out)  # an output format it cannot write is refused before any work
    cfg = load_config(config_path or settings.config_path)
    known = set(BUILTIN) | set(cfg.registry)
    unknown = [r for r in wanted if r not in known]
    if unknown:
        raise ValueError(f"unknown rater(s) {unknown}; available: {', '.join(BUILTIN)} or a model score of the "
                         f"registry ({', '.join(sorted(cfg.registry)) or 'none configured'})")
    extractor = precomputed.Extractor(cfg.precomputed) if "precomputed" in wanted else None
    if "precomputed" in wanted and not cfg.precomputed:
        raise ValueError("--raters precomputed needs a config with a precomputed.scores mapping (--config)")
    try:
        res = corpus.read_shard(inp, extractor=extractor, fields=cfg.fields or corpus.DEFAULT_FIELDS)
    except corpus.ShardError as e:
        raise ValueError(str(e)) from None
    ids, texts = res.docs.column("doc_id"), res.docs.column("text").combine_chunks()
    cols: dict[str, pa.Array] = {"doc_id": ids}
    reasons = res.quarantine.column("reason").to_pylist()
    notes = [f"{len(reasons)} row(s) quarantined: {dict((r, reasons.count(r)) for r in sorted(set(reasons)))}"] \
        if reasons else []
    if "rpv2" in wanted:
        cols.update(signals.compute_signals(texts))
    if "dsir" in wanted:
        uri = dsir_model_uri(settings.storage_uri)
        if st.exists(uri) and st.read_parquet(uri).num_rows == cfg.dsir.buckets:
            model = load_dsir_model(settings.storage_uri)
            notes.append(f"dsir: the pool's fitted dsir_model ({uri})")
        else:
            raw = dsir.count_buckets(texts, cfg.dsir.buckets)
            targets = {n: dsir.count_buckets(corpus.read_documents(u).column("text"), cfg.dsir.buckets)
                       for n, u in cfg.dsir.targets.items()}
            model = dsir.DsirModel.fit(raw, targets)
            notes.append(f"dsir: no fitted pool dsir_model under {settings.storage_uri}: the raw distribution is "
                         "this file's own (run `metarater run --stage scores` to fit it on the pool)")
        for n, v in model.score(texts).items():
            cols[f"dsir_{n}"] = pa.array(v)
    if "perplexity" in wanted:
        from .core import perplexity
        from .defs import perplexity_part
        from .scoring import perplexity_model

        pc = cfg.perplexity
        if not pc.targets:
            raise ValueError("--raters perplexity needs reference text: perplexity.targets (or dsir.targets) in the config")
        key = repr(perplexity_part(cfg))  # by content
        model = perplexity_model(cfg, key)
        cols[perplexity.SCORE] = pa.array(model.score(texts), from_pandas=True)
        notes.append(f"perplexity: a bigram model of {len(pc.targets)} reference file(s), {model.tokens} tokens")
    specs = {n: cfg.registry[n] for n in wanted if n in cfg.registry and n not in BUILTIN}
    if "prrc" in wanted:
        rater_uri = f"{settings.storage_uri}/prrc_rater.json"
        info = st.read_json(rater_uri) if st.exists(rater_uri) else {}
        if not info.get("enabled"):
            raise ValueError("--raters prrc needs the pool's trained PRRC rater: run `metarater run --stage scores` "
                             "with a prrc section in the config")
        specs.update(rater_training.specs_for(info["models"], max_tokens=int(info.get("max_tokens", 512))))
        notes.append(f"prrc: the pool's trained rater ({info.get('method', 'finetune')}, "
                     f"{next(iter(info['models'].values()))['uri']})")
    for group in raters.group_by_model(specs):
        rater = raters.load_rater(group[0])
        scores, classes = raters.apply_heads(rater.logits(texts.to_pylist()), [s.head for s in group], group[0].model)
        for j, s in enumerate(group):
            cols[s.score] = pa.array(scores[:, j])
            if s.head.is_classifier:
                cols[f"{s.score}_class"] = pa.array(classes[:, j])
    if extractor is not None:
        for n in extractor.names:
            cols[n] = res.scores.column(n)
        notes.append(f"precomputed: {len(extractor.names)} score(s) read from the file's columns")
    table = pa.table(cols)
    st.write_table(table, out)  # the format --out names
    return table, notes
