"""One identity per output (metarater_assets/identity.py), end to end through the runner.

Each test pins one behaviour the identities give and the code before them did not have:
a finished proxy is retrained (not resumed) when its training data changes; the regressor reads
exactly the current plan's current runs; a shard whose blocking check failed stops the pool until
it is excluded; a failed ingest batch that committed one changed shard still reruns what reads it;
a reader refuses a file whose footer identity is not the recorded one."""
import gzip
import json
from pathlib import Path

import dagster as dg
import pyarrow.parquet as pq
import yaml

from metarater_assets import identity
from metarater_assets.runner import run_pipeline
from resources import Settings
from conftest import SAMPLE, read_jsonl_lines, write_config, write_small_shards

N = 30  # documents per small shard
FIRST, SECOND = "shard-0000.jsonl.gz", "shard-0002.parquet"


def _settings(tmp: Path, name: str = "home", raw: Path | None = None, **over) -> Settings:
    """A home under ``tmp/name`` on the two small shards (``raw``, or written under ``tmp/raw``) and
    the conftest config with ``over`` merged into its sections."""
    if raw is None:
        raw = tmp / "raw"
        if not raw.exists():
            write_small_shards(raw, n=N)
    cfg = write_config(tmp / f"{name}.yaml", **over)
    return Settings(home=str(tmp / name), raw_uri=str(raw), config_path=str(cfg))


def _edit(settings: Settings, **sections) -> None:
    """Merge ``sections`` into the config file's sections (a config change between two runs)."""
    path = Path(settings.config_path)
    cfg = yaml.safe_load(path.read_text())
    for section, values in sections.items():
        cfg.setdefault(section, {}).update(values)
    path.write_text(yaml.safe_dump(cfg))


def _run(settings: Settings, stage: str, instance, **kw):
    return run_pipeline(settings, stage, instance=instance, echo=lambda m: None, **kw)


def _json(settings: Settings, *parts: str) -> dict:
    return json.loads(Path(settings.storage_uri, *parts).read_text())


def _uri(settings: Settings, asset: str, key: str) -> str:
    """A per-shard output's file: <home>/storage/<asset>/<key>.parquet."""
    from resources.storage import ShardFiles

    return ShardFiles(settings.storage_uri).uri(asset, key)


def _plan_keys(settings: Settings) -> list[str]:
    return [r["key"] for r in _json(settings, "proxy_plan.json")["runs"]]


# -- 1 ------------------------------------------------------------------------------------------

def test_finished_transformer_proxy_is_retrained_when_its_training_data_changes(tmp_path):
    """proxies.fraction changes every run's training data: each run trains from step 0 under its
    new identity (a finished checkpoint of the old data is not resumed), and its losses are those
    of a fresh home trained on the new config from the start."""
    proxies = {"kind": "transformer", "preset": "test", "token_budget": 2048, "n": 4, "single_score_runs": False}
    settings = _settings(tmp_path, proxies={**proxies, "fraction": 0.15})
    instance = dg.DagsterInstance.ephemeral()
    first = _run(settings, "proxies", instance)
    assert not first.failed, first.failed
    keys = _plan_keys(settings)
    assert len(keys) == 4
    before = {k: _json(settings, "proxy_run", f"{k}.json") for k in keys}
    assert all(r["proxy_kind"] == "transformer" and r["train"]["resumed_from_step"] == 0 for r in before.values())

    _edit(settings, proxies={"fraction": 0.4})
    again = _run(settings, "proxies", instance)
    assert not again.failed, again.failed
    assert sorted(p for k, p in again.materialised if k == "proxy_run") == sorted(keys)
    assert _plan_keys(settings) == keys  # a run's key is its vector: the same runs, other data
    after = {k: _json(settings, "proxy_run", f"{k}.json") for k in keys}
    for k, r in after.items():
        assert r["train"]["resumed_from_step"] == 0, (k, r["train"])
        assert r[identity.FIELD] != before[k][identity.FIELD], k
    # the selections grew (one large document can cross both cuts: that run's selection stays)
    assert any(after[k]["selection"] != before[k]["selection"] for k in keys)

    fresh = _settings(tmp_path, "fresh", raw=Path(settings.raw_uri), proxies={**proxies, "fraction": 0.4})
    clean = _run(fresh, "proxies", dg.DagsterInstance.ephemeral())
    assert not clean.failed, clean.failed
    assert _plan_keys(fresh) == keys
    for k in keys:
        want = _json(fresh, "proxy_run", f"{k}.json")
        assert after[k]["selection"] == want["selection"], k
        assert after[k]["losses"] == want["losses"], k
    # the only checkpoint left of each run is its current identity's
    for k, r in after.items():
        kept = sorted(p.name for p in Path(settings.artifacts_uri, "proxy_runs", k).iterdir() if p.is_dir())
        assert kept == [r[identity.FIELD]], (k, kept)


