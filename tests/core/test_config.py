import pytest
import yaml

from metarater_assets.core.config import ConfigError, load_config, parse_config
from conftest import REPO


def _demo():
    return yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())


@pytest.mark.parametrize("section,key,value,message", [
    (None, "raters", ["rpv2", "telepathy"], "unknown rater"),
    ("curation", "fraction", 0, "curation.fraction must be in"),
    ("curation", "fraction", 1.5, "curation.fraction must be in"),
    ("proxies", "fraction", "half", "proxies.fraction must be a number"),
    ("proxies", "n", 0, "proxies.n must be >= 1"),
    ("proxies", "kind", "oracle", "proxies.kind"),
    ("proxies", "preset", "huge", "unknown; known"),
    ("validation", "target", "nope", "validation.target"),
    ("confirm", "single_score_runs", 0, "confirm.single_score_runs must be"),
    ("confirm", "single_score_runs", "some", "confirm.single_score_runs must be"),
])
def test_bad_values_are_named(section, key, value, message):
    raw = _demo()
    (raw if section is None else raw[section])[key] = value
    with pytest.raises(ConfigError, match=message):
        parse_config(raw, str(REPO / "configs"))


def test_missing_files_and_unknown_model_scores_are_named(tmp_path):
    raw = _demo()
    raw["model_raters"] = {"registry": "raters.yaml", "scores": ["professionalism", "vibes"]}
    with pytest.raises(ConfigError, match=r"unknown model score\(s\) \['vibes'\]"):
        parse_config(raw, str(REPO / "configs"))
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(str(tmp_path / "nope.yaml"))
    raw = _demo()
    raw["dsir"]["targets"].pop("math")
    with pytest.raises(ConfigError, match="dsir.targets must name exactly"):
        parse_config(raw, str(REPO / "configs"))


def test_demo_and_paper_configs_parse():
    demo = load_config(str(REPO / "configs" / "demo.yaml"))
    assert len(demo.score_names) == 18  # 11 RPv2 + 3 DSIR + 4 PRRC from the rater the demo trains
    assert demo.trained_scores == ("professionalism", "readability", "reasoning", "cleanliness")
    assert demo.rater_specs() == {}  # none of the demo's model scores comes from the hub registry
    paper = load_config(str(REPO / "configs" / "paper.yaml"))
    # 11 RPv2 + 3 DSIR + 9 model scores (the two WanjuanCC scores have no public model)
    assert paper.proxies.n == 256 and len(paper.score_names) == 23
    assert "wanjuan_fluency" not in paper.model_scores and "fineweb_edu" in paper.model_scores


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "configs").glob("*.yaml") if p.name != "raters.yaml"))
def test_every_model_score_of_a_shipped_config_has_a_model(name):
    # a registry entry with `model: null` fails model_scores on every shard: no shipped config may name one
    cfg = load_config(str(REPO / "configs" / name))
    for score in cfg.model_scores:
        assert score in cfg.trained_scores or cfg.registry[score].model, (
            f"{name}: model score {score!r} has no model in {cfg.model_registry}")


def test_a_target_or_validation_file_that_does_not_exist_is_named():
    raw = _demo()
    raw["dsir"]["targets"]["math"] = "../data/sample/targets/nowhere.jsonl.gz"
    with pytest.raises(ConfigError, match=r"dsir.targets.math: .*nowhere.jsonl.gz' does not exist"):
        parse_config(raw, str(REPO / "configs"))
    raw = _demo()
    raw["validation"]["sets"]["reference"] = "/nope/ref.jsonl"
    with pytest.raises(ConfigError, match="validation.sets.reference"):
        parse_config(raw, str(REPO / "configs"))


def test_errors_name_the_file_and_new_fields_are_checked(tmp_path):
    from conftest import write_config

    p = write_config(tmp_path / "bad.yaml", compute={"shards_per_run": 0})
    with pytest.raises(ConfigError, match=rf"{p}: compute.shards_per_run must be an integer >= 1"):
        load_config(str(p))
    for section, value, message in (("curation", {"fractoin": 0.2}, r"curation: unknown key\(s\) \['fractoin'\]"),
                                    ("regressor", {"models": ["xgboost"]}, "regressor.models: unknown"),
                                    ("scores", {"orientation": {"rps_doc_word_count": "sideways"}}, "not one of"),
                                    ("precomputed", {"scores": {"x": {"column": "c", "reduce": "median"}}},
                                     "precomputed.scores: score 'x': unknown reduce")):
        raw = _demo()
        raw[section] = {**(raw.get(section) or {}), **value}
        if section == "precomputed":
            raw["raters"] = ["rpv2", "precomputed"]
        with pytest.raises(ConfigError, match=message):
            parse_config(raw, str(REPO / "configs"))
    (tmp_path / "broken.yaml").write_text("raters: [rpv2\n")
    with pytest.raises(ConfigError, match="is not valid YAML"):
        load_config(str(tmp_path / "broken.yaml"))


