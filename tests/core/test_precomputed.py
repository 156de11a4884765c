"""Scores already in the shards: the released SlimPajama-Meta-rater layout mapped to the paper's
25 scores (values checked against an independent numpy/scipy computation), and bad layouts."""
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard
from scipy.special import softmax

from metarater_assets.core import corpus, precomputed
from metarater_assets.core.config import load_config
from metarater_assets.core.signals import SIGNAL_NAMES
from conftest import REPO

FIXTURE = REPO / "data" / "released-sample" / "raw"


@pytest.fixture(scope="module")
def extractor():
    cfg = load_config(str(REPO / "configs" / "slimpajama-meta-rater.yaml"))
    assert len(cfg.score_names) == 25
    return precomputed.Extractor(cfg.precomputed)


def _raw_rows(path: Path) -> list[dict]:
    if path.suffix == ".parquet":
        return pq.read_table(path).to_pylist()
    with open(path, "rb") as f:
        text = zstandard.ZstdDecompressor().stream_reader(f).read().decode()
    return [json.loads(line) for line in text.splitlines()]


def _expected(r: dict) -> dict:
    grades = np.arange(6)
    out = {n: r[n] for n in SIGNAL_NAMES}
    out.update({k: r[k] for k in ("dsir_books", "dsir_wiki", "dsir_math")})
    for i, n in enumerate(("writing_style", "required_expertise", "facts_and_trivia", "educational_value")):
        out[f"qurating_{n}"] = r["qurater"][i]
    out["fineweb_edu"] = r["fineweb_edu"][0]
    out["wanjuan_advertisement"] = softmax(r["ad_en"])[1]
    out["wanjuan_fluency"] = softmax(r["fluency_en"])[1]
    for d in ("professionalism", "readability", "reasoning", "cleanliness"):
        out[d] = float(softmax(r[f"modernbert_{d}"]) @ grades)
    return out


@pytest.mark.parametrize("name", ["example_train_0.jsonl.zst", "example_train_1.parquet"])
def test_released_layout_gives_exactly_the_mapped_scores(extractor, name):
    res = corpus.read_shard(str(FIXTURE / name), extractor=extractor)
    rows = _raw_rows(FIXTURE / name)
    assert res.rows_quarantined == 0 and res.rows_ok == len(rows) and res.scores.num_rows == len(rows)
    assert res.scores.column("doc_id").equals(res.docs.column("doc_id"))
    got = res.scores.to_pydict()
    for i, r in enumerate(rows):
        for n, v in _expected(r).items():
            if v is None:
                assert got[n][i] is None, (n, i)
            else:
                assert abs(got[n][i] - v) < 1e-9, (n, i, got[n][i], v)
    # the mapped columns are not copied into meta
    assert "qurater" not in res.docs.column("meta")[0].as_py()


def test_reductions():
    s = lambda **kw: precomputed.ScoreSource(score="s", column="c", **kw)  # noqa: E731
    assert precomputed.reduce_value(s(), 2) == 2.0
    assert precomputed.reduce_value(s(reduce="mean"), [1, 2, 6]) == 3.0
    assert precomputed.reduce_value(s(reduce="argmax"), [0.1, 3.0, 2.0]) == 1.0
    assert precomputed.reduce_value(s(reduce="element", index=2), [5, 6, 7]) == 7.0
    assert precomputed.reduce_value(s(reduce="softmax_prob", index=0), [0.0, 0.0]) == pytest.approx(0.5)
    assert precomputed.reduce_value(s(reduce="expected_grade"), [0.0, 0.0, 0.0]) == pytest.approx(1.0)
    assert precomputed.reduce_value(s(), None) is None and precomputed.reduce_value(s(), float("nan")) is None
    assert precomputed.reduce_value(s(reduce="mean"), [1, None]) is None
    with pytest.raises(ValueError, match="needs an index"):
        s(reduce="element")


def _shard(tmp_path: Path, rows: list[dict], parquet: bool = False) -> Path:
    if parquet:
        p = tmp_path / "bad.parquet"
        pq.write_table(pa.Table.from_pylist(rows), p)
        return p
    p = tmp_path / "bad.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return p


def test_wrong_layouts_are_named_or_quarantined(extractor, tmp_path):
    good = _raw_rows(FIXTURE / "example_train_0.jsonl.zst")[:4]
    bad = [dict(r) for r in good]
    bad[0]["qurater"] = bad[0]["qurater"][:3]           # a list of the wrong length
    bad[1]["fineweb_edu"] = ["high"]                    # not a number
    bad[2]["rps_doc_word_count"] = None                 # null stays null
    bad[3]["ad_en"] = 0.3                               # a number where a list is needed
    res = corpus.read_shard(str(_shard(tmp_path, bad)), extractor=extractor)
    q = res.quarantine.to_pydict()
    assert q["raw_row"] == [0, 1, 3] and set(q["reason"]) == {"bad_score_value"}
    assert "'qurater': list of 3, expected 4" in q["preview"][0]
    assert "not a number" in q["preview"][1] and "expected a list" in q["preview"][2]
    assert res.rows_ok == 1 and res.scores.column("rps_doc_word_count").to_pylist() == [None]
    missing = [{k: v for k, v in r.items() if k != "modernbert_reasoning"} for r in good]
    for as_parquet in (False, True):
        with pytest.raises(corpus.ShardError, match="column 'modernbert_reasoning' of the precomputed scores is missing"):
            corpus.read_shard(str(_shard(tmp_path, missing, as_parquet)), extractor=extractor)


@pytest.mark.parametrize("name", ["example_train_0.jsonl.zst", "example_train_1.parquet"])
def test_fixture_rps_columns_are_our_rpv2_signals_of_the_text(name):
    """The fixture's rps_* values are what metarater_assets/core/signals.py computes from each
    document's own text (read straight from the shard file, not through ingest)."""
    from metarater_assets.core.signals import document_signals

    rows = _raw_rows(FIXTURE / name)
    with_null = [i for i, r in enumerate(rows) if any(r[n] is None for n in SIGNAL_NAMES)]
    picked = sorted({0, 1, len(rows) // 2, len(rows) - 1, *range(7, len(rows), 23), *with_null[:2]})
    assert len(picked) >= 6
    for i in picked:
        r = rows[i]
        assert r["text"] and set(SIGNAL_NAMES) <= set(r)
        ours = document_signals(r["text"])
        for n in SIGNAL_NAMES:
            if r[n] is None or ours[n] is None:
                assert r[n] is None and ours[n] is None, (name, i, n, r[n], ours[n])
            else:
                assert abs(float(r[n]) - float(ours[n])) <= 1e-9, (name, i, n, r[n], ours[n])


def test_released_parquet_meta_as_a_struct(extractor, tmp_path):
    """The bundled parquet shard stores ``meta`` as a JSON string; the released files have a struct
    {redpajama_set_name}: both give the source."""
    t = pq.read_table(FIXTURE / "example_train_1.parquet").slice(0, 5)
    metas = [json.loads(m) for m in t.column("meta").to_pylist()]
    struct = t.set_column(t.column_names.index("meta"), "meta", pa.array(metas))
    assert pa.types.is_struct(struct.schema.field("meta").type)
    p = tmp_path / "struct.parquet"
    pq.write_table(struct, p)
    res = corpus.read_shard(str(p), extractor=extractor)
    assert res.rows_ok == 5 and res.scores.num_rows == 5
    assert res.docs.column("source").to_pylist() == [m["redpajama_set_name"] for m in metas]
