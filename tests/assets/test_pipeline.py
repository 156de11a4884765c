"""The whole chain on two small shards, through the same runner the CLI uses.

The module fixture runs the chain once; a test that changes anything (config, new shard, a
proposal) works on its own copy of the home, the instance and the raw folder (``clone``), so the
tests pass in any order."""
import json
from pathlib import Path
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml

import dagster as dg

from metarater_assets.report import build_report
from metarater_assets.runner import run_pipeline
from resources import Settings


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    from conftest import write_config, write_small_shards

    tmp = tmp_path_factory.mktemp("pipe")
    raw = write_small_shards(tmp / "raw")
    cfg = write_config(tmp / "config.yaml")
    settings = Settings(home=str(tmp / "home"), raw_uri=str(raw), config_path=str(cfg))
    (tmp / "dg").mkdir()
    instance = dg.DagsterInstance.local_temp(str(tmp / "dg"))
    summary = run_pipeline(settings, "evaluation", instance=instance, echo=lambda m: None)
    return settings, instance, summary, cfg, tmp


def clone(pipeline, dest):
    """An independent copy of the pipeline's raw folder, config, home and Dagster instance."""
    *_, tmp = pipeline
    for name in ("raw", "home", "dg", "config.yaml"):
        src = tmp / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, dest / name)
    s = Settings(home=str(dest / "home"), raw_uri=str(dest / "raw"), config_path=str(dest / "config.yaml"))
    return s, dg.DagsterInstance.local_temp(str(dest / "dg")), dest / "config.yaml"


def test_whole_chain_runs(pipeline):
    settings, instance, summary, _, _ = pipeline
    assert summary.failed == []
    rep = build_report(settings, instance)
    assert rep["ingest"]["shards"] == 2
    assert rep["ingest"]["rows_in"] == rep["ingest"]["rows_ok"] == 300
    assert rep["ingest"]["failed_shards"] == []
    assert len(rep["scores"]["names"]) == 14 and rep["scores"]["docs_scored"] == 300
    assert rep["proxies"]["n"] == 6 + 14
    assert rep["proxies"]["val_loss_min"] < rep["proxies"]["val_loss_max"]
    assert rep["regressor"]["model"] in ("lightgbm", "gbr", "linear", "ridge", "quadratic")
    w = rep["optimal_weights"]
    assert abs(sum(w.values()) - 1) < 1e-9 and len(w) == 14
    assert 0 < rep["curated"]["docs"] < 300
    ev = rep["evaluation"]
    assert len(ev["curated_loss"]) == len(ev["random_loss"]) == len(ev["single_best_loss"]) == 2
    assert ev["single_best_score"] in rep["scores"]["names"]
    assert set(ev["by_set"]) == {"validation", "reference"}


def test_curated_folder_opens_as_a_dataset_with_every_reader(pipeline):
    """pandas, pyarrow.dataset, DuckDB and `datasets` open the folder as it is: one Parquet file per
    shard named after it, the manifest as `_manifest.json` (skipped by every dataset reader)."""
    import datasets
    import duckdb
    import pandas as pd
    import pyarrow.dataset as pds

    settings, *_ = pipeline
    out = f"{settings.home}/curated"
    manifest = json.load(open(f"{out}/_manifest.json"))
    names = sorted(p.name for p in (pipeline[4] / "home" / "curated").iterdir())
    assert names == ["_manifest.json", "shard-0000.parquet", "shard-0002.parquet"]
    n = manifest["docs"]
    cols = ["doc_id", "text", "source", "n_tokens", "combined_score", "raw_shard", "raw_row"]
    assert pds.dataset(out, format="parquet").count_rows() == n
    frame = pd.read_parquet(out)
    assert len(frame) == n and list(frame.columns) == cols
    assert duckdb.sql(f"SELECT count(*) FROM '{out}/*.parquet'").fetchall()[0][0] == n
    ds = datasets.load_dataset(out, split="train")
    assert len(ds) == n and ds.column_names == cols
    assert frame["combined_score"].min() >= manifest["threshold"]
    assert sum(v["docs"] for v in manifest["per_shard"].values()) == n
    assert sum(v["tokens"] for v in manifest["per_source"].values()) == manifest["tokens"] == int(frame["n_tokens"].sum())
    for key in ("weights", "regressor", "proxy_runs", "score_code_versions", "threshold", "cut", "per_shard",
                "per_source", "dagster_run_id", "created", "normalisation"):
        assert key in manifest


