"""The compiled kernels against the plain-Python definitions, bit for bit."""
import json
import random
import re
import sys
import unicodedata

import numpy as np
import pyarrow as pa
import pytest
import xxhash

from metarater_assets.core import dsir, textkernels as tk
from metarater_assets.core.signals import SIGNAL_NAMES, compute_signals, document_signals
from conftest import TEST_DATA

GOLDEN = [json.loads(line)["text"] for line in (TEST_DATA / "rpv2_golden.jsonl").open(encoding="utf-8")]

# characters chosen to reach every branch: ASCII letters, digits, punctuation (deleted by normalize,
# or sentence ends), whitespace of several kinds, upper case with multi-character lower case (İ),
# the context-dependent capital sigma, combining marks of different classes (reordered by NFD),
# precomposed letters and Hangul (decomposed by NFD), numerics that are not digits (² ½ Ⅻ 三),
# a non-ASCII character whose NFD is ASCII punctuation (U+037E), the right double quote (terminal),
# uppercase that is not a letter (Ⓐ), titlecase (ǅ), emoji (outside the BMP), and the underscore
_POOL = (list("abcxyzABCXYZ0123456789.!?,;:'\"-_()[]{}/\\@#$%^&*=+~`<>|") + [" ", " ", " ", "\n", "\n", "\t", "\r",
         "\u2028", "\u00a0", "\u3000", "\u0130", "\u03a3", "\u03c3", "\u0301", "\u0323", "\u0308", "\u05b0",
         "\u00e9", "\u00c9", "\u1e69", "\ud55c", "\uac00", "\u00b2", "\u00bd", "\u216b", "\u4e09", "\u037e",
         "\u201d", "\u201c", "\u2026", "\u24b6", "\u01c5", "\U0001f600", "\U0001d400", "\u0661", "\u00df",
         "\ufb01", "\u1f88", "\u0345", "\u212b", "\u2126"])


def _random_texts(n, seed):
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        k = rng.choice([0, 1, 2, 5, 20, 80, 300])
        words = []
        for _ in range(k):
            w = "".join(rng.choice(_POOL) for _ in range(rng.randint(1, 6)))
            words.append(w if rng.random() < 0.8 else rng.choice(["the", "the", "of", "a b", "x y z"]))
        out.append(rng.choice([" ", "  ", "\n", ". "]).join(words))
    return out


def _same(a, b):
    return (a is None and b is None) or (a is not None and b is not None and a == b
                                         and type(a) is type(b))


@pytest.mark.parametrize("texts", [GOLDEN, _random_texts(1500, 1), _random_texts(1500, 2)],
                         ids=["golden", "random-1", "random-2"])
def test_compute_signals_equals_document_signals_bit_for_bit(texts):
    cols = {n: c.to_pylist() for n, c in compute_signals(texts).items()}
    diffs = [(i, n, cols[n][i], want)
             for i, t in enumerate(texts) for n, want in document_signals(t).items() if not _same(cols[n][i], want)]
    assert not diffs, diffs[:5]


def test_the_kernel_itself_takes_all_but_sigma_documents():
    # the kernel's own result (not the Python fallback) is what the equality above tests
    texts = _random_texts(400, 3)
    _, _, _, ok = tk.rpv2_batch(texts)
    assert [bool(x) for x in ok] == [True] * len(texts)
    assert sum(tk.SIGMA in t for t in texts) > 10  # and the fallback path is exercised too


def test_arrow_input_equals_list_input_and_respects_slices():
    texts = GOLDEN[:50]
    col = pa.array(["ignored"] + texts + ["also ignored"], pa.string()).slice(1, len(texts))
    a, b = compute_signals(texts), compute_signals(col)
    assert all(a[n].equals(b[n]) for n in SIGNAL_NAMES)


