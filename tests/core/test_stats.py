"""The paired comparison behind the evaluation's verdicts."""
import numpy as np
import pytest

from metarater_assets.core.stats import paired_comparison


def test_paired_differences_cancel_the_noise_shared_by_a_seed():
    # every seed moves both arms together by a lot (0.0, 0.5, 1.0); curated is always 0.1 better,
    # give or take 0.01: unpaired the arms overlap, paired the difference is clear
    shift = np.array([0.0, 0.5, 1.0])
    cur = 5.0 + shift
    rnd = 5.0 + shift + np.array([0.09, 0.10, 0.11])
    c = paired_comparison(cur, rnd, n_boot=2000)
    assert c["diffs"] == pytest.approx([0.09, 0.10, 0.11])
    assert c["mean"] == pytest.approx(0.10)
    assert c["sd"] == pytest.approx(0.01)  # sample SD of 0.09, 0.10, 0.11
    assert c["in_sds"] == pytest.approx(10.0)
    assert 0.09 - 1e-9 <= c["ci"][0] < 0.10 < c["ci"][1] <= 0.11 + 1e-9
    assert c["verdict"] == "better"
    # the same numbers the other way round: worse
    assert paired_comparison(rnd, cur, n_boot=2000)["verdict"] == "worse"


def test_no_difference_when_the_sign_changes_or_one_seed():
    c = paired_comparison([1.0, 1.0, 1.0], [1.1, 0.9, 1.05], n_boot=2000)
    assert c["mean"] == pytest.approx(0.05 / 3)
    assert c["ci"][0] < 0 < c["ci"][1]
    assert c["verdict"] == "no difference shown"
    one = paired_comparison([1.0], [2.0])
    assert one["verdict"] == "no difference shown" and one["seeds"] == 1
    with pytest.raises(ValueError, match="one loss per seed"):
        paired_comparison([1.0, 2.0], [1.0])


def test_a_mean_under_two_sds_is_not_a_win():
    # differences 0.1, 0.3, -0.05: mean 0.1167, SD 0.1756 -> 0.66 SD
    c = paired_comparison([0.0, 0.0, 0.0], [0.1, 0.3, -0.05], n_boot=2000)
    assert c["in_sds"] == pytest.approx(0.11667 / 0.17559, rel=1e-3)
    assert c["verdict"] == "no difference shown"