# -- 2 ------------------------------------------------------------------------------------------

def test_regressor_reads_exactly_the_current_plan_and_names_a_run_that_failed(tmp_path, monkeypatch):
    settings = _settings(tmp_path, proxies={"n": 8})
    instance = dg.DagsterInstance.ephemeral()
    assert not _run(settings, "regressor", instance).failed
    eight = set(_plan_keys(settings))

    _edit(settings, proxies={"n": 6})
    summary = _run(settings, "regressor", instance)
    assert not summary.failed, summary.failed
    plan = _plan_keys(settings)
    dropped = eight - set(plan)
    assert len(plan) == 6 + 14 and dropped  # 6 Dirichlet vectors + one single-score run per score
    assert set(instance.get_dynamic_partitions("proxy_runs")) >= eight  # still registered
    reg = _json(settings, "regressor.json")
    assert sorted(reg["keys"]) == sorted(plan)
    assert not dropped & set(reg["keys"])
    assert reg["missing_runs"] == [] and reg["planned_runs"] == len(plan)
    assert _json(settings, "optimal_weights.json")["proxy_runs"] == reg["keys"]

    # every run retrains (its training data changes); one fails: with min_runs_fraction 1.0 the
    # regressor fails and names it, instead of fitting on that run's result of the old data
    from metarater_assets import proxies

    bad = sorted(plan)[0]
    real = proxies.train_and_evaluate

    def flaky(kind, pcfg, store_uri, val_sets, tok_info, ckpt_uri, *a, **kw):
        if f"/proxy_runs/{bad}/" in ckpt_uri:
            raise RuntimeError(f"injected failure of {bad}")
        return real(kind, pcfg, store_uri, val_sets, tok_info, ckpt_uri, *a, **kw)

    monkeypatch.setattr(proxies, "train_and_evaluate", flaky)
    _edit(settings, proxies={"fraction": 0.3}, regressor={"min_runs_fraction": 1.0})
    summary = _run(settings, "regressor", instance)
    assert [(f["assets"], f["partition"]) for f in summary.failed][:1] == [(["proxy_run"], bad)], summary.failed
    reg_fail = [f for f in summary.failed if "regressor" in f["assets"]]
    assert len(reg_fail) == 1, summary.failed
    assert bad in reg_fail[0]["error"] and "min_runs_fraction" in reg_fail[0]["error"], reg_fail[0]["error"]
    assert ("regressor", None) not in summary.materialised
    assert _json(settings, "regressor.json") == reg  # the last good fit stays as it was



