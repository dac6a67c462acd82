"""Plain evaluation: the val stream cut into non-overlapping windows of seq_len targets.

The stream has N tokens, so N-1 targets; window i predicts tokens [i*L+1, (i+1)*L] from
[i*L, (i+1)*L - 1]. The last window may be shorter, so every target is scored exactly once.
Windows are split across ranks in contiguous blocks; the accumulator reduces exactly.
"""
from __future__ import annotations

import numpy as np
import torch

from pgolf.data.tokenizer import ByteTables
from pgolf.metric import BpbAccumulator


def window_starts(n_tokens: int, seq_len: int) -> list[tuple[int, int]]:
    """(start, length) of each window; targets are tokens start+1 .. start+length."""
    n_targets = n_tokens - 1
    return [(s, min(seq_len, n_targets - s)) for s in range(0, n_targets, seq_len)]


def rank_slice(items: list, rank: int, world: int) -> list:
    per = (len(items) + world - 1) // world
    return items[rank * per: (rank + 1) * per]


@torch.no_grad()
def evaluate_plain(model: torch.nn.Module, tokens: np.ndarray, tables: ByteTables, seq_len: int,
                   batch_seqs: int = 32, device: torch.device | str = "cpu", rank: int = 0, world: int = 1,
                   doc_isolated: bool = False, autocast_dtype: torch.dtype | None = None,
                   progress: bool = False) -> dict:
    """val_loss / val_bpb / tokens / bytes of `model` over `tokens` (int array, BOS-separated docs)."""
    device = torch.device(device)
    was_training = model.training
    model.eval()
    base, lead, boundary = tables.torch(device)
    stream = torch.as_tensor(np.asarray(tokens, dtype=np.int64))
    acc = BpbAccumulator()
    windows = rank_slice(window_starts(len(stream), seq_len), rank, world)
    # Full-length windows batch together; a short tail window runs on its own.
    groups: list[list[tuple[int, int]]] = []
    for w in windows:
        if groups and len(groups[-1]) < batch_seqs and groups[-1][0][1] == w[1]:
            groups[-1].append(w)
        else:
            groups.append([w])
    it = groups
    if progress:
        from tqdm import tqdm

        it = tqdm(groups, desc="eval plain", unit="batch", leave=False, disable=None)
    for group in it:
        length = group[0][1]
        x = torch.stack([stream[s: s + length] for s, _ in group]).to(device)
        y = torch.stack([stream[s + 1: s + 1 + length] for s, _ in group]).to(device)
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            nll = model(x, y, reduction="none", doc_isolated=doc_isolated)
        nbytes = base[y] + (lead[y] & ~boundary[x]).to(torch.int64)
        acc.add(nll.float(), nbytes)
    acc = acc.all_reduce(device)
    if was_training:
        model.train()
    return acc.result()
