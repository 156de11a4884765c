"""Runs whose worker process died: found by the process that ran them, and marked failed.

``metarater run`` executes each Dagster run in its own process (itself, or one of its workers).
A process killed outright (the OOM killer, SIGKILL, a lost machine) never records its run's end,
so the run would stay STARTED forever: the UI shows it in progress, nothing retries it and the
report never lists it. Each run therefore carries the pid and host of the process running it
(``run_tags``); ``mark_dead_runs`` finds the in-progress CLI runs of this host whose process is
gone (or whose pid now belongs to another process) and marks them failed through Dagster's
public ``DagsterInstance.report_run_failed``. Runs of other hosts are left alone: their
processes cannot be seen from here.

Runs the daemon launches are watched by Dagster itself: the code server that started a run
worker marks its run failed when the worker exits without finishing it, and ``run_monitoring``
in dagster.yaml fails runs stuck starting or canceling.
"""
from __future__ import annotations

import os
import socket

import dagster as dg

CLI_TAG = "metarater/cli"
PID_TAG = "metarater/pid"
HOST_TAG = "metarater/host"
#: the process's start time (clock ticks since boot, /proc/<pid>/stat), so a reused pid is told apart
PID_START_TAG = "metarater/pid_start"

IN_PROGRESS = [dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED]


def _proc_stat(pid: int) -> tuple[str, str] | None:
    """(state, start time in clock ticks since boot) of ``pid`` from /proc, None where there is
    no /proc entry (no such process, or not Linux)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            data = f.read()
    except OSError:
        return None
    fields = data[data.rindex(")") + 2:].split()  # after "pid (comm) ": state is field 3, starttime field 22
    return fields[0], fields[19]


def run_tags() -> dict[str, str]:
    """The tags naming the process that runs a run: its pid, host and (on Linux) start time."""
    pid = os.getpid()
    tags = {PID_TAG: str(pid), HOST_TAG: socket.gethostname()}
    stat = _proc_stat(pid)
    if stat is not None:
        tags[PID_START_TAG] = stat[1]
    return tags


def process_alive(pid: int, started: str | None = None) -> bool:
    """Whether process ``pid`` still runs, and is the one that started at ``started`` (ticks)
    when that is known. A zombie (killed, not yet reaped) is dead."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        pass
    stat = _proc_stat(pid)
    if stat is None:
        return True  # no /proc: the pid exists, nothing more to compare
    state, start = stat
    if state == "Z":
        return False
    return started is None or start == started


def run_assets(instance: dg.DagsterInstance, run: dg.DagsterRun) -> set[str]:
    """The assets a run was to materialise: its asset selection, else the ``metarater/assets`` tag
    of ``metarater run``, else its planned materialisations (a whole asset job, or a run of
    ``materialize``, which records an empty selection)."""
    if run.asset_selection:
        return {k.to_user_string() for k in run.asset_selection}
    if run.tags.get("metarater/assets"):
        return set(run.tags["metarater/assets"].split(","))
    return {ev.dagster_event.event_specific_data.asset_key.to_user_string()
            for ev in instance.all_logs(run.run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION_PLANNED)
            if ev.dagster_event is not None}


def dead_runs(instance: dg.DagsterInstance) -> list[dg.DagsterRun]:
    """The in-progress runs of ``metarater run`` on this host whose process is gone."""
    host = socket.gethostname()
    out = []
    for rec in instance.get_run_records(dg.RunsFilter(statuses=IN_PROGRESS, tags={CLI_TAG: "run"})):
        run = rec.dagster_run
        pid = run.tags.get(PID_TAG)
        if not pid or not pid.isdigit() or run.tags.get(HOST_TAG) != host:
            continue  # not tagged with its process (an older run), or another host's
        if not process_alive(int(pid), run.tags.get(PID_START_TAG)):
            out.append(run)
    return out


def mark_dead_runs(instance: dg.DagsterInstance) -> list[str]:
    """Mark failed every in-progress ``metarater run`` run of this host whose process died; return
    their run ids."""
    marked = []
    for run in dead_runs(instance):
        pid, host = run.tags[PID_TAG], run.tags[HOST_TAG]
        instance.report_run_failed(
            run, f"The worker process that ran this run (pid {pid} on {host}) died before the run ended: "
                 "killed by the OOM killer or SIGKILL, or crashed. Marked failed by metarater.")
        marked.append(run.run_id)
    return marked
