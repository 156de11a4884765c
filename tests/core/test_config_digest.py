"""Each asset's code version carries a digest of the configuration that shapes it: files named by
the config (validation sets, DSIR targets, a local tokenizer) enter by content, not by path, and
the curated corpus's publication place is part of its version."""
import gzip
import shutil

import pytest

from conftest import SAMPLE, read_jsonl_lines, write_config
from metarater_assets.core.config import load_config
from metarater_assets.defs import all_assets


def _versions(path) -> dict[str, str]:
    assets = all_assets(load_config(str(path)))
    return {spec.key.to_user_string(): spec.code_version for a in assets for spec in a.specs}


def _append_line(path, line: str) -> None:
    """Edit a .jsonl.gz in place: one more document (a second gzip member, read as one stream)."""
    with gzip.open(path, "at", encoding="utf-8") as f:
        f.write(line if line.endswith("\n") else line + "\n")


@pytest.fixture
def copies(tmp_path):
    """Copies of the validation sets and DSIR targets in tmp_path, and a config naming them."""
    data = tmp_path / "data"
    data.mkdir()
    files = {name: data / f"{name}.jsonl.gz" for name in ("validation", "reference", "books", "wiki", "math")}
    for name, dest in files.items():
        folder = SAMPLE / "targets" if name in ("books", "wiki", "math") else SAMPLE
        shutil.copy(folder / f"{name}.jsonl.gz", dest)

    def config(name: str = "config.yaml", **over):
        over.setdefault("validation", {}).setdefault("sets", {"validation": str(files["validation"]),
                                                             "reference": str(files["reference"])})
        over.setdefault("dsir", {}).setdefault("targets", {t: str(files[t]) for t in ("books", "wiki", "math")})
        return write_config(tmp_path / name, **over)

    return files, config


def test_editing_a_validation_set_in_place_stales_what_is_measured_on_it(copies):
    files, config = copies
    path = config()
    before = _versions(path)
    assert before == _versions(path)  # the digest is stable
    extra = read_jsonl_lines(SAMPLE / "reference.jsonl.gz")[-1]
    assert extra not in read_jsonl_lines(files["validation"])
    _append_line(files["validation"], extra)
    after = _versions(path)
    for key in ("validation_tokens", "proxy_run"):
        assert after[key] != before[key], key
    for key in ("rpv2_scores", "dsir_model", "proxy_data", "tokenizer", "curated_selection"):
        assert after[key] == before[key], key


def test_editing_a_dsir_target_in_place_refits_the_dsir_model_only(copies):
    files, config = copies
    path = config()
    before = _versions(path)
    _append_line(files["books"], read_jsonl_lines(SAMPLE / "reference.jsonl.gz")[0])
    after = _versions(path)
    assert after["dsir_model"] != before["dsir_model"]
    after.pop("dsir_model")
    before.pop("dsir_model")
    assert after == before  # nothing else reads the targets


def test_an_identical_copy_elsewhere_stales_nothing(copies, tmp_path):
    """Content, not path, is a data file's identity: moving a set (same bytes) reruns nothing."""
    files, config = copies
    before = _versions(config())
    moved = tmp_path / "elsewhere" / "renamed.jsonl.gz"
    moved.parent.mkdir()
    shutil.copy(files["reference"], moved)
    sets = {"validation": str(files["validation"]), "reference": str(moved)}
    assert load_config(str(config("moved.yaml", validation={"sets": sets}))).validation_sets["reference"] == str(moved)
    assert _versions(tmp_path / "moved.yaml") == before


def test_a_local_tokenizer_is_digested_by_its_files(copies, tmp_path):
    files, config = copies
    tok = tmp_path / "tok"
    tok.mkdir()
    (tok / "tokenizer.json").write_text('{"model": {"vocab": {"a": 0}}}')
    (tok / "tokenizer_config.json").write_text("{}")
    path = config(tokenizer={"path": str(tok)})
    before = _versions(path)
    (tok / "model.safetensors").write_bytes(b"\0" * 64)  # weights: no tokenizer reads them
    assert _versions(path) == before
    (tok / "tokenizer.json").write_text('{"model": {"vocab": {"a": 0, "b": 1}}}')
    after = _versions(path)
    for key in ("tokenizer", "proxy_run"):
        assert after[key] != before[key], key
    assert after["rpv2_scores"] == before["rpv2_scores"]


def test_the_output_uri_versions_the_curated_corpus_and_manifest_not_the_selection(copies, tmp_path):
    _, config = copies
    default = _versions(config())
    one = _versions(config("one.yaml", curation={"output_uri": str(tmp_path / "out1")}))
    two = _versions(config("two.yaml", curation={"output_uri": str(tmp_path / "out2")}))
    for key in ("curated_corpus", "curated_manifest"):
        assert len({default[key], one[key], two[key]}) == 3, key
    assert default["curated_selection"] == one["curated_selection"] == two["curated_selection"]
    assert default["evaluation"] == one["evaluation"] == two["evaluation"]


def test_the_evaluation_declares_score_orientation_when_scores_are_auto_oriented(copies):
    _, config = copies

    def deps(path):
        assets = all_assets(load_config(str(path)))
        ev = next(a for a in assets if any(k.to_user_string() == "evaluation" for k in a.keys))
        return {d.asset_key.to_user_string() for spec in ev.specs for d in spec.deps}

    auto = deps(config("auto.yaml", scores={"orientation": "auto"}))
    assert {"score_orientation", "curated_selection", "score_stats", "validation_tokens"} <= auto
    assert "score_orientation" not in deps(config())  # no auto scores: no such asset to wait for
