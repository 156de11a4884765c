"""Compiled kernels over a batch of UTF-8 documents: the 11 RPv2 signals and DSIR's tokens.

One pass per document over its code points, in numba, straight from an Arrow string column's
buffers (no Python string per document, no Python object per word). They reproduce the plain-Python
definitions in ``signals.py`` and ``dsir.py`` exactly, because every character property they use is
read from tables built from the running interpreter's own ``str`` methods and ``unicodedata``:

- ``\\w`` = ``isalnum() or '_'`` and ``\\s`` = ``isspace()`` (Python ``re``'s Unicode classes),
  ``isupper()``, ``isnumeric()``;
- ``normalize``'s per-character map ``NFD(c.lower())`` (ASCII punctuation deleted first), then
  Unicode canonical ordering of combining marks across the whole word (what ``unicodedata.normalize``
  does after decomposing), so words compare equal exactly when Python's words do;
- ``round(x, 8)`` as Python computes it (the exact binary value rounded half-even to 8 decimals,
  then read back), with an error-free product instead of decimal strings.

The one context-dependent case of ``str.lower()`` (Greek capital sigma, final or not) and values too
large for the exact rounding (a mean word length over 10^7) are left to the Python code, per
document: the callers pass those documents through ``signals.document_signals`` / ``str.lower``.
``tests/core/test_textkernels.py`` holds the kernels to the Python code on the golden set and on
random text drawn from every Unicode category.
"""
from __future__ import annotations

import os
import string
import sys
import tempfile
import unicodedata
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numba
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

KERNELS_VERSION = "1"
N_CODEPOINTS = 0x110000
SIGMA = "\u03a3"  # str.lower() maps it by context (final sigma): such documents take the Python path

# character flags
WORD, SPACE, UPPER, NUMERIC, ASCII_ALPHA, DELETE = 1, 2, 4, 8, 16, 32


@dataclass(frozen=True)
class Tables:
    flags: np.ndarray  # uint8 per code point
    ccc: np.ndarray  # uint8 canonical combining class
    nl_start: np.ndarray  # int32: where NFD(c.lower()) starts in nl_data (when nl_len > 0)
    nl_len: np.ndarray  # uint8: 0 = the character maps to itself
    nl_data: np.ndarray  # int32
    lo_start: np.ndarray  # the same for c.lower() alone (DSIR's tokens)
    lo_len: np.ndarray
    lo_data: np.ndarray


def _build() -> dict[str, np.ndarray]:
    flags = np.zeros(N_CODEPOINTS, np.uint8)
    ccc = np.zeros(N_CODEPOINTS, np.uint8)
    maps = {"nl": ([], np.zeros(N_CODEPOINTS, np.int32), np.zeros(N_CODEPOINTS, np.uint8)),
            "lo": ([], np.zeros(N_CODEPOINTS, np.int32), np.zeros(N_CODEPOINTS, np.uint8))}
    punct = set(string.punctuation)
    for cp in range(N_CODEPOINTS):
        if 0xD800 <= cp < 0xE000:
            continue  # surrogates never occur in valid UTF-8
        c = chr(cp)
        f = 0
        if c.isalnum() or c == "_":
            f |= WORD
        if c.isspace():
            f |= SPACE
        if c.isupper():
            f |= UPPER
        if c.isnumeric():
            f |= NUMERIC
        if ("a" <= c <= "z") or ("A" <= c <= "Z"):
            f |= ASCII_ALPHA
        if c in punct:
            f |= DELETE
        flags[cp] = f
        ccc[cp] = unicodedata.combining(c)
        low = c.lower()
        for key, seq in (("lo", low), ("nl", unicodedata.normalize("NFD", low))):
            if seq != c:
                data, start, length = maps[key]
                start[cp], length[cp] = len(data), len(seq)
                data.extend(map(ord, seq))
    out = {"flags": flags, "ccc": ccc}
    for key, (data, start, length) in maps.items():
        out[f"{key}_start"], out[f"{key}_len"] = start, length
        out[f"{key}_data"] = np.asarray(data, np.int32)
    return out


def _cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "metarater"


