"""An incremental run equals a fresh run: one seeded sequence covering every kind of operation
(add, modify and remove a raw file, a config change, kill -9 mid-run), each step compared with a
fresh home (tests/harness/differential.py; `make differential` runs many more sequences)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "harness"))

import differential  # noqa: E402


def test_every_kind_of_operation_then_a_run_equals_a_fresh_run(tmp_path):
    steps: list[str] = []
    problems = differential.run_sequence(tmp_path / "seq", seed=7, steps=0,
                                         ops=["add", "kill", "modify", "config", "remove"],
                                         log=steps.append, max_kill_delay=8.0, plain_checks=1)
    assert not problems, "\n".join(problems)
    assert len(steps) == 5, steps  # every step ran and was compared


def test_the_comparison_sees_a_difference(tmp_path):
    """The harness is not blind: two homes with different curation fractions differ."""
    a = {"curated_files": {"x.parquet": {"rows": 3}}, "regressor": {"best": "ridge"}}
    b = {"curated_files": {"x.parquet": {"rows": 4}}, "regressor": {"best": "ridge"}}
    assert differential.differences(a, b) == ["/curated_files/x.parquet/rows: incremental 3 != fresh 4"]
    assert differential.differences(a, a) == []
