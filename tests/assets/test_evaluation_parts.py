"""The evaluation's loss curves are measured on the sets the target is made of."""
from metarater_assets.evaluation import target_sets


def test_target_sets_follow_the_target():
    sets = ["validation", "reference", "code"]
    assert target_sets("mean", sets) == sets
    assert target_sets("reference", sets) == ["reference"]
    assert target_sets("reference+code", sets) == ["reference", "code"]  # the quality sets (roles)