def test_runs_dropped_from_the_plan_are_not_retrained_by_a_batch_of_the_planned_ones(tmp_path):
    """Found while writing the test above: a batch is a partition-key range in Dagster's order of
    the proxy_runs partitions (registration order), so batches cut in the plan's order must not span
    the runs registered between two planned ones (here the 2 vectors dropped by n 8 -> 6)."""
    settings = _settings(tmp_path, proxies={"n": 8})
    instance = dg.DagsterInstance.ephemeral()
    assert not _run(settings, "regressor", instance).failed
    eight = _plan_keys(settings)
    _edit(settings, proxies={"n": 6})
    assert not _run(settings, "regressor", instance).failed
    plan = _plan_keys(settings)
    dropped = [k for k in eight if k not in plan]
    assert dropped
    before = {k: _json(settings, "proxy_run", f"{k}.json")[identity.FIELD] for k in dropped}

    _edit(settings, proxies={"fraction": 0.3})  # every planned run retrains
    summary = _run(settings, "regressor", instance)
    assert not summary.failed, summary.failed
    assert sorted(p for k, p in summary.materialised if k == "proxy_run") == sorted(plan)
    after = {k: _json(settings, "proxy_run", f"{k}.json")[identity.FIELD] for k in dropped}
    assert after == before  # not trained again: they are in no plan
    # nor their training data: their records still carry the old config's recipe
    tracer = identity.Tracer(instance, _assets(settings), identity.Sources.of({}), settings.storage_uri)
    for asset in ("proxy_data", "proxy_run"):
        recorded = identity.Ledger(instance).commits(asset, "proxy_runs")
        assert [k for k in dropped if recorded[k].recipe == tracer.recipe(asset)] == [], asset


def _assets(settings: Settings):
    from metarater_assets.core.config import load_config
    from metarater_assets.defs import all_assets

    return all_assets(load_config(settings.config_path))

# -- 3 ------------------------------------------------------------------------------------------

def test_a_shard_whose_blocking_check_failed_stops_the_pool_until_it_is_excluded(tmp_path, monkeypatch):
    from metarater_assets import pool

    real = pool.build_shard_index

    def bad_second(settings, cfg, key, tracer, out):
        summary, problems, digest = real(settings, cfg, key, tracer, out)
        return summary, (problems + ["injected: rpv2_scores not aligned"] if key == SECOND else problems), digest

    monkeypatch.setattr(pool, "build_shard_index", bad_second)
    settings = _settings(tmp_path)
    instance = dg.DagsterInstance.ephemeral()
    summary = _run(settings, "pool", instance)
    assert [(f["assets"][-1], f["partition"]) for f in summary.failed] == [("shard_index", SECOND)], summary.failed
    assert [b["asset"] for b in summary.blocked] == ["score_stats"], summary.blocked
    assert SECOND in summary.blocked[0]["inputs"]
    assert ("score_stats", None) not in summary.materialised
    assert not Path(settings.storage_uri, "score_stats.json").exists()
    # the shard's output is committed with its failed check recorded, the other one passed
    ledger = identity.Ledger(instance).commits("shard_index", "shards")
    assert ledger[SECOND].ok is False and ledger[FIRST].ok is True
    assert Path(_uri(settings, "shard_index", SECOND)).exists()

    _edit(settings, ingest={"exclude": [SECOND]})  # the shard stays bad (the patch is still in place)
    summary = _run(settings, "pool", instance)
    assert not summary.failed and not summary.blocked, (summary.failed, summary.blocked)
    assert ("score_stats", None) in summary.materialised
    assert not {p for _, p in summary.materialised} & {SECOND}
    stats = _json(settings, "score_stats.json")
    assert stats["keys"] == [FIRST] and stats["shards"] == 1
    assert stats["excluded"] == [{"shard": SECOND, "why": "ingest.exclude"}]
    assert stats["docs"] == pq.read_metadata(_uri(settings, "raw_docs", FIRST)).num_rows


# -- 4 ------------------------------------------------------------------------------------------

