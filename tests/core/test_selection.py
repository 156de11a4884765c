import numpy as np
import pytest

from metarater_assets.core import selection


def test_global_threshold_fraction_of_docs_and_tokens():
    comb = np.array([0.1, 0.9, 0.5, 0.5, 0.3])
    tokens = np.array([10, 10, 40, 30, 10])
    s = selection.select_top(comb, tokens, fraction=0.4, by="docs")
    assert s.mask.tolist() == [False, True, True, False, False]  # tie at 0.5 -> pool order
    assert s.threshold == 0.5 and s.docs == 2
    t = selection.select_top(comb, tokens, fraction=0.5, by="tokens")  # 50 of 100 tokens
    assert t.mask.tolist() == [False, True, True, False, False] and t.tokens == 50
    b = selection.select_top(comb, tokens, token_budget=51)
    assert b.docs == 3 and b.tokens == 80


@pytest.mark.parametrize("f", [0, -0.1, 1.5, None])
def test_bad_fraction(f):
    with pytest.raises(ValueError, match="fraction"):
        selection.select_top(np.ones(3), np.ones(3), fraction=f)


def test_normalise_scales_to_0_5_and_handles_constant_and_nulls():
    cols = {"a": np.array([1.0, 2.0, 3.0]), "b": np.array([4.0, 4.0, 4.0]),
            "c": np.array([np.nan, 0.0, 10.0])}
    m = selection.normalise(cols, selection.minmax_stats(cols), ["a", "b", "c"])
    np.testing.assert_allclose(m[:, 0], [0, 2.5, 5])
    np.testing.assert_allclose(m[:, 1], [0, 0, 0])
    np.testing.assert_allclose(m[:, 2], [0, 0, 5])


def test_weights_key_is_stable_and_distinct():
    k1 = selection.weights_key(["a", "b"], [0.25, 0.75], 0)
    assert k1 == selection.weights_key(["a", "b"], [0.25, 0.75], 0)
    assert k1 != selection.weights_key(["a", "b"], [0.25, 0.75], 1)
    assert k1 != selection.weights_key(["a", "b"], [0.75, 0.25], 0)


def test_dirichlet_is_seeded_and_on_simplex():
    w = selection.sample_weights(5, 4, seed=3)
    np.testing.assert_array_equal(w, selection.sample_weights(5, 4, seed=3))
    np.testing.assert_allclose(w.sum(1), 1.0)
    with pytest.raises(ValueError):
        selection.sample_weights(0, 4, seed=3)


def test_user_weights_validation():
    assert selection.validate_weights({"a": 0.5, "b": 0.5}, ["a", "b"]).tolist() == [0.5, 0.5]
    with pytest.raises(ValueError, match="sum to 1"):
        selection.validate_weights({"a": 0.5, "b": 0.6}, ["a", "b"])
    with pytest.raises(ValueError, match="unknown scores"):
        selection.validate_weights({"zzz": 1.0}, ["a", "b"])