@lru_cache(maxsize=1)
def tables() -> Tables:
    """The character tables of this interpreter (built once, about a second; cached on disk by
    Python and Unicode version)."""
    tag = f"{sys.implementation.cache_tag}-unicode{unicodedata.unidata_version}-k{KERNELS_VERSION}"
    path = _cache_dir() / f"chartables-{tag}.npz"
    arrays = None
    try:
        with np.load(path) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError, KeyError):
        arrays = None
    if arrays is None or set(arrays) != set(Tables.__dataclass_fields__):
        arrays = _build()
        try:  # best effort: a read-only home just rebuilds next time
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz")
            with os.fdopen(fd, "wb") as f:
                np.savez(f, **arrays)
            os.replace(tmp, path)
        except OSError:
            pass
    return Tables(**arrays)


def text_column(texts) -> pa.Array | pa.ChunkedArray:
    """A batch of texts as an Arrow string column (a list of str is converted once)."""
    return texts if isinstance(texts, (pa.Array, pa.ChunkedArray)) else pa.array(list(texts), pa.large_string())


def sigma_documents(col) -> np.ndarray:
    """Which documents hold a capital sigma (bool per document): ``str.lower`` maps it by context."""
    return np.asarray(pc.match_substring(col, SIGMA).to_numpy(zero_copy_only=False), dtype=np.bool_)


def utf8_buffers(texts) -> tuple[np.ndarray, np.ndarray]:
    """(bytes, offsets) of a string column: a list of str, or an Arrow (chunked) string array."""
    texts = text_column(texts)
    if isinstance(texts, pa.ChunkedArray):
        texts = texts.combine_chunks() if texts.num_chunks != 1 else texts.chunk(0)
    if pa.types.is_string_view(texts.type):
        texts = texts.cast(pa.large_string())
    if texts.null_count:
        raise ValueError("text column holds nulls")
    wide = pa.types.is_large_string(texts.type)
    if not (wide or pa.types.is_string(texts.type)):
        raise TypeError(f"expected a string column, got {texts.type}")
    _, off_buf, data_buf = texts.buffers()
    offsets = np.frombuffer(off_buf, np.int64 if wide else np.int32)[texts.offset: texts.offset + len(texts) + 1]
    data = np.frombuffer(data_buf, np.uint8) if data_buf is not None else np.empty(0, np.uint8)
    return data, offsets.astype(np.int64)


# ---------------------------------------------------------------------------------------------
# shared pieces


@numba.njit(cache=True, inline="always")
def _decode(data, i):
    """The code point starting at byte i of valid UTF-8, and the next byte's index."""
    b = np.int32(data[i])
    if b < 0x80:
        return b, i + 1
    if b < 0xE0:
        return ((b & 0x1F) << 6) | (np.int32(data[i + 1]) & 0x3F), i + 2
    if b < 0xF0:
        return (((b & 0x0F) << 12) | ((np.int32(data[i + 1]) & 0x3F) << 6)
                | (np.int32(data[i + 2]) & 0x3F)), i + 3
    return (((b & 0x07) << 18) | ((np.int32(data[i + 1]) & 0x3F) << 12)
            | ((np.int32(data[i + 2]) & 0x3F) << 6) | (np.int32(data[i + 3]) & 0x3F)), i + 4


@numba.njit(cache=True, inline="always")
def _r8(x):
    """Python's ``round(x, 8)`` for 0 <= x < 1e7, bit for bit: x * 1e8 exactly (p + e, Dekker's
    error-free product; 1e8 has 19 significant bits, so it needs no split), rounded half-even to an
    integer n, and n / 1e8 correctly rounded (what Python's decimal string read back gives)."""
    p = x * 1e8
    c = 134217729.0 * x
    xh = c - (c - x)
    xl = x - xh
    e = (xh * 1e8 - p) + xl * 1e8
    n0 = np.floor(p)
    d = ((p - n0) - 0.5) + e  # its sign is exact: (p - n0) - 0.5 and e are both exact
    if d > 0.0:
        n = n0 + 1.0
    elif d < 0.0:
        n = n0
    else:
        n = n0 if np.fmod(n0, 2.0) == 0.0 else n0 + 1.0
    return n / 1e8


