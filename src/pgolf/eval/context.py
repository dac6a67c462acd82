"""What an evaluation method is given, and what the registry knows about each method.

A method is a function `run(ctx) -> dict` that scores every target of `ctx.stream` exactly once
through `ctx.scorer` and returns extra facts (windows, chunks, docs...). The harness computes
val_loss / val_bpb from the Scorer, never from what the method returns. A method must not change
`ctx.model` (methods that adapt weights train a copy).

Each method also declares the order in which targets may depend on each other, which the audit
checks from outside: "stream" (a target depends only on earlier tokens of the stream), "documents"
(only on earlier tokens of its own document) or "queue" (on earlier tokens of its own document and on
whole documents scored before it, in an order the method derives from document lengths alone).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

import torch

from pgolf.config import Config
from pgolf.eval.scorer import Scorer

Order = Literal["stream", "documents", "queue"]


@dataclass
class EvalContext:
    model: torch.nn.Module
    stream: torch.Tensor  # int64 tokens on the device
    scorer: Scorer
    cfg: Config
    device: torch.device
    autocast_dtype: torch.dtype | None = None
    rank: int = 0
    world: int = 1
    progress: bool = False

    @property
    def window(self) -> int:
        return self.cfg.eval.window(self.cfg.train)

    def desc(self, text: str) -> str | None:
        """A progress-bar label when progress is on."""
        return text if self.progress else None


@dataclass(frozen=True)
class Method:
    name: str
    run: Callable[[EvalContext], dict]
    order: Callable[[Config], Order]
    doc: str
    check: Callable[[Config], None] = lambda cfg: None
    # "queue" methods: document indices (into doc_spans order) in the order they are scored
    queue: Callable[[list[tuple[int, int]], Config], list[int]] | None = None