def test_second_run_has_nothing_to_do(pipeline, tmp_path):
    settings, instance, cfg = clone(pipeline, tmp_path)
    again = run_pipeline(settings, "evaluation", instance=instance, echo=lambda m: None)
    assert again.materialised == [] and again.failed == [] and again.runs == 0


def test_changing_only_the_fraction_recomputes_only_curation_and_evaluation(pipeline, tmp_path):
    settings, instance, cfg_path = clone(pipeline, tmp_path)
    cfg = yaml.safe_load(cfg_path.read_text())
    cfg["curation"]["fraction"] = 0.3
    cfg_path.write_text(yaml.safe_dump(cfg))
    summary = run_pipeline(settings, "evaluation", instance=instance, echo=lambda m: None)
    done = {k for k, _ in summary.materialised}
    assert done == {"curated_selection", "curated_corpus", "curated_manifest", "evaluation"}
    rep = build_report(settings, instance)
    assert rep["curated"]["fraction"] == 0.3


def test_changing_a_scores_orientation_retrains_the_proxies_on_the_flipped_selections(pipeline, tmp_path):
    """scores.orientation changes what every weight vector selects, so the proxies (refit on request,
    not by new data) are stale by their own config: their data and runs, the regressor, the weights
    and the curated output are redone; scores, tokens and the other pool-level fits are not."""
    settings, instance, cfg_path = clone(pipeline, tmp_path)
    before = {p.name: json.load(open(p))["selection"] for p in (Path(settings.storage_uri) / "proxy_run").glob("*.json")}
    cfg = yaml.safe_load(cfg_path.read_text())
    cfg.setdefault("scores", {})["orientation"] = {"rps_doc_word_count": "low"}  # high by default
    cfg_path.write_text(yaml.safe_dump(cfg))
    summary = run_pipeline(settings, "curated", instance=instance, echo=lambda m: None)
    done = {k for k, _ in summary.materialised}
    assert {"score_stats", "proxy_data", "proxy_run", "regressor", "optimal_weights", "curated_selection"} <= done, done
    assert not done & {"raw_docs", "rpv2_scores", "dsir_scores", "doc_tokens", "tokenizer", "dsir_model"}, done
    after = {p.name: json.load(open(p))["selection"] for p in (Path(settings.storage_uri) / "proxy_run").glob("*.json")}
    assert after.keys() == before.keys() and after != before  # the same vectors, other selections