def test_a_failed_ingest_batch_with_changed_files_reruns_what_reads_the_shard_it_committed(tmp_path, monkeypatch):
    """Both files change; a backfill's batch ingests the first, then fails on the second. The first
    shard's new raw_docs is committed (and recorded as ingested from its new file), so nothing may
    take its old scores as current: the next run rescores it."""
    from metarater_assets.core import corpus
    from metarater_assets.core.config import load_config
    from metarater_assets.defs import all_assets, build_resources
    from metarater_assets.runner import RANGE_END, RANGE_START

    settings = _settings(tmp_path)
    instance = dg.DagsterInstance.ephemeral()
    assert not _run(settings, "scores", instance).failed
    old_ids = pq.read_table(_uri(settings, "rpv2_scores", FIRST), columns=["doc_id"]).column("doc_id").to_pylist()
    assert len(old_ids) == N

    raw = Path(settings.raw_uri)
    lines = read_jsonl_lines(SAMPLE / "raw" / FIRST)[100:137]
    with gzip.open(raw / FIRST, "wt", encoding="utf-8") as f:
        f.writelines(lines)
    pq.write_table(pq.read_table(SAMPLE / "raw" / SECOND).slice(100, 25), raw / SECOND)

    real = corpus.ingest_files

    def fail_second(files, *a, **kw):
        if any(name == SECOND for _, name in files):
            raise corpus.ShardError(f"{SECOND}: injected failure")
        return real(files, *a, **kw)

    monkeypatch.setattr(corpus, "ingest_files", fail_second)
    cfg = load_config(settings.config_path)
    order = list(instance.get_dynamic_partitions("shards"))
    assert order == [FIRST, SECOND]
    res = dg.materialize(all_assets(cfg), selection=["raw_docs", "raw_quarantine"], instance=instance,
                         resources=build_resources(settings, cfg), raise_on_error=False,
                         tags={RANGE_START: order[0], RANGE_END: order[-1]})
    assert not res.success
    monkeypatch.setattr(corpus, "ingest_files", real)
    new_ids = pq.read_table(_uri(settings, "raw_docs", FIRST), columns=["doc_id"]).column("doc_id").to_pylist()
    assert new_ids != old_ids and len(new_ids) > N  # the batch did commit the first shard's new documents

    summary = _run(settings, "scores", instance)
    assert not summary.failed, summary.failed
    assert ("rpv2_scores", FIRST) in summary.materialised and ("rpv2_scores", SECOND) in summary.materialised
    docs = pq.read_table(_uri(settings, "raw_docs", FIRST), columns=["doc_id"]).column("doc_id").to_pylist()
    scores = pq.read_table(_uri(settings, "rpv2_scores", FIRST), columns=["doc_id"]).column("doc_id").to_pylist()
    assert len(scores) == len(docs) == len(lines) - _quarantined(settings, FIRST)
    assert scores == docs
    # the second shard too: its file changed and its ingest had failed
    docs2 = pq.read_table(_uri(settings, "raw_docs", SECOND), columns=["doc_id"]).column("doc_id").to_pylist()
    scores2 = pq.read_table(_uri(settings, "rpv2_scores", SECOND), columns=["doc_id"]).column("doc_id").to_pylist()
    assert scores2 == docs2 and len(docs2) + _quarantined(settings, SECOND) == 25


def _quarantined(settings: Settings, key: str) -> int:
    return pq.read_metadata(_uri(settings, "raw_quarantine", key)).num_rows


# -- 5 ------------------------------------------------------------------------------------------

def test_a_reader_refuses_a_file_whose_footer_identity_is_not_the_recorded_one(tmp_path):
    settings = _settings(tmp_path)
    instance = dg.DagsterInstance.ephemeral()
    assert not _run(settings, "pool", instance).failed
    uri = _uri(settings, "raw_docs", FIRST)
    table = pq.read_table(uri)
    meta = dict(table.schema.metadata)
    recorded = meta[identity.FOOTER].decode()
    assert identity.Ledger(instance).commits("raw_docs", "shards")[FIRST].identity == recorded
    meta[identity.FOOTER] = b"0" * 24  # the same documents, written under another identity
    pq.write_table(table.replace_schema_metadata(meta), uri)

    summary = _run(settings, "scores", instance, force=("rpv2_scores",))
    assert [f["partition"] for f in summary.failed] == [FIRST], summary.failed
    err = summary.failed[0]["error"]
    assert summary.failed[0]["assets"] == ["rpv2_scores"]
    assert "holds identity" in err and repr("0" * 24) in err and recorded in err, err
    assert ("rpv2_scores", SECOND) in summary.materialised
