"""In-process execution for the CLI: register shards, then materialise what is missing or stale.

Each step materialises a few assets for one partition with ``dagster.materialize`` on the
persistent instance, so the UI shows every run and later runs see what is already done.
"""
from __future__ import annotations

import logging
import os
import time
import warnings
from dataclasses import dataclass, field
from typing import Callable

import dagster as dg

from .core import corpus
from .defs import STAGES, all_assets, build_resources
from .partitions import proxy_runs, shards
from .staleness import Staleness
from resources import Settings

#: Execution steps per stage: (asset keys, partitions: "shards" / "proxy_runs" / None).
STEPS: dict[str, list[tuple[tuple[str, ...], str | None]]] = {
    "ingest": [(("raw_docs", "raw_quarantine"), "shards")],
    "scores": [(("rpv2_scores", "dsir_counts"), "shards"), (("dsir_model",), None),
               (("prrc_annotations",), None), (("prrc_rater",), None),
               (("dsir_scores", "model_scores"), "shards"), (("score_stats",), None)],
    "proxies": [(("tokenizer",), None), (("doc_tokens",), "shards"), (("validation_tokens",), None),
                (("pool_index",), None), (("proxy_plan",), None), (("proxy_run",), "proxy_runs")],
    "regressor": [(("regressor",), None), (("optimal_weights",), None)],
    "curated": [(("curated_selection",), None), (("curated_corpus",), "shards"),
                (("curated_manifest",), None)],
    "evaluation": [(("evaluation",), None)],
}
assert list(STEPS) == list(STAGES)

#: Dagster's console logger at WARNING (the CLI prints its own progress); METARATER_LOG_LEVEL overrides.
LOGS = {"loggers": {"console": {"config": {"log_level": os.environ.get("METARATER_LOG_LEVEL", "WARNING")}}}}
warnings.filterwarnings("ignore", category=dg.BetaWarning)
warnings.filterwarnings("ignore", message=".*LeafSpec.*")

def quiet_lightning() -> None:
    """Lightning sets its loggers to INFO on import; import it first, then turn them down."""
    import lightning.pytorch  # noqa: F401

    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    from transformers.utils import logging as hf_logging

    # the PRRC rater's "classifier newly initialised" load report and weight-loading bars are
    # expected (a fresh head on a pretrained encoder); the asset logs its own summary
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
warnings.filterwarnings("ignore", category=dg.PreviewWarning)


#: Pool-level fits that new data alone does not redo: the DSIR raw distribution, the PRRC labels
#: and rater, the tokenizer and the proxy runs (and so the regressor). They run when missing, when their own code or config
#: changed, with --force ASSET, or all of them with --refit.
ON_REQUEST = frozenset({"dsir_model", "prrc_annotations", "prrc_rater", "tokenizer", "proxy_run"})


@dataclass
class RunSummary:
    materialised: list[tuple[str, str | None]] = field(default_factory=list)
    failed: list[dict] = field(default_factory=list)
    new_shards: list[str] = field(default_factory=list)
    changed_shards: list[str] = field(default_factory=list)


def _coalesce(stages: list[str]) -> list[tuple[str, list]]:
    """The steps of each stage, with a stage's first shard step merged into the previous stage's
    last shard step (ingest + first scores run as one Dagster run per shard: less overhead)."""
    out: list[tuple[str, list]] = []
    for st in stages:
        steps = list(STEPS[st])
        if out and steps and steps[0][1] == "shards" and out[-1][1][-1][1] == "shards":
            name, prev = out[-1]
            prev[-1] = (prev[-1][0] + steps[0][0], "shards")
            out[-1] = (f"{name}+{st}", prev)
            steps = steps[1:]
        if steps:
            out.append((st, steps))
    return out


def register_shards(instance: dg.DagsterInstance, raw_uri: str) -> tuple[list[str], list[str], dict[str, str]]:
    """Add a partition for each new shard file; return (new, changed, key -> fingerprint)."""
    files = corpus.list_shards(raw_uri)
    registered = set(instance.get_dynamic_partitions(shards.name))
    new = [f.key for f in files if f.key not in registered]
    if new:
        instance.add_dynamic_partitions(shards.name, new)
    changed = []
    for f in files:
        if f.key in new:
            continue
        rec = _latest(instance, "raw_docs", f.key)
        fp = rec.metadata.get("fingerprint") if rec else None
        if fp is not None and getattr(fp, "value", fp) != f.fingerprint:
            changed.append(f.key)
    return new, changed, {f.key: f.fingerprint for f in files}


