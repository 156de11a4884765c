"""Tier 2's choice of vectors (confirm.choose): the predicted optimum, the single-score vectors (all
of them, or the N best by tier-1 loss) and a spread over tier 1's Dirichlet runs."""
import pytest

from metarater_assets.confirm import choose
from metarater_assets.core.config import parse_config
from conftest import REPO, write_config

NAMES = ["a", "b", "c"]


def _results():
    """Tier-1 results: three single-score runs (c best, then a, then b) and five Dirichlet runs."""
    res = {}
    for score, loss in (("a", 5.2), ("b", 5.9), ("c", 5.1)):
        res[f"w-single-{score}"] = {"kind": "single", "score": score, "target_loss": loss,
                                    "weights": {n: float(n == score) for n in NAMES}}
    for i, loss in enumerate([5.5, 5.0, 6.0, 5.3, 5.7]):
        res[f"w-d{i}"] = {"kind": "dirichlet", "target_loss": loss,
                          "weights": {"a": 0.2 + 0.1 * i, "b": 0.3, "c": 0.5 - 0.1 * i}}
    return res


def _cfg(tmp_path, **confirm):
    path = write_config(tmp_path / "config.yaml")
    import yaml

    raw = yaml.safe_load(path.read_text())
    raw["confirm"] = {"kind": "transformer", "preset": "test", **confirm}
    return parse_config(raw, str(REPO / "configs"))


OPTIMAL = {"names": NAMES, "weights": {"a": 0.5, "b": 0.1, "c": 0.4}}


@pytest.mark.parametrize("ssr,expected", [(True, ["a", "b", "c"]), (2, ["a", "c"]), (1, ["c"]), (False, [])])
def test_single_score_runs_all_the_best_n_or_none(tmp_path, ssr, expected):
    runs = choose(_cfg(tmp_path, spread=0, single_score_runs=ssr), OPTIMAL, _results())
    assert [r["kind"] for r in runs] == ["optimum"] + ["single"] * len(expected)
    assert [r["score"] for r in runs if r["kind"] == "single"] == expected
    assert runs[0]["weights"] == [0.5, 0.1, 0.4]
    for r in runs[1:]:  # a single-score vector puts all its weight on its score
        assert r["weights"] == [float(n == r["score"]) for n in NAMES]


def test_spread_takes_the_ends_of_tier_one_and_keys_are_distinct(tmp_path):
    runs = choose(_cfg(tmp_path, spread=3, single_score_runs=False), OPTIMAL, _results())
    spread = [r["tier1"] for r in runs if r["kind"] == "spread"]
    # sorted by loss: d1 5.0, d3 5.3, d0 5.5, d4 5.7, d2 6.0 -> the lowest, the middle, the highest
    assert spread == ["w-d1", "w-d0", "w-d2"]
    assert len({r["key"] for r in runs}) == len(runs)
