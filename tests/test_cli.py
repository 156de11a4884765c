import json
import subprocess
import sys

import pyarrow.parquet as pq

from metarater_assets.cli import main
from metarater_assets.core.signals import SIGNAL_NAMES
from conftest import SAMPLE


def test_score_command_writes_all_scores(env_home, tmp_path, capsys):
    out = tmp_path / "scores.parquet"
    rc = main(["score", "--raters", "rpv2,dsir", "--in", str(SAMPLE / "raw" / "shard-0004.jsonl"),
               "--out", str(out)])
    assert rc == 0
    t = pq.read_table(out)
    assert t.num_rows == 400
    assert t.column_names == ["doc_id", *SIGNAL_NAMES, "dsir_books", "dsir_wiki", "dsir_math"]
    assert "scored 400 docs" in capsys.readouterr().out


def test_score_command_rejects_unknown_rater(env_home, tmp_path, capsys):
    rc = main(["score", "--raters", "nope", "--in", str(SAMPLE / "raw" / "shard-0004.jsonl"),
               "--out", str(tmp_path / "x.parquet")])
    assert rc == 2 and "unknown rater" in capsys.readouterr().err


def test_bad_config_is_a_clear_error_not_a_traceback(env_home, tmp_path, monkeypatch):
    bad = tmp_path / "bad.yaml"
    bad.write_text("raters: [rpv2, telepathy]\n")
    monkeypatch.setenv("METARATER_CONFIG", str(bad))
    out = subprocess.run([sys.executable, "-m", "metarater_assets.cli", "run", "--stage", "ingest"],
                         capture_output=True, text=True)
    assert out.returncode == 2
    assert "unknown rater(s) ['telepathy']" in out.stderr and "Traceback" not in out.stderr


def test_report_json_after_ingest(env_home, capsys):
    assert main(["run", "--stage", "ingest"]) == 0
    capsys.readouterr()
    assert main(["report", "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["ingest"]["shards"] == 2 and rep["ingest"]["rows_ok"] == 300