def test_auto_orientation_decides_each_direction_from_its_top_and_bottom_runs(pipeline, tmp_path):
    """scores.orientation auto: two single-score runs per auto score (its top, its bottom), the
    direction with the lower target loss kept, and every later selection (the swarm, the curated
    cut) reads the decided flips; score_stats itself stays unflipped."""
    from metarater_assets.proxies import target_loss

    settings, instance, cfg_path = clone(pipeline, tmp_path)
    cfg = yaml.safe_load(cfg_path.read_text())
    auto = ["rps_doc_frac_no_alph_words", "rps_doc_word_count", "dsir_wiki"]
    cfg.setdefault("scores", {})["orientation"] = {n: "auto" for n in auto}
    cfg_path.write_text(yaml.safe_dump(cfg))
    summary = run_pipeline(settings, "curated", instance=instance, echo=lambda m: None)
    assert not summary.failed
    done = {k for k, _ in summary.materialised}
    assert {"orientation_plan", "orientation_data", "orientation_run", "score_orientation", "proxy_data",
            "proxy_run", "curated_selection"} <= done, done
    store = Path(settings.storage_uri)
    runs = sorted(instance.get_dynamic_partitions("orientation_runs"))
    assert len(runs) == 2 * len(auto) and {r.rsplit("-", 1)[1] for r in runs} == {"high", "low"}
    res = {k: json.load(open(store / "orientation_run" / f"{k}.json")) for k in runs}
    target = yaml.safe_load(cfg_path.read_text())["validation"]["target"]
    decided = json.load(open(store / "score_orientation.json"))["decided"]
    for n in auto:
        hi, lo = (next(r for k, r in res.items() if r["score"] == n and k.endswith(d)) for d in ("-high", "-low"))
        assert hi["selection"] != lo["selection"]  # the top and the bottom of the pool
        want = "low" if target_loss(lo["losses"], target) < target_loss(hi["losses"], target) else "high"
        assert decided[n] == want
    stats = json.load(open(store / "score_stats.json"))["normalisation"]
    sel = json.load(open(store / "curated_selection.json"))["normalisation"]
    for n in auto:
        i = stats["names"].index(n)
        assert stats["flip"][i] is False and sel["flip"][i] is (decided[n] == "low")
    assert build_report(settings, instance)["scores"]["orientation"]["decided"] == decided


def test_explain_kept_and_dropped(pipeline):
    from metarater_assets.core import pool as cp
    from metarater_assets.explain import explain

    settings, *_ = pipeline
    sel = json.load(open(f"{settings.storage_uri}/curated_selection.json"))
    cut = cp.Cut.from_dict(sel["cut"])
    curated = pq.read_table(f"{settings.home}/curated/shard-0002.parquet").column("doc_id").to_pylist()
    index = pq.read_table(f"{settings.storage_uri}/shard_index/shard-0002.parquet.parquet")
    dropped = next(d for d in index.column("doc_id").to_pylist() if d not in set(curated))
    out = explain(settings, curated[0])
    assert "-> KEPT" in out and "shard=shard-0002.parquet" in out
    out = explain(settings, dropped, shard="shard-0002.parquet")
    assert "-> DROPPED" in out and "proxy runs:" in out and "rps_doc_word_count" in out
    assert f"threshold {cut.threshold_score:.4f}" in out
    assert "not found" in explain(settings, "no-such-doc")


def test_adaptive_round_trains_only_new_runs_and_refits(pipeline, tmp_path):
    from metarater_assets.regression import propose_round

    settings, instance, _ = clone(pipeline, tmp_path)
    before = set(instance.get_dynamic_partitions("proxy_runs"))
    rnd, new, n = propose_round(settings, instance, k=2)
    assert rnd == 1 and len(new) == 2 and n == len(before)
    assert set(instance.get_dynamic_partitions("proxy_runs")) == before | set(new)
    summary = run_pipeline(settings, "regressor", instance=instance, echo=lambda m: None)
    done = sorted((k, p) for k, p in summary.materialised)
    # the plan takes the proposals in (storage/proposals.json); only the new runs train
    assert done == sorted([("proxy_plan", None)] + [("proxy_data", k) for k in new] + [("proxy_run", k) for k in new]
                          + [("regressor", None), ("optimal_weights", None)])
    reg = json.load(open(f"{settings.storage_uri}/regressor.json"))
    assert len(reg["keys"]) == n + 2


