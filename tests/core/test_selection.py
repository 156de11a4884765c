import numpy as np
import pytest

from metarater_assets.core import selection


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
