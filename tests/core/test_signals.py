import json
import math

import pytest

from metarater_assets.core.signals import (NULLABLE, SIGNAL_NAMES, compute_signals,
                                           document_signals)
from conftest import TEST_DATA

GOLDEN = [json.loads(line) for line in (TEST_DATA / "rpv2_golden.jsonl").open(encoding="utf-8")]


def test_golden_has_all_signals():
    assert len(GOLDEN) == 611
    assert set(GOLDEN[0]["expected"]) == set(SIGNAL_NAMES)


def test_every_signal_matches_reference_within_1e9():
    mismatches = []
    for row in GOLDEN:
        got = document_signals(row["text"])
        for name, want in row["expected"].items():
            have = got[name]
            if want is None or have is None:
                if (want is None) != (have is None):
                    mismatches.append((row["id"], name, want, have))
            elif abs(want - have) > 1e-9:
                mismatches.append((row["id"], name, want, have))
    assert not mismatches, mismatches[:10]


def test_batch_equals_per_document():
    texts = [r["text"] for r in GOLDEN[:40]]
    cols = compute_signals(texts)
    for i, t in enumerate(texts):
        one = document_signals(t)
        for n in SIGNAL_NAMES:
            assert cols[n][i].as_py() == one[n]


@pytest.mark.parametrize("text,name,value", [
    ("ABC\n", "rps_lines_uppercase_letter_fraction", 0.75),
    ("a a a a", "rps_doc_frac_chars_top_2gram", 1.5),
    ("e.g. 3.14", "rps_doc_num_sentences", 4.0),
    ("foo,bar", "rps_doc_word_count", 1),
    ("Line one.\nno end", "rps_lines_ending_with_terminal_punctution_mark", 0.5),
])
def test_spec_examples(text, name, value):
    assert document_signals(text)[name] == value


def test_nulls_only_where_allowed():
    sig = document_signals("")
    for n in SIGNAL_NAMES:
        if sig[n] is None:
            assert n in NULLABLE
    assert sig["rps_doc_word_count"] == 0 and sig["rps_doc_num_sentences"] == 0.0
    assert all(v is not None and not (isinstance(v, float) and math.isnan(v))
               for v in document_signals("Hello world. Fine.").values())