def test_a_score_from_two_raters_is_refused():
    raw = _demo()
    raw["raters"] = ["rpv2", "precomputed"]
    raw["precomputed"] = {"scores": {"rps_doc_word_count": "rps_doc_word_count"}}
    with pytest.raises(ConfigError, match=r"score\(s\) \['rps_doc_word_count'\] come from more than one rater"):
        parse_config(raw, str(REPO / "configs"))


def test_orientation_auto_is_accepted_per_score_and_as_default(tmp_path):
    import yaml

    from conftest import write_config
    from metarater_assets.core.config import load_config

    p = write_config(tmp_path / "c.yaml", scores={"orientation": {"rps_doc_word_count": "auto", "dsir_wiki": "low"}})
    cfg = load_config(str(p))
    assert cfg.auto_oriented == ("rps_doc_word_count",) and cfg.orientation_of("dsir_wiki") == "low"
    raw = yaml.safe_load(p.read_text())
    raw["scores"]["orientation"] = "auto"
    p.write_text(yaml.safe_dump(raw))
    assert load_config(str(p)).auto_oriented == load_config(str(p)).score_names


def test_pack_bytes_takes_sizes_with_units_and_names_a_bad_one():
    raw = _demo()
    assert parse_config(raw, str(REPO / "configs")).pack_bytes == 0  # default: a partition per file
    for given, want in (("16MB", 16_000_000), ("64 MiB", 64 * 2**20), (2048, 2048), ("1.5GB", 1_500_000_000)):
        raw["ingest"] = {"pack_bytes": given}
        assert parse_config(raw, str(REPO / "configs")).pack_bytes == want
    for bad, message in (({"pack_bytes": "lots"}, "ingest.pack_bytes must be a size"),
                         ({"pack_bytes": -1}, "ingest.pack_bytes must be an integer"),
                         ({"pack_max_files": 1}, "ingest.pack_max_files must be an integer >= 2"),
                         ({"pack_size": 5}, "unknown key")):
        raw["ingest"] = bad
        with pytest.raises(ConfigError, match=message):
            parse_config(raw, str(REPO / "configs"))


def test_validation_roles_pick_the_target():
    """A set declared ``role: quality`` is what the regression target and the evaluation's verdict
    average under ``target: mean``; without roles the target is every set's mean, as before."""
    from metarater_assets.proxies import target_loss

    raw = _demo()
    sets = raw["validation"]["sets"]
    assert parse_config(raw, str(REPO / "configs")).validation_target == "reference"  # the demo declares roles
    raw["validation"]["sets"] = {"validation": sets["validation"]["uri"], "reference": sets["reference"]["uri"]}
    cfg = parse_config(raw, str(REPO / "configs"))
    assert cfg.validation_target == "mean" and cfg.validation_roles == {"validation": None, "reference": None}
    raw["validation"]["sets"] = {"validation": {"uri": sets["validation"]["uri"], "role": "quality"},
                                 "reference": {"uri": sets["reference"]["uri"], "role": "quality"}}
    cfg = parse_config(raw, str(REPO / "configs"))
    assert cfg.validation_target == "validation+reference"
    losses = {"validation": {"loss": 4.0}, "reference": {"loss": 5.0}, "other": {"loss": 100.0}}
    assert target_loss(losses, cfg.validation_target) == 4.5
    assert target_loss(losses, "mean") == pytest.approx(109.0 / 3)
    raw["validation"]["sets"]["reference"]["role"] = "gold"
    with pytest.raises(ConfigError, match=r"validation.sets.reference.role must be one of \['quality', 'in_distribution'\]"):
        parse_config(raw, str(REPO / "configs"))


def test_lower_is_better_signals_are_flipped_unless_the_config_says_otherwise():
    """The RPv2 signals the quality rules reject when high are ``low`` by default; a per-score
    orientation or an explicit ``default`` overrides that, and every other score is ``high``."""
    raw = _demo()
    raw.pop("scores", None)
    cfg = parse_config(raw, str(REPO / "configs"))
    low = {n for n, o in cfg.orientations.items() if o == "low"}
    assert low == {"rps_doc_frac_no_alph_words", "rps_lines_uppercase_letter_fraction", "rps_doc_frac_chars_top_2gram",
                   "rps_doc_frac_chars_top_3gram", "rps_lines_numerical_chars_fraction"}
    assert cfg.orientation_of("rps_doc_unigram_entropy") == "high" and cfg.orientation_of("dsir_books") == "high"
    raw["scores"] = {"orientation": {"rps_doc_frac_chars_top_2gram": "high"}}
    assert parse_config(raw, str(REPO / "configs")).orientation_of("rps_doc_frac_chars_top_2gram") == "high"
    raw["scores"] = {"orientation": {"default": "high"}}  # the paper's raw use: every score as it is
    assert set(parse_config(raw, str(REPO / "configs")).orientations.values()) == {"high"}