def test_new_shard_touches_only_its_partitions_and_the_pool_level_outputs(pipeline, tmp_path):
    """incoming/shard-0008 arrives: ingest + scores for it alone; proxies are not retrained."""
    from conftest import TEST_DATA

    settings, instance, _ = clone(pipeline, tmp_path)
    shutil.copy(TEST_DATA / "shard-0008.jsonl.gz", f"{settings.raw_uri}/shard-0008.jsonl.gz")
    summary = run_pipeline(settings, "curated", instance=instance, echo=lambda m: None)
    assert summary.new_shards == ["shard-0008.jsonl.gz"] and not summary.failed
    done = set(summary.materialised)
    per_shard = {(k, p) for k, p in done if p is not None}
    new = "shard-0008.jsonl.gz"
    for key in ("raw_docs", "raw_quarantine", "rpv2_scores", "dsir_counts", "dsir_scores", "doc_tokens", "shard_index"):
        assert {p for k, p in per_shard if k == key} == {new}, key
    assert {("score_stats", None), ("curated_selection", None), ("curated_manifest", None)} <= done
    assert {p for k, p in per_shard if k == "curated_corpus"} == {"shard-0000.jsonl.gz", "shard-0002.parquet", new}
    assert not {k for k, _ in done} & {"dsir_model", "tokenizer", "proxy_data", "proxy_run", "regressor",
                                        "optimal_weights", "proxy_plan"}
    rep = build_report(settings, instance)
    assert rep["ingest"]["shards"] == 3 and rep["ingest"]["rows_ok"] == 360
    assert rep["scores"]["docs_scored"] == 360


def test_jsonl_zst_output_option(pipeline, tmp_path):
    import zstandard

    settings, instance, cfg_path = clone(pipeline, tmp_path)
    cfg = yaml.safe_load(cfg_path.read_text())
    cfg["curation"]["format"] = "jsonl.zst"
    cfg_path.write_text(yaml.safe_dump(cfg))
    summary = run_pipeline(settings, "curated", instance=instance, echo=lambda m: None)
    assert {k for k, _ in summary.materialised} == {"curated_corpus", "curated_manifest"}
    manifest = json.load(open(f"{settings.home}/curated/_manifest.json"))
    for pq_file, zst_file in zip(manifest["files"], manifest["jsonl_zst_files"]):
        assert "/_jsonl/" in zst_file
        with open(zst_file, "rb") as f:
            rows = [json.loads(l) for l in zstandard.ZstdDecompressor().stream_reader(f).read().decode().splitlines()]
        assert rows == pq.read_table(pq_file).to_pylist()
    import pandas as pd

    assert len(pd.read_parquet(f"{settings.home}/curated")) == manifest["docs"]  # the copies do not get in the way


