"""RedPajama-V2 natural-language quality signals (the 11 that Meta-rater uses).

Definitions follow the RedPajama-V2 reference code exactly (see RPV2_SIGNALS.md in the
project docs): NLTK WordPunct raw words, the reference's ``normalize`` (ASCII punctuation
deleted, lower-cased, whitespace collapsed, NFD), raw lines that keep their trailing ``\\n``,
values rounded with ``round(x, 8)``. Line-level signals are reduced to one number per
document by the plain mean over lines (blank lines included); ``None`` where the reference
gives no value.

``document_signals`` is the definition, in plain Python: one pass over a document computes all 11
signals from three shared views (raw words, normalized words, lines). ``compute_signals`` runs a
batch through the compiled kernel in ``textkernels`` (the same values, bit for bit, about 10x faster
per core) and falls back to ``document_signals`` per document where the kernel cannot follow Python.
"""
from __future__ import annotations

import math
import re
import string
import unicodedata
from collections import Counter
from typing import Sequence

import numpy as np
import pyarrow as pa

from . import textkernels

SIGNALS_VERSION = "1"

SIGNAL_NAMES: tuple[str, ...] = (
    "rps_doc_unigram_entropy",
    "rps_doc_frac_no_alph_words",
    "rps_lines_uppercase_letter_fraction",
    "rps_doc_mean_word_length",
    "rps_doc_frac_chars_top_2gram",
    "rps_doc_frac_chars_top_3gram",
    "rps_doc_word_count",
    "rps_doc_num_sentences",
    "rps_lines_numerical_chars_fraction",
    "rps_doc_frac_unique_words",
    "rps_lines_ending_with_terminal_punctution_mark",
)
#: Signals that are null (None) for some inputs (no words / no lines); the others never are.
NULLABLE: frozenset[str] = frozenset(
    {
        "rps_doc_unigram_entropy",
        "rps_doc_frac_no_alph_words",
        "rps_lines_uppercase_letter_fraction",
        "rps_doc_mean_word_length",
        "rps_lines_numerical_chars_fraction",
        "rps_doc_frac_unique_words",
        "rps_lines_ending_with_terminal_punctution_mark",
    }
)
#: Signals whose LOW values mark good text: the quality rules they come from (Gopher's repetition
#: and symbol rules, RedPajama-V2's line filters) reject documents where they are high. Unless
#: ``scores.orientation`` says otherwise, they are flipped (``low``) in the normalisation, so a
#: positive weight favours low values: with non-negative weights a signal used the wrong way round
#: can only select for the defect it measures (bench/controlled.py).
LOWER_IS_BETTER: frozenset[str] = frozenset(
    {
        "rps_doc_frac_no_alph_words",  # words without a letter: symbol and number noise
        "rps_lines_uppercase_letter_fraction",  # shouting, spam
        "rps_doc_frac_chars_top_2gram",  # repeated phrases, boilerplate
        "rps_doc_frac_chars_top_3gram",
        "rps_lines_numerical_chars_fraction",  # tables of numbers, ids
    }
)
#: Integer-valued signals (stored as int64); the rest are float64.
INTEGER_SIGNALS: frozenset[str] = frozenset({"rps_doc_word_count"})

_RAW_WORD_RE = re.compile(r"\w+|[^\w\s]+")
# A raw word contains an ASCII letter iff it is a \w+ run containing one (punctuation runs hold
# no letters); this pattern matches each such run exactly once, as a whole.
_ALPHA_WORD_RE = re.compile(r"\w*[A-Za-z]\w*")
_SENTENCE_RE = re.compile(r"\b[^.!?]+[.!?]*")
_LINE_RE = re.compile(r"[^\n]*\n|[^\n]+$")
_PUNCT_DELETE = str.maketrans("", "", string.punctuation)
_TERMINAL = (".", "!", "?", "\u201d")


def _r8(x: float) -> float:
    return round(x, 8)


def _top_ngram_frac(words: Sequence[str], n: int, total_chars: int) -> float:
    if len(words) < n:
        return 0.0
    if n == 2:
        grams = zip(words, words[1:])
    else:
        grams = zip(words, words[1:], words[2:])
    counts = Counter(grams)
    # most_common(1) is max() over insertion (= first occurrence) order: ties -> earliest.
    top, count = counts.most_common(1)[0]
    if count <= 1:
        return 0.0
    return _r8(sum(len(w) for w in top) * count / total_chars)


