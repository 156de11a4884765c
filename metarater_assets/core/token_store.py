"""On-disk token stores (Megatron-style ``.bin`` / ``.idx``) and step-indexed training windows.

A store is a folder on any fsspec URI:

* ``tokens.bin``: the kept documents' token ids, each followed by EOS, little-endian ``uint16``
  (vocabularies up to 65,535) or ``uint32``;
* ``tokens.idx``: ``int64`` document start offsets (``.npy``), ``n_docs + 1`` of them;
* ``store.json``: dtype, counts and provenance, written **last**: a folder without it is
  incomplete and is never read (a crash while writing leaves nothing that looks complete).

Writers append documents one shard at a time (memory: one document); readers memory-map the
``.bin`` (a remote store is first copied to a local cache), so training holds one batch.

``WindowSource`` cuts the store's token stream into windows of ``seq_len + 1`` tokens and serves
the batch of optimiser step ``s`` as a pure function of ``(s, seed)``: window ``j = s * B + b`` of
the run is stored window ``prp_e(j mod n)`` of epoch ``e = j // n``, ``prp_e`` a seeded Feistel
permutation of ``[0, n)`` (O(1) memory). A resumed run therefore sees exactly the batches an
uninterrupted one would, and each data-parallel rank reads only its slice of a step's batch.
"""
from __future__ import annotations

import glob
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from . import storage as st

STORE_VERSION = "1"
MARKER = "store.json"


class TokenStoreWriter:
    """Append documents; ``close()`` commits ``tokens.bin`` / ``tokens.idx``, then the marker.

    A local store is written in a staging folder beside it (the same disk: committing is a rename,
    and a plan of many runs needs no second copy in temp); an object-store URI is staged in local
    temp and uploaded. Memory: 8 bytes per document (the offsets)."""

    def __init__(self, uri: str, vocab_size: int, eos_id: int, meta: dict | None = None):
        from array import array

        self.uri = uri.rstrip("/")
        self.dtype = np.dtype("<u2") if vocab_size <= 65535 else np.dtype("<u4")
        self.eos = int(eos_id)
        self.vocab_size = int(vocab_size)
        self.meta = dict(meta or {})
        self._local = st.is_local(self.uri)
        if self._local:
            _, path = st.fs_and_path(self.uri)
            parent, name = os.path.dirname(path) or ".", os.path.basename(path)
            os.makedirs(parent, exist_ok=True)
            for old in glob.glob(os.path.join(glob.escape(parent), f".{glob.escape(name)}.staging-*")):
                shutil.rmtree(old, ignore_errors=True)  # what a killed writer of this store left
            self._tmp = tempfile.mkdtemp(prefix=f".{name}.staging-", dir=parent)
        else:
            self._tmp = tempfile.mkdtemp(prefix="metarater-store-")
        self._bin = open(os.path.join(self._tmp, "tokens.bin"), "wb")
        self._offsets = array("q", [0])
        self.n_tokens = 0

    def add(self, ids: np.ndarray) -> None:
        ids = np.asarray(ids)
        if len(ids) and (ids.min() < 0 or ids.max() >= self.vocab_size):
            raise ValueError(f"token ids outside [0, {self.vocab_size})")
        buf = np.empty(len(ids) + 1, dtype=self.dtype)
        buf[:-1] = ids
        buf[-1] = self.eos
        self._bin.write(buf.tobytes())
        self.n_tokens += len(buf)
        self._offsets.append(self.n_tokens)

    @property
    def n_docs(self) -> int:
        return len(self._offsets) - 1

    def close(self) -> dict:
        self._bin.close()
        try:
            idx = os.path.join(self._tmp, "tokens.idx")
            with open(idx, "wb") as f:
                np.save(f, np.frombuffer(self._offsets, dtype=np.int64))
            fs, path = st.fs_and_path(self.uri)
            if fs.exists(f"{path}/{MARKER}"):  # a store is written once; a rewrite drops the old marker first
                fs.rm(f"{path}/{MARKER}")
            for name in ("tokens.bin", "tokens.idx"):
                if self._local:
                    os.makedirs(path, exist_ok=True)
                    st.crash_point(f"{self.uri}/{name}")
                    os.replace(os.path.join(self._tmp, name), os.path.join(path, name))
                else:
                    st.put_atomic(os.path.join(self._tmp, name), f"{self.uri}/{name}")
            info = {"version": STORE_VERSION, "dtype": self.dtype.str, "n_tokens": self.n_tokens,
                    "n_docs": self.n_docs, "eos_id": self.eos, "vocab_size": self.vocab_size, **self.meta}
            st.write_json(info, f"{self.uri}/{MARKER}")
            return info
        finally:
            shutil.rmtree(self._tmp, ignore_errors=True)

    def abort(self) -> None:
        self._bin.close()
        shutil.rmtree(self._tmp, ignore_errors=True)


def is_complete(uri: str) -> bool:
    return st.exists(f"{uri.rstrip('/')}/{MARKER}")