def test_single_best_arm_follows_the_token_budget(pipeline, tmp_path):
    """curation.token_budget: every evaluation arm is cut to the same size as the curated one (the
    random arm too: a random selection of exactly the curated tokens), and trains on equal tokens.
    With the demo's validation roles (`reference` a quality set, `validation` the pool's own text),
    the target is the quality set alone: the loss curves and tuning-part losses are measured on it,
    every set is still scored on its held-out part and compared."""
    settings, instance, cfg_path = clone(pipeline, tmp_path)
    cfg = yaml.safe_load(cfg_path.read_text())
    cfg["curation"]["token_budget"] = 20000
    sets = cfg["validation"]["sets"]
    cfg["validation"]["sets"] = {"validation": {"uri": sets["validation"], "role": "in_distribution"},
                                 "reference": {"uri": sets["reference"], "role": "quality"}}
    cfg_path.write_text(yaml.safe_dump(cfg))
    assert not run_pipeline(settings, "evaluation", instance=instance, echo=lambda m: None).failed
    ev = json.load(open(f"{settings.storage_uri}/evaluation.json"))
    sel = json.load(open(f"{settings.storage_uri}/curated_selection.json"))
    assert 20000 <= sel["tokens"] < 20000 + 8000
    for r in ev["results"]["single_best"] + ev["results"]["curated"]:
        assert 20000 <= r["selected_tokens"] < 20000 + 8000, r  # the budget, plus at most the last document
    for r in ev["results"]["random"]:  # a random selection of the curated selection's tokens, to its last document
        assert sel["tokens"] <= r["selected_tokens"] < sel["tokens"] + 8000 < sel["pool_tokens"], r
    trained = {r["trained_tokens"] for arm in ev["results"].values() for r in arm}
    assert len(trained) == 1, trained  # every arm trains on the same number of tokens
    # paired by seed: every arm's training sample is drawn with its seed, so one arm's seeds hold
    # different samples of the same selection (20k tokens sampled to 2,048), and the comparison is
    # the per-seed difference other - curated
    from metarater_assets.core.token_store import TokenStore

    def sample(arm, seed):
        store = TokenStore.open(f"{settings.artifacts_uri}/evaluation_data/{arm}-{seed}")
        return [store.doc(i).tobytes() for i in range(len(store.offsets) - 1)]

    for arm in ("curated", "single_best"):
        assert set(sample(arm, 0)) != set(sample(arm, 1)), arm
    cur = [r["target_loss"] for r in ev["results"]["curated"]]
    for arm in ("random", "single_best"):
        other = [r["target_loss"] for r in ev["results"][arm]]
        c = ev["paired"][arm]["target_loss"]
        assert c["diffs"] == pytest.approx([other[0] - cur[0], other[1] - cur[1]])
        assert c["seeds"] == 2 and c["ci"][0] <= c["mean"] <= c["ci"][1]
        assert c["verdict"] in ("better", "worse", "no difference shown")
    assert [t["seed"] for t in ev["tokens_to_target"]] == [0, 1]
    # the target is the quality set: the loss curves are measured on it (on a sample of its
    # held-out documents) and end where training ends; the tuning-part losses too
    assert ev["target"] == "reference" and ev["roles"] == {"validation": "in_distribution", "reference": "quality"}
    for arm, rows in ev["results"].items():
        for r in rows:
            assert r["target_loss"] == r["reference"] and "validation" in r, (arm, r)
            assert r["tune_target_loss"] == r["tune_reference"] and "tune_validation" not in r, (arm, r)
    for arm, per_seed in ev["curves"].items():
        for points in per_seed:
            assert set(points[-1]) == {"step", "tokens", "reference", "target"}, (arm, points[-1])
            assert all(p["target"] == p["reference"] for p in points)
            assert points[-1]["tokens"] == ev["results"][arm][0]["trained_tokens"]
            assert len(points) >= 8  # evaluation.curve_points (default 8), plus the last step
    assert set(ev["paired"]["random"]) == {"target_loss", "validation", "reference"}
    held = ev["held_out_docs"]
    assert all(t["curve_docs"] == {"reference": min(held["reference"], 64)} for t in ev["tokens_to_target"])
    # a curated curve already at random's final loss at its first point is reported as a bound
    for t, cur in zip(ev["tokens_to_target"], ev["curves"]["curated"]):
        assert t["at_most"] == (t["curated_tokens"] == cur[0]["tokens"] and cur[0]["target"] <= t["random_final_loss"])


def test_evaluation_can_train_every_arm_on_its_whole_selection(pipeline, tmp_path):
    """evaluation.token_budget: selection: no sample. Each arm's training data is its whole
    selection (the curated and single-score arms hold the same documents for every seed; the
    seed draws only the order, the initialisation and the random arm's selection), and every arm
    trains on the curated selection's tokens rounded up to whole batches."""
    settings, instance, cfg_path = clone(pipeline, tmp_path)
    cfg = yaml.safe_load(cfg_path.read_text())
    cfg["evaluation"]["token_budget"] = "selection"
    cfg_path.write_text(yaml.safe_dump(cfg))
    summary = run_pipeline(settings, "evaluation", instance=instance, echo=lambda m: None)
    assert not summary.failed and {k for k, _ in summary.materialised} == {"evaluation"}  # nothing upstream reruns
    ev = json.load(open(f"{settings.storage_uri}/evaluation.json"))
    sel = json.load(open(f"{settings.storage_uri}/curated_selection.json"))
    from metarater_assets.core.proxy_lm import get_preset
    from metarater_assets.core.token_store import TokenStore

    p = get_preset("test")
    unit = p.batch_size * p.seq_len
    assert ev["sampled"] is False and ev["token_budget"] % unit == 0
    assert sel["tokens"] <= ev["token_budget"] < sel["tokens"] + unit
    assert {r["trained_tokens"] for rows in ev["results"].values() for r in rows} == {ev["token_budget"]}

    def docs(arm, seed):
        store = TokenStore.open(f"{settings.artifacts_uri}/evaluation_data/{arm}-{seed}")
        return sorted(store.doc(i).tobytes() for i in range(len(store.offsets) - 1))

    for arm in ("curated", "single_best", "random"):
        for r, seed in zip(ev["results"][arm], (0, 1)):
            assert len(docs(arm, seed)) == r["selected_docs"], (arm, seed)  # all of it, not a sample
    assert docs("curated", 0) == docs("curated", 1) and docs("single_best", 0) == docs("single_best", 1)
    assert docs("random", 0) != docs("random", 1)  # a random selection per seed
    cfg["evaluation"]["token_budget"] = "all"
    cfg_path.write_text(yaml.safe_dump(cfg))
    from metarater_assets.core.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="evaluation.token_budget"):
        load_config(str(cfg_path))


