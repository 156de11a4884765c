"""A per-document port of the RedPajama-V2 reference code's structure, the plain-Python baseline.

RPv2 builds a ``Document`` (raw words, normalized text and words, raw and normalized lines) and
then runs one callable per quality signal, each returning spans ``[(start, end, value)]``. This
port keeps that structure (and the definitions in the project's RPV2_SIGNALS.md) so the
benchmark compares like with like: same outputs, the reference's way of computing them.
"""
from __future__ import annotations

import math
import re
import string
import unicodedata
from collections import Counter

_WPT = re.compile(r"\w+|[^\w\s]+")
_TRANS = str.maketrans("", "", string.punctuation)
_WS = re.compile(r"\s+")


def normalize(text: str) -> str:
    text = text.translate(_TRANS).lower()
    text = _WS.sub(" ", text.strip())
    return unicodedata.normalize("NFD", text)


class Document:
    def __init__(self, content: str):
        self.raw_content = content
        self.raw_words = tuple(_WPT.findall(content))
        self.normalized_content = normalize(content)
        self.normalized_words = tuple(self.normalized_content.split())
        self.raw_lines = tuple((m.start(), m.end(), m.group()) for m in re.finditer(r"[^\n]*\n|[^\n]+$", content))
        self.normalized_lines = tuple((s, e, normalize(t)) for s, e, t in self.raw_lines)
        self.num_raw_words = len(self.raw_words)
        self.num_normalized_words = len(self.normalized_words)


def r8(x):
    return round(x, 8)


def doc_span(doc, v):
    return [(0, len(doc.raw_content), v)]


def unigram_entropy(doc):
    if doc.num_normalized_words == 0:
        return doc_span(doc, None)
    counts = Counter(doc.normalized_words)
    n = doc.num_normalized_words
    return doc_span(doc, r8(sum(-(c / n) * math.log(c / n) for c in counts.values())))


def frac_no_alph_words(doc):
    if doc.num_raw_words == 0:
        return doc_span(doc, None)
    alpha = sum(1 for w in doc.raw_words if re.search(r"[A-Za-z]", w))
    return doc_span(doc, r8(1.0 - alpha / doc.num_raw_words))


def mean_word_length(doc):
    if doc.num_normalized_words == 0:
        return doc_span(doc, None)
    return doc_span(doc, r8(sum(map(len, doc.normalized_words)) / doc.num_normalized_words))


def top_ngram(n):
    def f(doc):
        words = doc.normalized_words
        grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
        if not grams:
            return doc_span(doc, 0.0)
        counts = Counter(grams)
        top, c = counts.most_common(1)[0]
        if c <= 1:
            return doc_span(doc, 0.0)
        total = sum(map(len, words))
        return doc_span(doc, r8(sum(map(len, top)) * c / total))
    return f


def word_count(doc):
    return doc_span(doc, doc.num_normalized_words)


def num_sentences(doc):
    return doc_span(doc, float(len(re.findall(r"\b[^.!?]+[.!?]*", doc.raw_content))))


def frac_unique_words(doc):
    if doc.num_normalized_words == 0:
        return doc_span(doc, None)
    return doc_span(doc, r8(len(set(doc.normalized_words)) / doc.num_normalized_words))


def lines_uppercase(doc):
    return [(s, e, r8(sum(1 for ch in t if ch.isupper()) / len(t))) for s, e, t in doc.raw_lines]


def lines_numerical(doc):
    return [(s, e, 0.0 if not t else r8(sum(1 for ch in t if ch.isnumeric()) / len(t)))
            for s, e, t in doc.normalized_lines]


def lines_terminal(doc):
    return [(s, e, 1.0 if t.rstrip().endswith((".", "!", "?", "\u201d")) else 0.0)
            for s, e, t in doc.raw_lines]


SIGNALS = {
    "rps_doc_unigram_entropy": unigram_entropy,
    "rps_doc_frac_no_alph_words": frac_no_alph_words,
    "rps_lines_uppercase_letter_fraction": lines_uppercase,
    "rps_doc_mean_word_length": mean_word_length,
    "rps_doc_frac_chars_top_2gram": top_ngram(2),
    "rps_doc_frac_chars_top_3gram": top_ngram(3),
    "rps_doc_word_count": word_count,
    "rps_doc_num_sentences": num_sentences,
    "rps_lines_numerical_chars_fraction": lines_numerical,
    "rps_doc_frac_unique_words": frac_unique_words,
    "rps_lines_ending_with_terminal_punctution_mark": lines_terminal,
}


def reference_signals(text: str) -> dict:
    doc = Document(text)
    out = {}
    for name, fn in SIGNALS.items():
        spans = fn(doc)
        if name.startswith("rps_lines_"):
            out[name] = (sum(v for _, _, v in spans) / len(spans)) if spans else None
        else:
            out[name] = spans[0][2]
    return out