def _latest(instance: dg.DagsterInstance, key: str, partition: str | None):
    result = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey(key),
                              asset_partitions=[partition] if partition else None), limit=1)
    if not result.records:
        return None
    return result.records[0].asset_materialization


def user_error(err) -> str:
    """The first error in a chain that is not a Dagster wrapper, as 'Class: message'."""

    def short(e):
        return e.cls_name.rsplit(".", 1)[-1]

    while short(err).startswith("Dagster") and err.cause is not None:
        err = err.cause
    msg = err.message.strip()
    if short(err) == "Failure":
        return msg.split("Failure: ", 1)[-1] if msg.startswith("dagster.") else msg
    return msg if msg.startswith(f"{short(err)}:") else f"{short(err)}: {msg}"


def _error_message(result) -> str:
    for ev in result.all_events:
        if ev.is_step_failure:
            return user_error(ev.step_failure_data.error)
    for ev in result.all_events:
        if ev.event_type_value == "ASSET_CHECK_EVALUATION":
            data = ev.event_specific_data
            if not data.passed:
                return f"asset check {data.check_name} failed"
    return "run failed"


def run_pipeline(settings: Settings, stage: str, instance: dg.DagsterInstance | None = None,
                 echo: Callable[[str], None] = print, force: tuple[str, ...] = (),
                 refit: bool = False) -> RunSummary:
    """Materialise, stage by stage up to ``stage``, every asset partition that is missing or stale
    (``ON_REQUEST`` assets: only when missing, their own code/config changed, forced or ``refit``)."""
    if stage not in STEPS:
        raise ValueError(f"unknown stage {stage!r}; stages: {', '.join(STEPS)}")
    instance = instance or dg.DagsterInstance.get()
    quiet_lightning()
    from .core.config import load_config

    assets = all_assets(load_config(settings.config_path))  # a broken config stops here, clearly
    resources = build_resources(settings)
    summary = RunSummary()
    new, changed, _ = register_shards(instance, settings.raw_uri)
    summary.new_shards, summary.changed_shards = new, changed
    if new:
        echo(f"registered {len(new)} new shard(s): {', '.join(new)}")
    if changed:
        echo(f"{len(changed)} shard file(s) changed since ingest: {', '.join(changed)}")
    present = {f.key for f in corpus.list_shards(settings.raw_uri)}
    if not present:
        echo(f"warning: no shard files under {settings.raw_uri} (looked for {', '.join(sorted(corpus.FORMATS))}; "
             "dot-files and partial uploads are ignored)")
    failed_shards: set[str] = set()
    stages = list(STEPS)[: list(STEPS).index(stage) + 1]
    for st, steps in _coalesce(stages):
        echo(f"== stage {st}")
        for keys, part in steps:
            if part == "shards":
                partitions = [k for k in sorted(instance.get_dynamic_partitions(shards.name))
                              if k in present and k not in failed_shards]
            elif part == "proxy_runs":
                partitions = sorted(instance.get_dynamic_partitions(proxy_runs.name))
            else:
                partitions = [None]
            res = Staleness(instance, assets)  # partitions of one step never feed each other
            for pk in partitions:
                todo = []
                for k in keys:
                    why = "forced" if k in force else res.needs_run(k, pk)
                    if why == "stale" and k in ON_REQUEST and not refit and not res.own_code_changed(k, pk):
                        why = None  # upstream data changed (e.g. a new shard): refit on request
                    if why is None and k == "raw_docs" and pk in changed:
                        why = "file changed"
                    if why:
                        todo.append((k, why))
                if not todo:
                    continue
                sel = [k for k, _ in todo]
                if "raw_docs" in sel or "raw_quarantine" in sel:  # one multi-asset: both or neither
                    sel = ["raw_docs", "raw_quarantine"] + [k for k in sel if not k.startswith("raw_")]
                label = ", ".join(sel) + (f" [{pk}]" if pk else "")
                t0 = time.perf_counter()
                result = dg.materialize(assets, selection=sel, partition_key=pk, instance=instance,
                                        resources=resources, raise_on_error=False, run_config=LOGS,
                                        tags={"metarater/cli": "run", "metarater/stage": st,
                                              "metarater/assets": ",".join(sel)})
                dt = time.perf_counter() - t0
                if result.success:
                    echo(f"  ok   {label} ({todo[0][1]}, {dt:.1f}s)")
                    summary.materialised.extend((k, pk) for k in sel)
                else:
                    msg = _error_message(result)
                    echo(f"  FAIL {label}: {msg}")
                    summary.failed.append({"assets": sel, "partition": pk, "error": msg})
                    if part == "shards":
                        failed_shards.add(pk)
                    elif part is None:
                        echo(f"stopping: {label} failed")
                        return summary
    return summary
