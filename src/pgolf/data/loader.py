"""Training loaders over challenge shards: rank-aware, deterministic, resumable, optionally prefetched.

- SequentialLoader: the baseline stream. Shards are read in order as one token stream (wrapping at the
  end); each step the ranks take consecutive disjoint spans of micro_batch_tokens + 1 tokens.
- PackedLoader: the records' document packing (PR #1855's DocumentPackingLoader). One row of
  micro_batch_tokens per rank and step, cut from the current shard starting at its first BOS; ranks take
  consecutive spans of micro_batch_tokens + 1; a shard whose rest cannot hold a step is left for the
  next (wrapping at the end). Documents are separated by the model's doc-isolated attention.
- ShuffledLoader: each rank owns a disjoint subset of shards (round-robin; with fewer shards than ranks
  all ranks share the shards and split the sequence starts instead). Per epoch and shard a random phase
  in [0, seq_len) sets the sequence grid, and the rank visits its sequences in a random order.

They return (x, y) int64 tensors of shape [micro_batch_tokens // seq_len, seq_len] ([1, micro_batch_tokens]
when packed), y = x shifted by one.
A loader is a pure function of its small state (position / epoch + index): state_dict() reports the
position after the last batch handed out (not what the prefetch thread has read ahead), so
load_state_dict() on a fresh loader continues with exactly the batches an uninterrupted run would see.
"""
from __future__ import annotations

import bisect
import os
from abc import ABC, abstractmethod
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Sequence

import numpy as np
import torch

from pgolf.data.shards import read_shard
from pgolf.errors import InputError

Batch = tuple[torch.Tensor, torch.Tensor]


