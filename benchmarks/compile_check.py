"""torch.compile cleanliness of a recipe: graph breaks and recompiles over the phases of a real run.

    python benchmarks/compile_check.py --recipe pr1413 [--backend inductor|aot_eager|eager] [--json]
                                       [--set k=v ...] [--full-size]

The recipe at its --smoke shape (or --full-size) on the current device. Each phase first asks
torch._dynamo.explain for the graph breaks of the function it runs (with their reasons), then runs it
compiled with fullgraph=True, dynamic=False, forward and backward where the phase trains:

  train         the training step's forward + backward
  recurrence    the same once depth recurrence is on (recurrent recipes)
  qat           the same with fake quantization on (recipes with QAT)
  eval          the scoring forward (hidden states + head) in eval mode, no grad, at the eval window
  ttt           a score-first TTT step: forward + backward in train mode at the eval window

Each compile after the first is a recompile; the reasons are dynamo's own guard failures. The graph
breaks are the same for every backend (dynamo finds them before the backend runs), so CPU tests use
aot_eager, which also traces the backward; inductor is the default and what a GPU run uses.
Prints one JSON object with --json, else a table.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time

import torch
import torch._dynamo as dynamo

from pgolf.config import Config, load_config
from pgolf.model.gpt import GPT
from pgolf.quant.qat import attach_qat, set_qat_enabled


class _Recompiles(logging.Handler):
    """Collects dynamo's "Recompiling function ..." records, each once."""

    def __init__(self) -> None:
        super().__init__()
        self.reasons: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        if "Recompiling function" in msg:
            failures = [ln.strip(" -") for ln in msg.splitlines() if ln.strip().startswith("- ") and "/" in ln]
            reason = failures[0].split("#")[0].strip() if failures else msg.splitlines()[0]
            if not self.reasons or self.reasons[-1] != reason:
                self.reasons.append(reason)


def phases(cfg: Config) -> list[str]:
    out = ["train"]
    if cfg.model.recurrent:
        out.append("recurrence")
    if cfg.quant.qat != "off":
        out.append("qat")
    out.append("eval")
    if cfg.eval.method in ("ttt-sgd", "phased"):
        out.append("ttt")
    return out


def check(cfg: Config, backend: str, device: torch.device) -> dict:
    torch.manual_seed(0)
    model = GPT(cfg.model).to(device)
    attach_qat(model, cfg.quant, enabled=False)
    train_len, eval_len = cfg.train.seq_len, cfg.eval.window(cfg.train)
    doc = cfg.eval.doc_isolated or cfg.eval.method in ("docs", "ttt-lora", "phased")
    g = torch.Generator(device="cpu").manual_seed(0)

    def batch(length: int, rows: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
        t = torch.randint(2, cfg.model.vocab_size, (rows, length + 1), generator=g)
        t[:, :: max(length // 3, 1)] = cfg.model.bos_id
        return t[:, :-1].to(device), t[:, 1:].to(device)

    def train_loss(x, y):
        return model(x, y, doc_isolated=cfg.train.doc_isolated)

    def score(x):
        return model.logits_from_hidden(model.hidden(x, doc))

    def ttt_loss(x, y):
        return model(x, y, doc_isolated=doc)

    dynamo.reset()
    handler = _Recompiles()
    torch._logging.set_logs(recompiles=True)
    rec_log = logging.getLogger("torch._dynamo")
    rec_log.addHandler(handler)
    quiet = [(h, h.level) for lg in (rec_log, logging.getLogger("torch")) for h in lg.handlers if h is not handler]
    for h, _ in quiet:
        h.setLevel(logging.ERROR)  # keep dynamo's own printing off the console
    compiles = []

    def counting(gm, example_inputs):  # one call per graph dynamo hands to the backend
        compiles.append(len(gm.graph.nodes))
        return dynamo.lookup_backend(backend)(gm, example_inputs)

    compiled = {name: torch.compile(fn, backend=counting, fullgraph=True, dynamic=False)
                for name, fn in (("train", train_loss), ("score", score), ("ttt", ttt_loss))}
    def enter(phase: str) -> tuple:
        """Put the model in the phase's state; (function, compiled name, inputs, trains?)."""
        if phase == "recurrence":
            model.set_recurrence(True)
        if phase == "qat":
            set_qat_enabled(model, True)
        if phase == "eval":
            model.eval()
            return score, "score", batch(eval_len)[:1], False
        model.train()
        if phase == "ttt":
            return ttt_loss, "ttt", batch(eval_len), True
        if cfg.data.loader == "packed":  # the loader's shape: one row, documents cut at the segment cap
            return train_loss, "train", batch(cfg.train.micro_batch_tokens, rows=1), True
        return train_loss, "train", batch(train_len), True

    def reset_model() -> None:
        model.set_recurrence(False)
        set_qat_enabled(model, False)
        model.train()

    t0 = time.perf_counter()
    rows = []
    try:
        for phase in phases(cfg):  # pass 1: dynamo's explanation of each phase's graph breaks
            fn, _, inputs, trains = enter(phase)
            with torch.set_grad_enabled(trains):
                ex = dynamo.explain(fn)(*inputs)
            rows.append({"phase": phase, "graph_breaks": ex.graph_break_count,
                         "break_reasons": [str(r.reason).splitlines()[0] for r in ex.break_reasons]})
        reset_model()
        dynamo.reset()  # explain leaves its own cache entries
        for row in rows:  # pass 2: the phases compiled as a run would, counting every (re)compile
            fn, name, inputs, trains = enter(row["phase"])
            try:
                with torch.set_grad_enabled(trains):
                    out = compiled[name](*inputs)
                    if trains:
                        out.backward()
                        model.zero_grad(set_to_none=True)
            except dynamo.exc.Unsupported as e:
                row["graph_breaks"] = max(row["graph_breaks"], 1)
                row["break_reasons"] = row["break_reasons"] or [str(e).splitlines()[0]]
    finally:
        rec_log.removeHandler(handler)
        torch._logging.set_logs()
        for h, level in quiet:
            h.setLevel(level)
    graphs = len(compiles)
    functions = len({"ttt" if p == "ttt" else "score" if p == "eval" else "train" for p in phases(cfg)})
    return {"recipe": cfg.name, "backend": backend, "device": str(device), "phases": rows,
            "graph_breaks": sum(r["graph_breaks"] for r in rows), "graphs": graphs,
            "recompiles": graphs - functions, "recompile_reasons": handler.reasons,
            "seconds": round(time.perf_counter() - t0, 1)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="graph breaks and recompiles of a recipe under torch.compile")
    p.add_argument("--recipe", required=True)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--backend", default="inductor", choices=["inductor", "aot_eager", "eager"])
    p.add_argument("--full-size", action="store_true", help="the recipe's own shape (default: --smoke shape)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    cfg = load_config(args.recipe, args.overrides, smoke=not args.full_size)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          "cpu" if args.device == "auto" else args.device)
    out = check(cfg, args.backend, device)
    if args.json:
        print(json.dumps(out))
    else:
        print(f"{out['recipe']} on {out['device']} ({out['backend']}): {out['graph_breaks']} graph breaks, "
              f"{out['recompiles']} recompiles, {out['seconds']} s")
        for r in out["phases"]:
            print(f"  {r['phase']:<11} breaks {r['graph_breaks']}" + "".join(f"\n    {x}" for x in r["break_reasons"]))
        for reason in out["recompile_reasons"]:
            print(f"  recompile: {reason}")
    return 0 if out["graph_breaks"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