def test_tier_two_confirms_tier_one_and_reports_the_agreement(pipeline, tmp_path):
    """confirm: transformer proxies on the predicted optimum and a spread of tier-1 vectors; the
    agreement is the Spearman rho of the two tiers' losses on the shared vectors (computed here
    from the stored run files); tier 1 is not retrained."""
    from scipy.stats import spearmanr

    settings, instance, cfg_path = clone(pipeline, tmp_path)
    cfg = yaml.safe_load(cfg_path.read_text())
    cfg["confirm"] = {"kind": "transformer", "preset": "test", "spread": 4, "single_score_runs": False}
    cfg_path.write_text(yaml.safe_dump(cfg))
    summary = run_pipeline(settings, "confirm", instance=instance, echo=lambda m: None)
    assert not summary.failed
    done = [k for k, _ in summary.materialised]
    assert set(done) == {"confirm_plan", "confirm_data", "confirm_run", "tier_agreement"}
    assert done.count("confirm_run") == 5  # the optimum + 4 spread vectors
    keys = instance.get_dynamic_partitions("confirm_runs")
    plan = json.load(open(f"{settings.storage_uri}/confirm_plan.json"))
    assert sorted(keys) == sorted(r["key"] for r in plan["runs"])
    assert [r["kind"] for r in plan["runs"]] == ["optimum"] + ["spread"] * 4
    t1 = {k: json.load(open(f"{settings.storage_uri}/proxy_run/{k}.json"))
          for k in instance.get_dynamic_partitions("proxy_runs")}
    t2 = {k: json.load(open(f"{settings.storage_uri}/confirm_run/{k}.json")) for k in keys}
    assert all(r["proxy_kind"] == "transformer" for r in t2.values())
    spread = [r for r in plan["runs"] if r["kind"] == "spread"]
    # the spread covers tier 1's loss range: its lowest and highest Dirichlet runs are in it
    dirichlet = sorted((r["target_loss"], k) for k, r in t1.items() if r["kind"] == "dirichlet")
    assert {dirichlet[0][1], dirichlet[-1][1]} <= {r["tier1"] for r in spread}
    for r in spread:
        assert t2[r["key"]]["weights"] == t1[r["tier1"]]["weights"]
    expected = spearmanr([t1[r["tier1"]]["target_loss"] for r in spread],
                         [t2[r["key"]]["target_loss"] for r in spread]).statistic
    rep = build_report(settings, instance)
    assert rep["proxies"]["tier_agreement_spearman"] == pytest.approx(expected, abs=1e-12)
    assert rep["proxies"]["tier_shared_vectors"] == 4 and rep["proxies"]["tier2_runs"] == 5
    opt = rep["proxies"]["tier2_optimum"]
    losses = sorted(r["target_loss"] for r in t2.values())
    assert opt["of"] == 5 and losses[opt["rank"] - 1] == t2[plan["runs"][0]["key"]]["target_loss"]
    again = run_pipeline(settings, "confirm", instance=instance, echo=lambda m: None)
    assert again.materialised == []
    # the best tier-2 run (lowest tuning loss) is named, and curation.weights: best_confirmed cuts with it
    best_key = min(t2, key=lambda k: t2[k]["target_loss"])
    b = rep["proxies"]["tier2_best"]
    assert b["key"] == best_key and b["tier2_loss"] == t2[best_key]["target_loss"]
    assert opt["is_best"] == (best_key == plan["runs"][0]["key"])
    cfg["curation"]["weights"] = "best_confirmed"
    cfg_path.write_text(yaml.safe_dump(cfg))
    assert not run_pipeline(settings, "curated", instance=instance, echo=lambda m: None).failed
    sel = json.load(open(f"{settings.storage_uri}/curated_selection.json"))
    assert sel["weights_from"].startswith(f"best_confirmed:{best_key}")
    assert sel["weights"] == pytest.approx([t2[best_key]["weights"][n] for n in sel["names"]])