class _Loader(ABC):
    """Shared machinery: argument checks, shard maps, the prefetch thread and state handling."""

    kind = ""

    def __init__(self, shard_paths: Sequence[str | os.PathLike], seq_len: int, micro_batch_tokens: int,
                 rank: int, world_size: int, vocab_size: int | None, prefetch: int):
        if not shard_paths:
            raise InputError("loader: no shard files given")
        if seq_len < 1:
            raise InputError(f"loader: seq_len must be >= 1, got {seq_len}")
        if micro_batch_tokens < seq_len or micro_batch_tokens % seq_len:
            raise InputError(f"loader: micro_batch_tokens ({micro_batch_tokens}) must be a positive "
                             f"multiple of seq_len ({seq_len})")
        if world_size < 1 or not 0 <= rank < world_size:
            raise InputError(f"loader: need 0 <= rank < world_size, got rank={rank} world_size={world_size}")
        if prefetch < 0:
            raise InputError(f"loader: prefetch must be >= 0, got {prefetch}")
        self.seq_len, self.micro_batch_tokens = seq_len, micro_batch_tokens
        self.batch_size = micro_batch_tokens // seq_len
        self.rank, self.world_size = rank, world_size
        self.paths = [str(p) for p in shard_paths]
        self.shards = [read_shard(p, vocab_size) for p in self.paths]
        self.prefetch = prefetch
        self._state: dict[str, Any] = {}
        self._pool: ThreadPoolExecutor | None = None  # prefetch: steps submitted ahead, in order
        self._ahead: deque[Future] = deque()
        self._tail: dict[str, Any] = {}  # the state after the last submitted step

    @abstractmethod
    def _step(self, state: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
        """A pure step: (x, y, next state) from a state; never mutates self."""

    def _check_state(self, state: dict[str, Any]) -> None:
        if state.get("kind") != self.kind:
            raise InputError(f"loader state is for a {state.get('kind')!r} loader, not {self.kind!r}")

    # -- public API --
    def next_batch(self) -> Batch:
        if self.prefetch == 0:
            x, y, self._state = self._step(self._state)
        else:
            if self._pool is None:  # one worker runs the steps in order, each from the previous one's state
                self._pool, self._tail = ThreadPoolExecutor(1, thread_name_prefix=f"pgolf-{self.kind}-loader"), self._state
            while len(self._ahead) <= self.prefetch:
                self._ahead.append(self._pool.submit(self._read_ahead))
            x, y, self._state = self._ahead.popleft().result()  # a failed step raises here
        return torch.from_numpy(x), torch.from_numpy(y)

    def _read_ahead(self) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
        x, y, self._tail = self._step(self._tail)
        return x, y, self._tail

    def state_dict(self) -> dict[str, Any]:
        return dict(self._state)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._check_state(state)
        self.close()  # the read-ahead belongs to the old position
        self._state = dict(state)

    def close(self) -> None:
        for f in self._ahead:
            f.cancel()
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        self._pool, self._ahead = None, deque()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    def _xy(self, buf: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """[B, L+1] int64 rows -> contiguous (x, y)."""
        return np.ascontiguousarray(buf[:, :-1]), np.ascontiguousarray(buf[:, 1:])


class SequentialLoader(_Loader):
    """The baseline stream; rank r takes span r of world_size consecutive spans each step."""

    kind = "sequential"

    def __init__(self, shard_paths: Sequence[str | os.PathLike], seq_len: int, micro_batch_tokens: int,
                 rank: int = 0, world_size: int = 1, vocab_size: int | None = None, prefetch: int = 0):
        super().__init__(shard_paths, seq_len, micro_batch_tokens, rank, world_size, vocab_size, prefetch)
        sizes = [len(s) for s in self.shards]
        self.offsets = np.cumsum([0] + sizes).tolist()  # shard i covers [offsets[i], offsets[i+1])
        self.total = self.offsets[-1]
        self.span = micro_batch_tokens + 1  # x and its shifted y; spans of different ranks never share a token
        if self.total < self.span * world_size:
            raise InputError(f"{self.paths[0]}...: {self.total} tokens in {len(self.paths)} shard(s) < one step "
                             f"({world_size} ranks x {self.span} tokens)")
        self._state = {"kind": self.kind, "pos": 0}

    def _check_state(self, state: dict[str, Any]) -> None:
        super()._check_state(state)
        if not isinstance(state.get("pos"), int) or not 0 <= state["pos"] < self.total:
            raise InputError(f"loader state pos {state.get('pos')!r} outside the stream of {self.total} tokens")

    def _read(self, start: int, n: int) -> np.ndarray:
        """n tokens of the wrapped global stream from position start."""
        out = np.empty(n, dtype=np.int64)
        have, pos = 0, start % self.total
        while have < n:
            i = bisect.bisect_right(self.offsets, pos) - 1
            lo = pos - self.offsets[i]
            take = min(n - have, self.offsets[i + 1] - pos)
            out[have: have + take] = self.shards[i][lo: lo + take]
            have += take
            pos = (pos + take) % self.total
        return out

    def _step(self, state):
        pos = state["pos"]
        buf = self._read(pos + self.rank * self.span, self.span)
        x = buf[:-1].reshape(self.batch_size, self.seq_len)
        y = buf[1:].reshape(self.batch_size, self.seq_len)
        nxt = {"kind": self.kind, "pos": (pos + self.world_size * self.span) % self.total}
        return x, y, nxt


class PackedLoader(_Loader):
    """The records' packed layout: one row per rank and step, from a document start on (see above)."""

    kind = "packed"

    def __init__(self, shard_paths: Sequence[str | os.PathLike], seq_len: int, micro_batch_tokens: int,
                 rank: int = 0, world_size: int = 1, vocab_size: int | None = None, prefetch: int = 0,
                 bos_id: int = 1):
        super().__init__(shard_paths, seq_len, micro_batch_tokens, rank, world_size, vocab_size, prefetch)
        self.span = micro_batch_tokens + 1
        self.step_tokens = self.span * world_size
        # where a shard's steps start: its first BOS, or its end when no step fits after that (skipped)
        self.firsts = []
        for shard in self.shards:
            bos = np.flatnonzero(shard == bos_id)
            fits = len(bos) and len(shard) - int(bos[0]) >= self.step_tokens
            self.firsts.append(int(bos[0]) if fits else len(shard))
        usable = [i for i, (f, shard) in enumerate(zip(self.firsts, self.shards)) if f < len(shard)]
        if not usable:
            raise InputError(f"{self.paths[0]}...: no shard holds one step ({world_size} ranks x {self.span} "
                             f"tokens) after its first BOS ({bos_id})")
        first = usable[0]
        self._state = {"kind": self.kind, "shard": first, "cursor": self.firsts[first]}

    def _check_state(self, state: dict[str, Any]) -> None:
        super()._check_state(state)
        s, c = state.get("shard"), state.get("cursor")
        if not (isinstance(s, int) and 0 <= s < len(self.shards) and isinstance(c, int)
                and 0 <= c <= len(self.shards[s]) - self.step_tokens):
            raise InputError(f"loader state shard={s!r} cursor={c!r} is not a position of these shards")

    def _step(self, state):
        s, cursor = state["shard"], state["cursor"]
        while cursor + self.step_tokens > len(self.shards[s]):  # the record drops the shard's rest
            s = (s + 1) % len(self.shards)
            cursor = self.firsts[s]
        a = cursor + self.rank * self.span
        buf = np.asarray(self.shards[s][a: a + self.span], dtype=np.int64)
        return buf[None, :-1].copy(), buf[None, 1:].copy(), {"kind": self.kind, "shard": s,
                                                            "cursor": cursor + self.step_tokens}


class ShuffledLoader(_Loader):
    """Random sequences from the rank's own shards; every epoch a new phase and order."""

    kind = "shuffled"

    def __init__(self, shard_paths: Sequence[str | os.PathLike], seq_len: int, micro_batch_tokens: int,
                 rank: int = 0, world_size: int = 1, seed: int = 0, vocab_size: int | None = None,
                 prefetch: int = 0):
        super().__init__(shard_paths, seq_len, micro_batch_tokens, rank, world_size, vocab_size, prefetch)
        if seed < 0:
            raise InputError(f"loader: seed must be >= 0, got {seed}")
        self.seed = seed
        # Fewer shards than ranks: every rank sees all shards and takes every world_size-th sequence.
        self.split_starts = len(self.shards) < world_size
        self.own = list(range(len(self.shards))) if self.split_starts else list(range(rank, len(self.shards),
                                                                                        world_size))
        self._plan_cache: tuple[int, np.ndarray, np.ndarray] | None = None
        self._state = {"kind": self.kind, "seed": seed, "world_size": world_size, "epoch": 0, "index": 0}
        self.plan(0)  # fails early when the shards hold no full sequence

    def _check_state(self, state: dict[str, Any]) -> None:
        super()._check_state(state)
        for key in ("seed", "world_size"):
            if state.get(key) != getattr(self, key):
                raise InputError(f"loader state has {key}={state.get(key)!r}, this loader {getattr(self, key)!r}")

    def plan(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """(shard index, start) of each of this rank's sequences in visiting order for an epoch."""
        cached = self._plan_cache
        if cached is not None and cached[0] == epoch:
            return cached[1], cached[2]
        L = self.seq_len
        shard_ids, starts = [], []
        for s in self.own:
            # The phase depends on (seed, epoch, shard) only, so ranks sharing a shard share its grid.
            phase = int(np.random.default_rng([self.seed, epoch, s, 0]).integers(L))
            n = max((len(self.shards[s]) - 1 - phase) // L, 0)  # each sequence needs L + 1 tokens
            starts.append(phase + L * np.arange(n, dtype=np.int64))
            shard_ids.append(np.full(n, s, dtype=np.int32))
        sid, st = np.concatenate(shard_ids), np.concatenate(starts)
        if self.split_starts:
            order = np.random.default_rng([self.seed, epoch, 2]).permutation(len(st))[self.rank::self.world_size]
        else:
            order = np.random.default_rng([self.seed, epoch, self.rank, 1]).permutation(len(st))
        sid, st = sid[order], st[order]
        if len(st) == 0:
            raise InputError(f"{self.paths[self.own[0]] if self.own else self.paths[0]}: rank {self.rank} has no "
                             f"sequence of {L + 1} tokens in its shards (epoch {epoch})")
        self._plan_cache = (epoch, sid, st)
        return sid, st

    def _step(self, state):
        epoch, index = state["epoch"], state["index"]
        L = self.seq_len
        buf = np.empty((self.batch_size, L + 1), dtype=np.int64)
        for row in range(self.batch_size):
            sid, st = self.plan(epoch)
            if index >= len(st):  # epoch done: reshuffle and continue filling this batch
                epoch, index = epoch + 1, 0
                sid, st = self.plan(epoch)
            s, a = int(sid[index]), int(st[index])
            buf[row] = self.shards[s][a: a + L + 1]
            index += 1
        x, y = self._xy(buf)
        return x, y, {**state, "epoch": epoch, "index": index}


def make_loader(kind: str, shard_paths: Sequence[str | os.PathLike], seq_len: int, micro_batch_tokens: int,
                rank: int = 0, world_size: int = 1, seed: int = 0, vocab_size: int | None = None,
                prefetch: int = 0, bos_id: int = 1) -> _Loader:
    """The loader named by DataConfig.loader ('sequential', 'packed' or 'shuffled')."""
    if kind == "sequential":
        return SequentialLoader(shard_paths, seq_len, micro_batch_tokens, rank, world_size, vocab_size, prefetch)
    if kind == "packed":
        return PackedLoader(shard_paths, seq_len, micro_batch_tokens, rank, world_size, vocab_size, prefetch, bos_id)
    if kind == "shuffled":
        return ShuffledLoader(shard_paths, seq_len, micro_batch_tokens, rank, world_size, seed, vocab_size, prefetch)
    raise InputError(f"data.loader: {kind!r} is not a loader (expected 'sequential', 'packed' or 'shuffled')")