@numba.njit(cache=True, inline="always")
def _seq_hash(buf, s, n):
    h = np.uint64(0xCBF29CE484222325)
    for k in range(n):
        h = (h ^ np.uint64(buf[s + k])) * np.uint64(0x100000001B3)
    return h ^ (h >> np.uint64(29))


@numba.njit(cache=True)
def _intern(buf, s, n, h, slots, hashes, starts, lens, count):
    """The id of the sequence buf[s:s+n] among those interned so far (open addressing over
    ``slots``; -1 = empty), adding it as id ``count`` when new. Returns (id, is_new)."""
    mask = len(slots) - 1
    j = np.int64(h & np.uint64(mask))
    while True:
        k = slots[j]
        if k < 0:
            slots[j] = count
            hashes[count] = h
            starts[count] = s
            lens[count] = n
            return count, True
        if hashes[k] == h and lens[k] == n:
            a = starts[k]
            same = True
            for q in range(n):
                if buf[a + q] != buf[s + q]:
                    same = False
                    break
            if same:
                return k, False
        j = (j + 1) & mask


@numba.njit(cache=True)
def _pow2_at_least(n):
    m = 16
    while m < n:
        m *= 2
    return m


@numba.njit(cache=True)
def _key_ids(keys, n):
    """First-occurrence ids of int64 keys[0:n] (exact), and how many distinct."""
    size = _pow2_at_least(2 * n + 1)
    mask = size - 1
    slot_key = np.empty(size, np.int64)
    slot_id = np.full(size, -1, np.int64)
    ids = np.empty(n, np.int64)
    d = 0
    for i in range(n):
        key = keys[i]
        j = np.int64((np.uint64(key) * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(20)) & mask
        while True:
            if slot_id[j] < 0:
                slot_id[j] = d
                slot_key[j] = key
                ids[i] = d
                d += 1
                break
            if slot_key[j] == key:
                ids[i] = slot_id[j]
                break
            j = (j + 1) & mask
    return ids, d


@numba.njit(cache=True)
def _gram_ids(prev, d, wids, shift):
    """Ids of the n-grams that extend each (n-1)-gram id ``prev[w]`` by the word ``shift`` places
    on (keys ``prev[w] * d + wids[w + shift]``, exact in int64), in first-occurrence order."""
    n = len(wids) - shift
    keys = np.empty(n, np.int64)
    for w in range(n):
        keys[w] = prev[w] * d + wids[w + shift]
    return _key_ids(keys, n)


@numba.njit(cache=True)
def _top_gram(ids, n_ids, d, word_len, wids, total_chars, n):
    """rps_doc_frac_chars_top_{n}gram from the n-gram ids (first-occurrence order): the highest
    count, ties to the earliest; 0.0 when the top count is 1."""
    counts = np.zeros(d, np.int64)
    first = np.full(d, -1, np.int64)
    for i in range(n_ids):
        g = ids[i]
        counts[g] += 1
        if first[g] < 0:
            first[g] = i
    best, best_count = -1, 0
    for g in range(d):  # ids are in first-occurrence order, so the first maximum is the earliest
        if counts[g] > best_count:
            best, best_count = g, counts[g]
    if best_count <= 1:
        return 0.0
    at = first[best]
    chars = 0
    for k in range(n):
        chars += word_len[wids[at + k]]
    return _r8(chars * best_count / total_chars)


# ---------------------------------------------------------------------------------------------
# RPv2 signals

#: column order of the float output of rpv2_batch
RPV2_FLOAT = ("rps_doc_unigram_entropy", "rps_doc_frac_no_alph_words", "rps_lines_uppercase_letter_fraction",
              "rps_doc_mean_word_length", "rps_doc_frac_chars_top_2gram", "rps_doc_frac_chars_top_3gram",
              "rps_doc_num_sentences", "rps_lines_numerical_chars_fraction", "rps_doc_frac_unique_words",
              "rps_lines_ending_with_terminal_punctution_mark")


@numba.njit(cache=True)
def _rpv2_doc(cps, L, flags, ccc, nl_start, nl_len, nl_data, out, valid):
    """Signals of one document (code points cps[0:L]) into out[0:10] (RPV2_FLOAT order) and the
    word count; valid[k] False = null. Returns (word count, ok); ok False = take the Python path."""
    # ---- raw words (\w+|[^\w\s]+), sentences, raw lines, normalized words, in one pass
    n_raw = 0
    n_alpha = 0
    prev_cls = 2  # 0 word, 1 other, 2 space (the start behaves as a space)
    run_alpha = False
    # normalized word stream
    buf = np.empty(4 * L + 8, np.int32)  # NFD(c.lower()) is at most 4 code points
    nb = 0
    ws = 0  # start of the current word in buf
    w_num = 0  # numeric characters in the current word
    max_words = L + 1  # every word holds at least one raw character
    wstart = np.empty(max_words, np.int64)
    wlen = np.empty(max_words, np.int64)
    n_words = 0
    # lines
    line_len = 0
    line_upper = 0
    line_last = -1  # last non-space code point of the line
    line_words = 0
    line_wchars = 0
    line_num = 0
    n_lines = 0
    upper_sum = 0.0
    num_sum = 0.0
    term_sum = 0.0
    for i in range(L + 1):
        c = cps[i] if i < L else 10
        at_end = i == L
        if not at_end:
            f = flags[c]
            cls = 0 if f & WORD else (2 if f & SPACE else 1)
            if cls != 2 and cls != prev_cls:
                n_raw += 1
                if prev_cls == 0 and run_alpha:
                    n_alpha += 1
                run_alpha = False
            elif cls != prev_cls and prev_cls == 0 and run_alpha:
                n_alpha += 1
                run_alpha = False
            if cls == 0 and f & ASCII_ALPHA:
                run_alpha = True
            prev_cls = cls
            line_len += 1
            if f & UPPER:
                line_upper += 1
            if not f & SPACE:
                line_last = c
        elif prev_cls == 0 and run_alpha:
            n_alpha += 1
        # the normalized stream: ASCII punctuation deleted, NFD(lower(c)), split on spaces ('\n' is
        # one, so a line's words end with it; the end of the text ends the last word too)
        if at_end or not flags[c] & DELETE:
            m = 0 if at_end else nl_len[c]
            for k in range(m if m > 0 else 1):
                o = 32 if at_end else (nl_data[nl_start[c] + k] if m > 0 else c)
                if flags[o] & SPACE:
                    if nb > ws:
                        wstart[n_words] = ws
                        wlen[n_words] = nb - ws
                        n_words += 1
                        line_words += 1
                        line_wchars += nb - ws
                        line_num += w_num
                    ws = nb
                    w_num = 0
                    continue
                if flags[o] & NUMERIC:
                    w_num += 1
                cc = ccc[o]
                j = nb
                if cc > 0:  # canonical ordering: after marks of a higher class
                    while j > ws and ccc[buf[j - 1]] > cc:
                        buf[j] = buf[j - 1]
                        j -= 1
                buf[j] = o
                nb += 1
        if c == 10 or at_end:
            if line_len > 0:  # a line: up to and including '\n', or a final non-empty piece
                n_lines += 1
                upper_sum += _r8(line_upper / line_len)
                if line_last == 46 or line_last == 33 or line_last == 63 or line_last == 0x201D:
                    term_sum += 1.0
                if line_words > 0:
                    num_sum += _r8(line_num / (line_wchars + line_words - 1))
            line_len = 0
            line_upper = 0
            line_last = -1
            line_words = 0
            line_wchars = 0
            line_num = 0
    # ---- sentences: re.findall(r'\b[^.!?]+[.!?]*', text)
    n_sent = 0
    i = 0
    while i < L:
        c = cps[i]
        w_cur = (flags[c] & WORD) != 0
        w_prev = i > 0 and (flags[cps[i - 1]] & WORD) != 0
        if w_cur != w_prev and c != 46 and c != 33 and c != 63:
            n_sent += 1
            i += 1
            while i < L and cps[i] != 46 and cps[i] != 33 and cps[i] != 63:
                i += 1
            while i < L and (cps[i] == 46 or cps[i] == 33 or cps[i] == 63):
                i += 1
        else:
            i += 1
    out[6] = float(n_sent)
    valid[6] = True
    # ---- word ids (first-occurrence order, exact: equal hashes compare the code points)
    for k in range(10):
        if k != 6:
            valid[k] = False
    if n_raw:
        out[1] = _r8(1.0 - n_alpha / n_raw)
        valid[1] = True
    if n_lines:
        out[2] = upper_sum / n_lines
        out[7] = num_sum / n_lines
        out[9] = term_sum / n_lines
        valid[2] = valid[7] = valid[9] = True
    out[4] = 0.0
    out[5] = 0.0
    valid[4] = valid[5] = True
    if n_words == 0:
        return 0, True
    size = _pow2_at_least(2 * n_words + 1)
    slots = np.full(size, -1, np.int64)
    hashes = np.empty(n_words, np.uint64)
    starts = np.empty(n_words, np.int64)
    lens = np.empty(n_words, np.int64)
    wids = np.empty(n_words, np.int64)
    d = 0
    total_chars = 0
    for w in range(n_words):
        s, n = wstart[w], wlen[w]
        total_chars += n
        k, new = _intern(buf, s, n, _seq_hash(buf, s, n), slots, hashes, starts, lens, d)
        if new:
            d += 1
        wids[w] = k
    if total_chars / n_words >= 1e7:
        return n_words, False
    counts = np.zeros(d, np.int64)
    for w in range(n_words):
        counts[wids[w]] += 1
    ent = 0.0
    for k in range(d):
        p = counts[k] / n_words
        ent += -p * np.log(p)
    out[0] = _r8(ent)
    out[3] = _r8(total_chars / n_words)
    out[8] = _r8(d / n_words)
    valid[0] = valid[3] = valid[8] = True
    word_len = lens[:d]
    if n_words >= 2:
        bi, nbi = _gram_ids(wids, d, wids, 1)
        out[4] = _top_gram(bi, n_words - 1, nbi, word_len, wids, total_chars, 2)
        if n_words >= 3:
            tri, ntri = _gram_ids(bi, d, wids, 2)
            out[5] = _top_gram(tri, n_words - 2, ntri, word_len, wids, total_chars, 3)
    return n_words, True


@numba.njit(cache=True)
def _rpv2_batch(data, offsets, flags, ccc, nl_start, nl_len, nl_data):
    n = len(offsets) - 1
    out = np.zeros((n, 10), np.float64)
    valid = np.zeros((n, 10), np.bool_)
    wc = np.zeros(n, np.int64)
    ok = np.ones(n, np.bool_)
    cps = np.empty(1024, np.int32)
    for d in range(n):
        a, b = offsets[d], offsets[d + 1]
        if b - a > len(cps):
            cps = np.empty(2 * (b - a), np.int32)
        L = 0
        i = a
        while i < b:
            c, i = _decode(data, i)
            cps[L] = c
            L += 1
        wc[d], ok[d] = _rpv2_doc(cps, L, flags, ccc, nl_start, nl_len, nl_data, out[d], valid[d])
    return out, valid, wc, ok


def rpv2_batch(texts) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(floats (n, 10) in RPV2_FLOAT order, valid (n, 10), word counts (n,), ok (n,)) of a batch;
    ok False marks the documents the caller must compute with the Python code."""
    t = tables()
    data, offsets = utf8_buffers(texts)
    return _rpv2_batch(data, offsets, t.flags, t.ccc, t.nl_start, t.nl_len, t.nl_data)


# ---------------------------------------------------------------------------------------------
# DSIR: xxh3-64 of each lower-cased \w+|[^\w\s]+ token (XXH3_64bits, seed 0, the default secret:
# what xxhash.xxh3_64_intdigest computes), then the documents' unigram and bigram buckets

_U = np.uint64
_P32_1, _P32_2, _P32_3 = _U(0x9E3779B1), _U(0x85EBCA77), _U(0xC2B2AE3D)
_P64_1, _P64_2, _P64_3 = _U(0x9E3779B185EBCA87), _U(0xC2B2AE3D27D4EB4F), _U(0x165667B19E3779F9)
_P64_4, _P64_5 = _U(0x85EBCA77C2B2AE63), _U(0x27D4EB2F165667C5)
_MX1, _MX2 = _U(0x165667919E3779F9), _U(0x9FB21C651E98DF25)
_M32 = _U(0xFFFFFFFF)
_SECRET = np.frombuffer(bytes.fromhex(
    "b8fe6c3923a44bbe7c01812cf721ad1cded46de9839097db7240a4a4b7b3671f"
    "cb79e64eccc0e578825ad07dccff7221b8084674f743248ee03590e6813a264c"
    "3c2852bb91c300cb88d0658b1b532ea371644897a20df94e3819ef46a9deacd8"
    "a8fa763fe39c343ff9dcbbc7c70b4f1d8a51e04bcdb45931c89f7ec9d9787364"
    "eac5ac8334d3ebc3c581a0fffa1363eb170ddd51b7f0da49d316552629d4689e"
    "2b16be587d47a1fc8ff8b8d17ad031ce45cb3a8f95160428afd7fbcabb4b407e"), np.uint8)


@numba.njit(cache=True, inline="always")
def _read_le(b, p, n):
    """The n-byte little-endian unsigned integer at b[p]."""
    v = _U(0)
    for k in range(n):
        v |= _U(b[p + k]) << _U(8 * k)
    return v


@numba.njit(cache=True, inline="always")
def _r64(b, p):
    return _read_le(b, p, 8)


@numba.njit(cache=True, inline="always")
def _r32(b, p):
    return _read_le(b, p, 4)


@numba.njit(cache=True, inline="always")
def _rotl(x, r):
    return (x << _U(r)) | (x >> _U(64 - r))


@numba.njit(cache=True, inline="always")
def _swap64(x):
    v = _U(0)
    for k in range(8):
        v = (v << _U(8)) | ((x >> _U(8 * k)) & _U(0xFF))
    return v


@numba.njit(cache=True, inline="always")
def _fold(a, b):
    """The 128-bit product of a and b, its halves xor-ed (XXH3_mul128_fold64)."""
    a_lo, a_hi, b_lo, b_hi = a & _M32, a >> _U(32), b & _M32, b >> _U(32)
    lo_lo, hi_lo, lo_hi, hi_hi = a_lo * b_lo, a_hi * b_lo, a_lo * b_hi, a_hi * b_hi
    cross = (lo_lo >> _U(32)) + (hi_lo & _M32) + lo_hi
    upper = (hi_lo >> _U(32)) + (cross >> _U(32)) + hi_hi
    lower = (cross << _U(32)) | (lo_lo & _M32)
    return lower ^ upper


@numba.njit(cache=True, inline="always")
def _aval3(h):
    h ^= h >> _U(37)
    h *= _MX1
    return h ^ (h >> _U(32))


@numba.njit(cache=True, inline="always")
def _aval64(h):
    h ^= h >> _U(33)
    h *= _P64_2
    h ^= h >> _U(29)
    h *= _P64_3
    return h ^ (h >> _U(32))


@numba.njit(cache=True, inline="always")
def _mix16(b, p, s, q):
    return _fold(_r64(b, p) ^ _r64(s, q), _r64(b, p + 8) ^ _r64(s, q + 8))


@numba.njit(cache=True, inline="always")
def _acc512(acc, b, p, s, q):
    for lane in range(8):
        v = _r64(b, p + 8 * lane)
        key = v ^ _r64(s, q + 8 * lane)
        acc[lane ^ 1] += v
        acc[lane] += (key & _M32) * (key >> _U(32))


@numba.njit(cache=True)
def _xxh3_long(b, p, n, s):
    acc = np.empty(8, np.uint64)
    acc[0], acc[1], acc[2], acc[3] = _P32_3, _P64_1, _P64_2, _P64_3
    acc[4], acc[5], acc[6], acc[7] = _P64_4, _P32_2, _P64_5, _P32_1
    stripes_per_block = (192 - 64) // 8
    block = 64 * stripes_per_block
    n_blocks = (n - 1) // block
    for blk in range(n_blocks):
        for st in range(stripes_per_block):
            _acc512(acc, b, p + blk * block + st * 64, s, st * 8)
        for lane in range(8):  # scramble
            a = acc[lane]
            a ^= a >> _U(47)
            a ^= _r64(s, 192 - 64 + 8 * lane)
            acc[lane] = a * _P32_1
    for st in range(((n - 1) - block * n_blocks) // 64):
        _acc512(acc, b, p + n_blocks * block + st * 64, s, st * 8)
    _acc512(acc, b, p + n - 64, s, 192 - 64 - 7)
    r = _U(n) * _P64_1
    for i in range(4):
        r += _fold(acc[2 * i] ^ _r64(s, 11 + 16 * i), acc[2 * i + 1] ^ _r64(s, 11 + 16 * i + 8))
    return _aval3(r)


@numba.njit(cache=True)
def xxh3_64(b, p, n, s):
    """XXH3_64bits of b[p:p+n] (seed 0, secret s = the default secret)."""
    if n <= 16:
        if n > 8:
            lo = _r64(b, p) ^ (_r64(s, 24) ^ _r64(s, 32))
            hi = _r64(b, p + n - 8) ^ (_r64(s, 40) ^ _r64(s, 48))
            return _aval3(_U(n) + _swap64(lo) + hi + _fold(lo, hi))
        if n >= 4:
            h = (_r32(b, p + n - 4) + (_r32(b, p) << _U(32))) ^ (_r64(s, 8) ^ _r64(s, 16))
            h ^= _rotl(h, 49) ^ _rotl(h, 24)
            h *= _MX2
            h ^= (h >> _U(35)) + _U(n)
            h *= _MX2
            return h ^ (h >> _U(28))
        if n > 0:
            combined = ((_U(b[p]) << _U(16)) | (_U(b[p + (n >> 1)]) << _U(24)) | _U(b[p + n - 1])
                        | (_U(n) << _U(8)))
            return _aval64(combined ^ (_r32(s, 0) ^ _r32(s, 4)))
        return _aval64(_r64(s, 56) ^ _r64(s, 64))
    if n <= 128:
        acc = _U(n) * _P64_1
        if n > 32:
            if n > 64:
                if n > 96:
                    acc += _mix16(b, p + 48, s, 96)
                    acc += _mix16(b, p + n - 64, s, 112)
                acc += _mix16(b, p + 32, s, 64)
                acc += _mix16(b, p + n - 48, s, 80)
            acc += _mix16(b, p + 16, s, 32)
            acc += _mix16(b, p + n - 32, s, 48)
        acc += _mix16(b, p, s, 0)
        acc += _mix16(b, p + n - 16, s, 16)
        return _aval3(acc)
    if n <= 240:
        acc = _U(n) * _P64_1
        for i in range(8):
            acc += _mix16(b, p + 16 * i, s, 16 * i)
        acc_end = _mix16(b, p + n - 16, s, 136 - 17)
        acc = _aval3(acc)
        for i in range(8, n // 16):
            acc_end += _mix16(b, p + 16 * i, s, 16 * (i - 8) + 3)
        return _aval3(acc + acc_end)
    return _xxh3_long(b, p, n, s)


@numba.njit(cache=True, inline="always")
def _put_utf8(out, p, c):
    if c < 0x80:
        out[p] = c
        return p + 1
    if c < 0x800:
        out[p] = 0xC0 | (c >> 6)
        out[p + 1] = 0x80 | (c & 0x3F)
        return p + 2
    if c < 0x10000:
        out[p] = 0xE0 | (c >> 12)
        out[p + 1] = 0x80 | ((c >> 6) & 0x3F)
        out[p + 2] = 0x80 | (c & 0x3F)
        return p + 3
    out[p] = 0xF0 | (c >> 18)
    out[p + 1] = 0x80 | ((c >> 12) & 0x3F)
    out[p + 2] = 0x80 | ((c >> 6) & 0x3F)
    out[p + 3] = 0x80 | (c & 0x3F)
    return p + 4


@numba.njit(cache=True)
def _grow(a, n):
    b = np.empty(max(n, 2 * len(a)), a.dtype)
    b[: len(a)] = a
    return b


@numba.njit(cache=True)
def _dsir_hashes(data, offsets, lowered, flags, lo_start, lo_len, lo_data, secret):
    """xxh3-64 of every token of every document (its lower-cased UTF-8), and per-document token
    offsets. Documents flagged in ``lowered`` are already lower-cased."""
    n = len(offsets) - 1
    hashes = np.empty(max(16, (offsets[n] - offsets[0]) // 3), np.uint64)
    n_tok = 0
    doc_off = np.zeros(n + 1, np.int64)
    tb = np.empty(256, np.uint8)  # the current token's bytes
    for doc in range(n):
        i, b = offsets[doc], offsets[doc + 1]
        prev = 2
        nt = 0
        while True:
            m = 0
            c = -1
            if i < b:
                c, i = _decode(data, i)
                if not lowered[doc]:
                    m = lo_len[c]
            for k in range(m if m > 0 else 1):
                if c < 0:
                    cls = 2
                    o = 0
                else:
                    o = lo_data[lo_start[c] + k] if m > 0 else c
                    fo = flags[o]
                    cls = 0 if fo & WORD else (2 if fo & SPACE else 1)
                if cls != prev and nt > 0:  # a token ends
                    if n_tok >= len(hashes):
                        hashes = _grow(hashes, n_tok + 1)
                    hashes[n_tok] = xxh3_64(tb, 0, nt, secret)
                    n_tok += 1
                    nt = 0
                if cls != 2:
                    if nt + 4 > len(tb):
                        tb = _grow(tb, nt + 4)
                    nt = _put_utf8(tb, nt, o)
                prev = cls
            if c < 0:
                break
        doc_off[doc + 1] = n_tok
    return hashes[:n_tok], doc_off


@numba.njit(cache=True)
def _features(tok_hash, doc_off, buckets, mix):
    """Per document: its unigram buckets then its bigram buckets (the order dsir.doc_buckets has
    always used, so float sums over them keep their bits); per-document feature offsets."""
    n = len(doc_off) - 1
    feat_off = np.zeros(n + 1, np.int64)
    for doc in range(n):
        t = doc_off[doc + 1] - doc_off[doc]
        feat_off[doc + 1] = feat_off[doc] + (2 * t - 1 if t > 0 else 0)
    flat = np.empty(feat_off[n], np.int32)
    nb = _U(buckets)
    for doc in range(n):
        a, b = doc_off[doc], doc_off[doc + 1]
        p = feat_off[doc]
        for i in range(a, b):
            flat[p] = np.int32(tok_hash[i] % nb)
            p += 1
        for i in range(a, b - 1):
            flat[p] = np.int32((tok_hash[i] * mix + tok_hash[i + 1]) % nb)
            p += 1
    return flat, feat_off


def dsir_buckets(texts, buckets: int, mix: np.uint64) -> tuple[np.ndarray, np.ndarray]:
    """(bucket ids, per-document offsets) of the lower-cased ``\\w+|[^\\w\\s]+`` tokens of a batch:
    per document its unigrams, then its bigrams (``h[i] * mix + h[i + 1]``). Documents holding a
    capital sigma are lowered by ``str.lower`` (its final-sigma rule) before the kernel."""
    col = text_column(texts)
    sigma = sigma_documents(col)
    if sigma.any():
        col = pa.array([t.lower() if s else t for t, s in zip(col.to_pylist(), sigma)], pa.large_string())
    data, offsets = utf8_buffers(col)
    t = tables()
    h, doc_off = _dsir_hashes(data, offsets, sigma, t.flags, t.lo_start, t.lo_len, t.lo_data, _SECRET)
    return _features(h, doc_off, buckets, mix)


def warm() -> None:
    """Compile both kernels now (numba caches them beside this module, in ``__pycache__``) and build
    the character tables: ``make`` calls this after installing, so the first run, or the first
    tests of two workers at once, do not each spend a minute compiling."""
    rpv2_batch(["Warm up. One line!\nAnother, 2 numbers: 3."])
    dsir_buckets(["warm up the dsir kernel"], 10, np.uint64(3))