def test_round8_is_pythons_round():
    rng = random.Random(5)
    xs = [rng.randint(0, 10**6) / rng.randint(1, 10**6) for _ in range(20000)]
    xs += [k / 2**m for k in range(1, 200) for m in (9, 10, 11, 12)]  # exact binary values near ties
    xs += [(2 * k + 1) / 2 / 1e8 for k in range(2000)]  # halfway in decimal (as close as a double gets)
    xs += [rng.random() * 1e6 for _ in range(5000)] + [0.0, 1.0, 0.5, 1.5, 9999999.999999995]
    got = [tk._r8(x) for x in xs]
    bad = [(x, g, round(x, 8)) for x, g in zip(xs, got) if g != round(x, 8)]
    assert not bad, bad[:5]


def test_tables_follow_python():
    t = tk.tables()
    for cp in list(range(0, 0x3000)) + list(range(0xAC00, 0xAC40)) + [0x1F600, 0x1D400, 0x10FFFF]:
        c = chr(cp)
        f = int(t.flags[cp])
        assert bool(f & tk.WORD) == (c.isalnum() or c == "_")
        assert bool(f & tk.SPACE) == c.isspace()
        assert bool(f & tk.UPPER) == c.isupper()
        assert bool(f & tk.NUMERIC) == c.isnumeric()
        seq = t.nl_data[t.nl_start[cp]: t.nl_start[cp] + t.nl_len[cp]] if t.nl_len[cp] else [cp]
        assert "".join(map(chr, seq)) == unicodedata.normalize("NFD", c.lower())


def test_no_character_maps_across_the_space_boundary():
    # the normalized stream is split on spaces after NFD(lower(c)): the kernel relies on a
    # non-space character never mapping to (or into) a space, and a space only to spaces
    t = tk.tables()
    for cp in np.flatnonzero(t.nl_len):
        mapped = t.nl_data[t.nl_start[cp]: t.nl_start[cp] + t.nl_len[cp]]
        spaces = {bool(t.flags[o] & tk.SPACE) for o in mapped}
        assert spaces == {bool(t.flags[cp] & tk.SPACE)}, hex(cp)


@pytest.mark.parametrize("n", list(range(0, 260)) + [511, 1024, 1025, 3000, 5000])
def test_xxh3_is_the_librarys(n):
    b = bytes(random.Random(n).getrandbits(8) for _ in range(n + 3))
    got = int(tk.xxh3_64(np.frombuffer(b, np.uint8), 3, n, tk._SECRET))
    assert got == xxhash.xxh3_64_intdigest(b[3:])


def _python_buckets(texts, buckets):
    """DSIR's features as the plain-Python definition computes them (re + xxhash per token)."""
    token = re.compile(r"\w+|[^\w\s]+")
    flat, offsets = [], [0]
    mix = np.uint64(0x9E3779B97F4A7C15)
    with np.errstate(over="ignore"):
        for t in texts:
            h = np.array([xxhash.xxh3_64_intdigest(w.encode()) for w in token.findall(t.lower())], np.uint64)
            f = list(h % np.uint64(buckets)) + list((h[:-1] * mix + h[1:]) % np.uint64(buckets)) if len(h) else []
            flat += [int(x) for x in f]
            offsets.append(len(flat))
    return np.array(flat, np.int32), np.array(offsets, np.int64)


@pytest.mark.parametrize("texts", [GOLDEN, _random_texts(800, 4)], ids=["golden", "random"])
def test_dsir_buckets_equal_the_python_definition(texts):
    got = dsir.doc_buckets(texts, 10_000)
    want = _python_buckets(texts, 10_000)
    assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])


def test_tables_are_cached_per_interpreter(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    tk.tables.cache_clear()
    try:
        first = tk.tables()
        files = list((tmp_path / "metarater").glob("chartables-*.npz"))
        assert len(files) == 1 and sys.implementation.cache_tag in files[0].name
        tk.tables.cache_clear()
        again = tk.tables()
        assert np.array_equal(first.nl_data, again.nl_data) and np.array_equal(first.flags, again.flags)
    finally:
        tk.tables.cache_clear()
