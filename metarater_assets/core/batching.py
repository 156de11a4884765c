"""Length-ordered batches with dynamic padding (shared by LM evaluation and model raters)."""
from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np
import torch


def padded_batches(seqs: Sequence[Sequence[int]], batch_size: int, pad_id: int,
                   sort_by_length: bool = True) -> Iterator[tuple[np.ndarray, torch.Tensor, torch.Tensor]]:
    """Yield (indices into ``seqs``, ids (B, T), attention mask (B, T) long) per batch, each padded
    to its own longest sequence; with ``sort_by_length`` similar lengths share a batch."""
    lengths = [len(s) for s in seqs]
    order = np.argsort(lengths, kind="stable") if sort_by_length else np.arange(len(seqs))
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        width = max(lengths[i] for i in idx)
        ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for r, i in enumerate(idx):
            ids[r, :lengths[i]] = torch.as_tensor(np.asarray(seqs[i], dtype=np.int64))
            mask[r, :lengths[i]] = 1
        yield idx, ids, mask