def test_evaluation_reads_only_the_held_out_documents(pipeline):
    """validation.held_out (0.5 by default): each set is split by a hash of the document id; the
    proxies' losses use the tuning part, the evaluation the held-out part, and the report counts it."""
    settings, instance, *_ = pipeline
    val = pq.read_table(f"{settings.storage_uri}/validation_tokens.parquet").to_pylist()
    parts = {(r["set"], r["doc_id"]): r["part"] for r in val}
    assert set(parts.values()) == {"tune", "held_out"}
    for name in ("validation", "reference"):
        n_ho = sum(1 for (s, _), p in parts.items() if s == name and p == "held_out")
        assert 8 <= n_ho <= 32  # about half of the 40 documents
    rep = build_report(settings, instance)
    ev = rep["evaluation"]
    assert ev["evaluated_on"] == "held_out"
    assert ev["held_out_docs"] == {s: sum(1 for (s_, _), p in parts.items() if s_ == s and p == "held_out")
                                   for s in ("validation", "reference")}
    # a proxy's loss is over the tuning documents only: it counts exactly their predicted tokens
    import glob

    run = json.load(open(sorted(glob.glob(f"{settings.storage_uri}/proxy_run/*.json"))[0]))
    seq_len = json.load(open(f"{settings.artifacts_uri}/proxy_runs/{run['key']}/{run['identity']}/config.json"))[
        "model"]["seq_len"]
    for s in ("validation", "reference"):
        tune = sum(min(len(r["ids"]), seq_len) for r in val if r["set"] == s and r["part"] == "tune")
        assert run["losses"][s]["tokens"] == tune
    assert set(ev["comparisons"]) == {"random", "single_best"}


def test_gpu_eval_retrains_the_evaluations_arms_from_a_prepared_folder(pipeline, tmp_path):
    """bench/gpu_eval.py: `prepare` copies a finished evaluation's stores and held-out target, and
    `run` with the evaluation's own preset and one pass over its tokens (on the CPU, one thread, as
    the evaluation trains) gives back the evaluation's losses: the same data, seeds and target sets."""
    import sys

    settings, *_ = pipeline
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
    import gpu_eval

    work = Path(settings.home).parent
    meta = gpu_eval.prepare(work, tmp_path / "input")
    ev = json.load(open(f"{settings.storage_uri}/evaluation.json"))
    assert set(meta["arms"]) == {"curated", "random", "single_best"} and meta["seeds"] == ev["seeds"]
    res = gpu_eval.run(tmp_path / "input", tmp_path / "out", ev["preset"], 1.0, "cpu", None, None, {})
    assert res["tokens"] == ev["token_budget"]
    for arm in ("curated", "random", "single_best"):
        assert res["losses"][arm] == pytest.approx([r["target_loss"] for r in ev["results"][arm]], abs=1e-5), arm
    c = res["curated_vs"]["random"]
    assert c["diffs"] == pytest.approx(np.subtract(res["losses"]["random"], res["losses"]["curated"]).tolist())
    assert json.loads((tmp_path / "out" / "gpu_eval.json").read_text())["losses"] == res["losses"]
