"""Concurrent GPU steps on one machine take distinct devices (a fake device list: no GPU here)."""
import multiprocessing as mp
import time

from metarater_assets.core.devices import claim_device


def _hold(lock_dir, devices, q, hold):
    with claim_device(devices, lock_dir=lock_dir, poll=0.05) as d:
        q.put((d, time.monotonic()))
        time.sleep(hold)
    q.put(("released", d))


def test_concurrent_steps_get_distinct_devices(tmp_path):
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=_hold, args=(str(tmp_path), [0, 1, 2], q, 2.0)) for _ in range(3)]
    for p in procs:
        p.start()
    got = [q.get(timeout=60) for _ in range(3)]
    assert sorted(d for d, _ in got) == [0, 1, 2]  # three at once, three devices
    # a fourth waits until one is released, then takes that one
    late = ctx.Process(target=_hold, args=(str(tmp_path), [0, 1, 2], q, 0.1))
    late.start()
    released = set()
    for _ in range(5):
        e = q.get(timeout=60)
        if e[0] == "released":
            released.add(e[1])
        else:  # the fourth claim: only after a release, of a released device
            assert e[0] in released, (e, released)
    for p in procs + [late]:
        p.join(30)
        assert p.exitcode == 0


def test_a_dead_holder_frees_its_device(tmp_path):
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_hold, args=(str(tmp_path), [0], q, 60))
    p.start()
    assert q.get(timeout=60)[0] == 0
    p.kill()
    p.join()
    with claim_device([0], lock_dir=str(tmp_path), poll=0.05, timeout=10) as d:
        assert d == 0


def test_pools_are_sized_by_the_cpus_this_process_may_use(monkeypatch):
    """A container given one CPU of a 64-core host (its affinity mask here): the local engine's
    workers, the evaluation's training workers and `metarater init`'s machine preset count one CPU,
    not the host's 64 (the PRRC probe's fits and the engine's threads per worker use the same count)."""
    import os
    from types import SimpleNamespace

    from metarater_assets import init, runner
    from metarater_assets.core import proxy_lm, trainings
    from metarater_assets.core.devices import usable_cpus

    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})
    monkeypatch.delenv("LOKY_MAX_CPU_COUNT", raising=False)
    assert usable_cpus() == 1
    assert runner._workers(SimpleNamespace(compute={"workers": "auto"}), None) == 1
    assert runner._workers(SimpleNamespace(compute={}), None) == 1
    assert trainings.training_workers(proxy_lm.Compute(), 9, 150_000)[0] == 1
    assert init.machine_preset()["cpus"] == 1
