"""Dynamic padding and length-ordered batches (LM evaluation, model raters, rater training)."""
from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np


def pad(seqs: Sequence[Sequence[int]], pad_id: int):
    """(ids (B, T), attention mask (B, T)) long tensors, padded to the longest sequence."""
    import torch

    width = max((len(s) for s in seqs), default=0)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for r, s in enumerate(seqs):
        ids[r, :len(s)] = torch.as_tensor(np.asarray(s, dtype=np.int64))
        mask[r, :len(s)] = 1
    return ids, mask


def padded_batches(seqs: Sequence[Sequence[int]], batch_size: int, pad_id: int,
                   sort_by_length: bool = True) -> Iterator[tuple]:
    """Yield (indices into ``seqs``, ids (B, T), attention mask (B, T) long) per batch, each padded
    to its own longest sequence; with ``sort_by_length`` similar lengths share a batch."""
    lengths = [len(s) for s in seqs]
    order = np.argsort(lengths, kind="stable") if sort_by_length else np.arange(len(seqs))
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        ids, mask = pad([seqs[i] for i in idx], pad_id)
        yield idx, ids, mask