@dataclass
class TokenStore:
    uri: str
    info: dict
    tokens: np.ndarray  # memory-mapped 1-D
    offsets: np.ndarray

    @classmethod
    def open(cls, uri: str, cache_dir: str | None = None) -> "TokenStore":
        uri = uri.rstrip("/")
        if not is_complete(uri):
            raise FileNotFoundError(f"token store {uri} is missing or incomplete (no {MARKER})")
        info = st.read_json(f"{uri}/{MARKER}")
        fs, path = st.fs_and_path(uri)
        if st.is_local(uri):
            local = path
        else:  # object stores: one local copy, reused while it matches
            local = os.path.join(cache_dir or tempfile.gettempdir(), "metarater-stores",
                                 path.strip("/").replace("/", "_"))
            if not (os.path.exists(os.path.join(local, MARKER))
                    and json.load(open(os.path.join(local, MARKER))) == info):
                os.makedirs(local, exist_ok=True)
                for name in ("tokens.bin", "tokens.idx"):
                    fs.get(f"{path}/{name}", os.path.join(local, name))
                with open(os.path.join(local, MARKER), "w") as f:
                    json.dump(info, f)
        tokens = np.memmap(os.path.join(local, "tokens.bin"), dtype=np.dtype(info["dtype"]), mode="r",
                           shape=(int(info["n_tokens"]),)) if info["n_tokens"] else np.zeros(0, np.uint16)
        with open(os.path.join(local, "tokens.idx"), "rb") as f:
            offsets = np.load(f)
        return cls(uri, info, tokens, offsets)

    def doc(self, i: int) -> np.ndarray:
        """Document ``i`` without its trailing EOS."""
        return np.asarray(self.tokens[self.offsets[i]:self.offsets[i + 1] - 1])


def docs_stream(docs: Sequence[np.ndarray], eos_id: int) -> np.ndarray:
    """The token stream a store of ``docs`` holds (each followed by EOS), in memory."""
    parts = []
    for d in docs:
        parts.append(np.asarray(d, dtype=np.int64))
        parts.append(np.array([eos_id], dtype=np.int64))
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


# ------------------------------------------------------------------------------------------
# A seeded permutation of [0, n) in O(1) memory (4-round Feistel network, cycle walking)

_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def _round(x: np.ndarray, key: int, mask: np.uint64) -> np.ndarray:
    with np.errstate(over="ignore"):
        z = x ^ np.uint64(key & 0xFFFFFFFFFFFFFFFF)
        z = (z ^ (z >> np.uint64(33))) * np.uint64(0xFF51AFD7ED558CCD)
        z = (z ^ (z >> np.uint64(33))) * np.uint64(0xC4CEB9FE1A85EC53)
        z = z ^ (z >> np.uint64(33))
    return z & mask


def _keys(seed: int) -> list[int]:
    import xxhash

    return [xxhash.xxh3_64_intdigest(f"metarater-prp:{seed}:{r}".encode()) for r in range(4)]


def permute(j: np.ndarray, n: int, seed: int) -> np.ndarray:
    """``prp(j)`` for ``j`` in ``[0, n)``: a bijection of ``[0, n)`` chosen by ``seed``."""
    if n <= 0:
        raise ValueError("cannot permute an empty range")
    j = np.asarray(j, dtype=np.uint64)
    if n == 1:
        return np.zeros(j.shape, dtype=np.int64)
    half = max(1, ((n - 1).bit_length() + 1) // 2)
    mask = np.uint64((1 << half) - 1)
    keys = _keys(seed)

    def enc(x):
        left, right = x >> np.uint64(half), x & mask
        for k in keys:
            left, right = right, left ^ _round(right, k, mask)
        return (left << np.uint64(half)) | right

    y = enc(j)
    out_of_range = y >= np.uint64(n)
    while out_of_range.any():  # cycle walking: the domain is < 4n, so a few rounds at most
        y[out_of_range] = enc(y[out_of_range])
        out_of_range = y >= np.uint64(n)
    return y.astype(np.int64)


class WindowSource:
    """The training batches of one run: step ``s`` -> (batch, seq_len + 1) token windows."""

    def __init__(self, tokens: np.ndarray, seq_len: int, batch_size: int, seed: int):
        self.tokens = tokens
        self.window = int(seq_len) + 1
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.n_windows = len(tokens) // self.window
        if self.n_windows < 1:
            raise ValueError(f"a selection of {len(tokens)} tokens is shorter than one window of {self.window}")

    def batch(self, step: int, rank: int = 0, world: int = 1) -> np.ndarray:
        """(batch / world, seq_len + 1) int64: this rank's rows ``rank::world`` of step ``step``."""
        j = np.arange(step * self.batch_size, (step + 1) * self.batch_size, dtype=np.int64)[rank::world]
        epoch, pos = j // self.n_windows, j % self.n_windows
        w = np.empty(len(j), dtype=np.int64)
        for e in np.unique(epoch):
            m = epoch == e
            w[m] = permute(pos[m], self.n_windows, self.seed * 1_000_003 + int(e))
        starts = w * self.window
        idx = starts[:, None] + np.arange(self.window)[None, :]
        return np.asarray(self.tokens[idx.reshape(-1)], dtype=np.int64).reshape(len(j), self.window)

    def stream(self, steps: int) -> np.ndarray:
        """Every token the first ``steps`` steps train on, in order (n-gram proxies)."""
        return np.concatenate([self.batch(s).reshape(-1) for s in range(steps)])