def document_signals(text: str) -> dict[str, float | int | None]:
    """All 11 signals of one document."""
    raw_words = _RAW_WORD_RE.findall(text)
    # normalize(): delete ASCII punctuation, lower, strip + collapse whitespace, NFD.
    # Deletion and lower() leave '\n' alone, so the lowered text splits into the same lines.
    lowered = text.translate(_PUNCT_DELETE).lower()
    words = unicodedata.normalize("NFD", lowered).split()
    n_words = len(words)

    out: dict[str, float | int | None] = {}
    if n_words:
        counts = Counter(words)
        ent = 0.0
        for c in counts.values():
            p = c / n_words
            ent += -p * math.log(p)
        out["rps_doc_unigram_entropy"] = _r8(ent)
        total_chars = sum(map(len, words))
        out["rps_doc_mean_word_length"] = _r8(total_chars / n_words)
        out["rps_doc_frac_unique_words"] = _r8(len(counts) / n_words)
        out["rps_doc_frac_chars_top_2gram"] = _top_ngram_frac(words, 2, total_chars)
        out["rps_doc_frac_chars_top_3gram"] = _top_ngram_frac(words, 3, total_chars)
    else:
        out["rps_doc_unigram_entropy"] = None
        out["rps_doc_mean_word_length"] = None
        out["rps_doc_frac_unique_words"] = None
        out["rps_doc_frac_chars_top_2gram"] = 0.0
        out["rps_doc_frac_chars_top_3gram"] = 0.0
    out["rps_doc_word_count"] = n_words

    if raw_words:
        alpha = len(_ALPHA_WORD_RE.findall(text))
        out["rps_doc_frac_no_alph_words"] = _r8(1.0 - alpha / len(raw_words))
    else:
        out["rps_doc_frac_no_alph_words"] = None

    out["rps_doc_num_sentences"] = float(len(_SENTENCE_RE.findall(text)))

    lines = _LINE_RE.findall(text)
    if lines:
        upper = 0.0
        numeric = 0.0
        terminal = 0.0
        # The lowered text has the same line pieces as the raw text (see above).
        low_lines = _LINE_RE.findall(lowered) if lowered.count("\n") == text.count("\n") else None
        for i, line in enumerate(lines):
            upper += _r8(sum(map(str.isupper, line)) / len(line))
            if line.rstrip().endswith(_TERMINAL):
                terminal += 1.0
            low = low_lines[i] if low_lines is not None and i < len(low_lines) else (
                line.translate(_PUNCT_DELETE).lower()
            )
            norm = unicodedata.normalize("NFD", " ".join(low.split()))
            if norm:
                numeric += _r8(sum(map(str.isnumeric, norm)) / len(norm))
        n_lines = len(lines)
        out["rps_lines_uppercase_letter_fraction"] = upper / n_lines
        out["rps_lines_numerical_chars_fraction"] = numeric / n_lines
        out["rps_lines_ending_with_terminal_punctution_mark"] = terminal / n_lines
    else:
        out["rps_lines_uppercase_letter_fraction"] = None
        out["rps_lines_numerical_chars_fraction"] = None
        out["rps_lines_ending_with_terminal_punctution_mark"] = None
    return out


def compute_signals(texts) -> dict[str, pa.Array]:
    """Signals for a batch of documents (a list of str or an Arrow string column), one Arrow array
    per signal name: the compiled kernel (``textkernels.rpv2_batch``) for every document it takes,
    ``document_signals`` for the rest (a capital sigma, whose lower case depends on context)."""
    col = textkernels.text_column(texts)
    out, valid, word_count, ok = textkernels.rpv2_batch(col)
    ok &= ~textkernels.sigma_documents(col)
    for i in np.flatnonzero(~ok):
        sig = document_signals(col[int(i)].as_py())
        word_count[i] = sig["rps_doc_word_count"]
        for k, name in enumerate(textkernels.RPV2_FLOAT):
            valid[i, k] = sig[name] is not None
            out[i, k] = sig[name] if sig[name] is not None else 0.0
    cols = {name: pa.array(out[:, k], pa.float64(), mask=~valid[:, k])
            for k, name in enumerate(textkernels.RPV2_FLOAT)}
    cols["rps_doc_word_count"] = pa.array(word_count, pa.int64())
    return {name: cols[name] for name in SIGNAL_NAMES}
