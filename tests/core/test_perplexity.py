"""The perplexity rater's bigram model, against a plain dictionary implementation of the formula
in core/perplexity.py (word strings, no hashing), and on real text with its words shuffled."""
import math
import random
import re
from collections import Counter

import numpy as np
import pytest

from metarater_assets.core import corpus
from metarater_assets.core.perplexity import BigramModel

from conftest import SAMPLE

TOKEN = re.compile(r"\w+|[^\w\s]+")


def reference_nll(train: list[str], docs: list[str], buckets: int, D: float) -> list[float]:
    """Mean negative log-likelihood per token, from word strings (buckets only in the add-one
    denominator, as the hashed model's vocabulary size)."""
    uni, ctx, bi, followers = Counter(), Counter(), Counter(), Counter()
    for t in train:
        w = [x.lower() for x in TOKEN.findall(t)]
        uni.update(w)
        ctx.update(w[:-1])
        bi.update(zip(w[:-1], w[1:]))
    for (a, _b) in bi:
        followers[a] += 1
    total = sum(uni.values())

    def p_uni(x):
        return (uni[x] + 1) / (total + buckets)

    out = []
    for d in docs:
        w = [x.lower() for x in TOKEN.findall(d)]
        if not w:
            out.append(float("nan"))
            continue
        lp = math.log(p_uni(w[0]))
        for a, b in zip(w[:-1], w[1:]):
            if ctx[a]:
                lp += math.log(max(bi[(a, b)] - D, 0) / ctx[a] + D * followers[a] / ctx[a] * p_uni(b))
            else:
                lp += math.log(p_uni(b))
        out.append(-lp / len(w))
    return out


def _texts(n: int) -> list[str]:
    return corpus.read_documents(str(SAMPLE / "targets" / "wiki.jsonl.gz")).column("text").to_pylist()[:n]


def _no_collisions(texts: list[str], buckets: int) -> bool:
    """Every distinct word and bigram of ``texts`` in a bucket of its own (the hashed model is then
    exactly the word model)."""
    from metarater_assets.core import dsir

    words = sorted({x for t in texts for x in TOKEN.findall(t.lower())})
    pairs = sorted({p for t in texts for p in zip(TOKEN.findall(t.lower())[:-1], TOKEN.findall(t.lower())[1:])})
    flat, _ = dsir.doc_buckets(words, buckets)  # one word per document: its unigram bucket
    bflat, boff = dsir.doc_buckets([f"{a} {b}" for a, b in pairs], buckets)
    bis = [bflat[boff[i + 1] - 1] for i in range(len(pairs))]  # the last feature: the bigram
    return len(set(flat.tolist())) == len(words) and len(set(bis)) == len(pairs)


def test_the_model_equals_the_formula_on_words():
    train = _texts(10)
    docs = _texts(20)[10:] + ["", "  \n ", "Unseen zyzzyva words only!", "the the the", train[0]]
    assert _no_collisions(train + docs, 1 << 22)
    m = BigramModel.fit([train[:4], train[4:]], buckets=1 << 22, discount=0.6)  # two batches add up
    got = m.score(docs)
    want = reference_nll(train, docs, 1 << 22, 0.6)
    assert np.isnan(got[10]) and np.isnan(got[11])  # no token: null
    np.testing.assert_allclose(np.nan_to_num(got, nan=-1), np.nan_to_num(want, nan=-1), rtol=1e-12)
    # a training document is far more likely than unseen words
    assert got[-1] < got[-3] - 3


def test_a_document_scores_the_same_in_any_batch():
    train, docs = _texts(30), _texts(80)[30:]
    m = BigramModel.fit([train], buckets=1 << 16)
    whole = m.score(docs)
    parts = np.concatenate([m.score(docs[i:i + 7]) for i in range(0, len(docs), 7)])
    assert np.array_equal(whole, parts)


def test_shuffled_words_score_worse_than_the_same_text_in_order():
    train = corpus.read_documents(str(SAMPLE / "reference.jsonl.gz")).column("text").to_pylist()
    docs = [t for t in _texts(120) if len(t.split()) > 50][:40]
    rng = random.Random(0)
    salad = []
    for t in docs:
        lines = []
        for line in t.split("\n"):
            w = line.split()
            rng.shuffle(w)
            lines.append(" ".join(w))
        salad.append("\n".join(lines))
    m = BigramModel.fit([train])
    clean, mixed = m.score(docs), m.score(salad)
    assert (mixed > clean).mean() >= 0.95
    assert np.median(mixed - clean) > 0.5


def test_bad_discount_is_refused():
    with pytest.raises(ValueError, match="discount"):
        BigramModel.fit([["a b"]], discount=1.0)
