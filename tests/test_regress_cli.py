"""`metarater regress`: the regressor and the optimal weights from proxy runs made elsewhere."""
import json

import numpy as np
import pandas as pd
import pytest

from metarater_assets.cli import main

DOMAINS = ["web", "code", "books", "wiki"]
OPTIMUM = np.array([0.5, 0.3, 0.2, 0.0])  # the loss surface's minimum, on the simplex's edge


def _runs(n, seed):
    """Runs with weights from a Dirichlet and losses from a known bowl around OPTIMUM (plus small
    noise): two validation sets, the second 0.2 nats above the first."""
    rng = np.random.default_rng(seed)
    W = rng.dirichlet(np.ones(len(DOMAINS)), size=n)
    base = 3.0 + 4.0 * ((W - OPTIMUM) ** 2).sum(axis=1) + rng.normal(0, 0.003, n)
    idx = np.arange(n) + 1000 * seed
    weights = pd.DataFrame({"index": idx, **{d: W[:, i] for i, d in enumerate(DOMAINS)}})
    losses = pd.DataFrame({"index": idx[::-1], "metric/a_val_loss": base[::-1], "metric/b_val_loss": base[::-1] + 0.2})
    return weights, losses


def test_regress_finds_the_known_optimum_from_regmix_style_tables(tmp_path, capsys):
    w, l = _runs(96, 1)
    wt, lt = _runs(30, 2)
    w.to_csv(tmp_path / "w.csv", index=False)
    l.to_parquet(tmp_path / "l.parquet")  # the two tables in different formats, rows in different orders
    wt.to_csv(tmp_path / "wt.csv", index=False)
    lt.to_csv(tmp_path / "lt.csv", index=False)
    rc = main(["regress", "--weights", str(tmp_path / "w.csv"), "--losses", str(tmp_path / "l.parquet"),
               "--on", "index", "--target", "metric/a_val_loss,metric/b_val_loss", "--test-weights",
               str(tmp_path / "wt.csv"), "--test-losses", str(tmp_path / "lt.csv"), "--candidates", "20000",
               "--models", "linear,quadratic", "--json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert out["runs"] == 96 and out["test_runs"] == 30 and out["heldout_runs"] == 19
    assert set(out["cv"]) == {"linear", "quadratic"}
    assert out["best"] == "quadratic"  # the bowl is quadratic: a linear model cannot bend to it
    assert out["heldout_spearman"] > 0.9 and out["test_spearman"] > 0.9
    w_opt = np.array([out["weights"][d] for d in DOMAINS])
    assert np.abs(w_opt - OPTIMUM).sum() < 0.15, out["weights"]
    # the mean of the two targets: the bowl's floor 3.0 plus half of the 0.2 offset
    assert out["predicted_loss"] == pytest.approx(3.1, abs=0.03)


def test_regress_reads_one_table_and_prints_a_summary(tmp_path, capsys):
    w, l = _runs(40, 3)
    one = w.merge(l, on="index").drop(columns="metric/b_val_loss")
    one.to_parquet(tmp_path / "runs.parquet")
    rc = main(["regress", "--weights", str(tmp_path / "runs.parquet"), "--target", "metric/a_val_loss",
               "--candidates", "5000", "--models", "ridge,quadratic"])
    text = capsys.readouterr().out
    assert rc == 0
    assert "40 runs, 4 weights" in text  # index and the loss column are not weights
    assert "held-out Spearman" in text and "optimal weights" in text
    for d in DOMAINS:
        assert d in text


def test_regress_names_what_is_wrong(tmp_path, capsys):
    w, l = _runs(20, 4)
    w.to_csv(tmp_path / "w.csv", index=False)
    l.to_csv(tmp_path / "l.csv", index=False)
    assert main(["regress", "--weights", str(tmp_path / "w.csv"), "--losses", str(tmp_path / "l.csv"),
                 "--target", "metric/a_val_loss"]) == 2
    assert "--on KEY" in capsys.readouterr().err
    assert main(["regress", "--weights", str(tmp_path / "w.csv"), "--losses", str(tmp_path / "l.csv"),
                 "--on", "index", "--target", "val_loss"]) == 2
    err = capsys.readouterr().err
    assert "no target column(s) 'val_loss'" in err and "metric/a_val_loss" in err
    (tmp_path / "w.txt").write_text("x")
    assert main(["regress", "--weights", str(tmp_path / "w.txt"), "--target", "a"]) == 2
    assert "unknown table format" in capsys.readouterr().err
