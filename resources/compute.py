"""Where model work runs: Lightning accelerator, devices, precision (bf16 on GPU, fp32 on CPU),
and, when several GPU steps share a machine, which GPU each one takes."""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import replace
from typing import Iterator

import dagster as dg

from metarater_assets.core.proxy_lm import Compute


class ComputeResource(dg.ConfigurableResource):
    accelerator: str = "auto"
    """'cpu', 'gpu' or 'auto' (GPU when torch sees one)."""
    devices: int = 1
    precision: str = "auto"
    """'auto' = bf16-mixed on a GPU that supports it, else 32-true."""
    threads: int = 0
    """CPU threads for torch (0 = torch's default)."""
    strategy: str = "auto"
    """Lightning strategy: 'auto', 'ddp' (GPUs), 'ddp_fork' (CPU processes), ..."""

    def resolve(self) -> Compute:
        import torch

        acc = self.accelerator
        if acc == "auto":
            acc = "gpu" if torch.cuda.is_available() else "cpu"
        prec = self.precision
        if prec == "auto":
            prec = "bf16-mixed" if acc == "gpu" and torch.cuda.is_bf16_supported() else "32-true"
        return Compute(accelerator=acc, devices=self.devices, precision=prec,
                       strategy=self.strategy, threads=self.threads or None)

    @contextmanager
    def claim(self) -> Iterator[Compute]:
        """The resolved compute for one step; on a GPU machine with one device per step, a GPU no
        other concurrent step holds (``core.devices.claim_device``), as ``devices=[i]``."""
        comp = self.resolve()
        if comp.accelerator != "gpu" or self.devices != 1:
            yield comp
            return
        from metarater_assets.core.devices import claim_device, visible_gpus

        with claim_device(visible_gpus()) as i:
            yield replace(comp, devices=[i])
