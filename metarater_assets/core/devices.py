"""Which accelerator a step uses when several GPU steps share a machine.

Dagster runs steps in parallel processes (the multiprocess executor, several runs at once, or
``metarater run`` with ``compute.workers`` > 1). Left alone, every one of them would open
``cuda:0``. ``claim_device`` gives each process its own device for the duration of the step: it
takes an exclusive, non-blocking ``flock`` on ``<lock_dir>/device-<i>.lock`` for the first free
device in ``devices`` (waiting, polling, while all are taken), and releases it on exit, or when the
process dies (the kernel drops its locks). Devices come from ``CUDA_VISIBLE_DEVICES`` order, i.e.
indices ``0..n-1`` as torch numbers them.
"""
from __future__ import annotations

import fcntl
import os
import tempfile
import time
from contextlib import contextmanager
from typing import Iterator, Sequence


def usable_cpus() -> int:
    """The CPUs this process may use: its affinity mask and its cgroup's CPU quota (a container
    given 4 CPUs on a 64-core host: 4), as joblib counts them. ``os.cpu_count()`` counts the host's
    CPUs, and sizing pools by it oversubscribes a container."""
    from joblib import cpu_count

    return max(1, int(cpu_count()))


def default_lock_dir() -> str:
    return os.environ.get("METARATER_DEVICE_LOCKS") or os.path.join(tempfile.gettempdir(), "metarater-devices")


@contextmanager
def claim_device(devices: Sequence[int], lock_dir: str | None = None, poll: float = 0.2,
                 timeout: float | None = None) -> Iterator[int]:
    """Hold one device of ``devices`` that no other process holds; yield its index."""
    if not devices:
        raise ValueError("no devices to claim")
    lock_dir = lock_dir or default_lock_dir()
    os.makedirs(lock_dir, exist_ok=True)
    start = time.monotonic()
    while True:
        for d in devices:
            fd = os.open(os.path.join(lock_dir, f"device-{d}.lock"), os.O_CREAT | os.O_RDWR, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            try:
                os.ftruncate(fd, 0)
                os.write(fd, str(os.getpid()).encode())
                yield d
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)
            return
        if timeout is not None and time.monotonic() - start > timeout:
            raise TimeoutError(f"all {len(devices)} devices stayed busy for {timeout:.0f}s")
        time.sleep(poll)


def visible_gpus() -> list[int]:
    """Indices torch can use (0..n-1), or [] without CUDA."""
    import torch

    return list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
