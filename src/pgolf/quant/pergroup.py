"""Per-group compression (quant.codec = "pergroup"): the int values of each weight role in their own
section, through the best of several codecs; everything else through brotli.

A role is a weight's name without its block index (blocks.3.mlp.fc.weight -> mlp.fc.weight), so all
layers' fc values share one stream and its statistics. The values are stored column-major (a column
of a weight matrix is one input feature: its values share a scale across rows), and the rows of the
`sort` roles are first put in L1 nearest-neighbour order, so that neighbouring rows are alike; that
order is stored (role p) and undone on reading. Measured in docs/benchmarks.md ("Codecs").
"""
from __future__ import annotations

import fnmatch
import hashlib
from typing import Mapping

import numpy as np
import torch

from pgolf.quant.codecs import compress
from pgolf.quant.container import Section, Storage, Stored, roles
from pgolf.quant.quantizers import QuantizedTensor

REMAINDER_CODEC = "brotli"


def role_of(name: str) -> str:
    parts = name.split(".")
    return ".".join(parts[2:]) if len(parts) > 2 and parts[0] == "blocks" and parts[1].isdigit() else name


def l1_order(q: torch.Tensor, chunk: int = 1024) -> np.ndarray:
    """Greedy nearest-neighbour chain over rows by L1 distance, from row 0."""
    x = q.float()
    n = x.shape[0]
    dist = torch.cat([torch.cdist(x[i:i + chunk], x, p=1) for i in range(0, n, chunk)]) if n else x
    dist.fill_diagonal_(float("inf"))
    order = np.empty(n, dtype=np.int64)
    cur = 0
    for k in range(n):
        order[k] = cur
        dist[:, cur] = float("inf")
        if k + 1 < n:
            cur = int(torch.argmin(dist[cur]))
    return order


def pergroup_storage(tensors: Mapping[str, Stored], codecs: tuple[str, ...], sort: tuple[str, ...],
                     compressed: dict) -> tuple[Storage, list[dict]]:
    """The Storage for `tensors` and a row per section (role, codec, raw and compressed bytes, and
    what every candidate codec gave). `compressed` collects (codec, sha256(raw)) -> blob, so the
    writer does not compress the winners again."""
    groups: dict[str, list[str]] = {}
    for name, t in tensors.items():
        if isinstance(t, QuantizedTensor) and t.q.ndim == 2 and t.q.numel():
            groups.setdefault(role_of(name), []).append(name)
    storage = Storage([])
    grouped = {(n, "q") for names in groups.values() for n in names}
    report = []
    for role, names in groups.items():
        raw = []
        for n in names:
            q = tensors[n].q
            if any(fnmatch.fnmatchcase(role, p) for p in sort):
                storage.perms[n] = l1_order(q)
                q = q[torch.as_tensor(storage.perms[n])]
            storage.columns.add(n)
            raw.append(q.T.contiguous().numpy().tobytes() if tensors[n].bits > 4 else None)
        if any(r is None for r in raw):  # packed low-bit values: left to the remainder
            storage.perms = {k: v for k, v in storage.perms.items() if k not in names}
            storage.columns -= set(names)
            grouped -= {(n, "q") for n in names}
            continue
        data = b"".join(raw)
        key = hashlib.sha256(data).hexdigest()
        sizes = {}
        for c in codecs:
            blob = compress(data, c)
            sizes[c] = len(blob)
            if len(blob) == min(sizes.values()):
                compressed[(c, key)] = blob
        best = min(sizes, key=sizes.get)
        storage.sections.append(Section(best, False, [(n, "q") for n in names]))
        report.append({"group": role, "tensors": len(names), "codec": best, "raw_bytes": len(data),
                       "compressed_bytes": sizes[best], "candidates": sizes, "sorted": names[0] in storage.perms})
    rest = [(n, r) for n, t in tensors.items() for r in roles(t) if (n, r) not in grouped]
    rest += [(n, "p") for n in storage.perms]
    storage.sections.insert(0, Section(REMAINDER_CODEC, True, rest))
    return storage, report
