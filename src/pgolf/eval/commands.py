"""`pgolf eval` and `pgolf audit`."""
from __future__ import annotations

import argparse

from pgolf.cli import add_json_flag
from pgolf.eval.api import METHODS, eval_and_record, evaluate, load_for_eval, record_audit, run_dir_of

AUDIT_DEFAULT_TOKENS = 8192  # the audit re-runs the method several times: keep the stream short


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", metavar="RUN_OR_ARTIFACT", help="run directory or packed artifact")
    p.add_argument("--data", required=True, metavar="DIR", help="shard dir with fineweb_val_*.bin")
    p.add_argument("--method", choices=METHODS, help="evaluation method (default: the config's eval.method)")
    p.add_argument("--tokenizer", metavar="MODEL", help="SentencePiece model (default: config, then DIR/manifest.json)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override an eval field, e.g. eval.stride=64 (repeatable)")
    add_json_flag(p)


def cmd_eval(args: argparse.Namespace) -> dict:
    if args.record:
        return eval_and_record(args.path, args.data, args.method, args.tokenizer, args.overrides,
                               args.max_tokens, progress=not args.json)
    inp = load_for_eval(args.path, args.data, args.tokenizer, args.overrides, args.method, args.max_tokens)
    out = evaluate(inp.model, inp.tokens, inp.tables, inp.cfg, inp.device, progress=not args.json)
    out.pop("nll", None)
    out["source"] = inp.info.get("source", "run")
    return out


def _human_eval(r: dict) -> str:
    cut = f", first {r['max_tokens']:,} val tokens" if r.get("max_tokens") else ""
    lines = [f"{r['method']}: val_loss {r['val_loss']:.4f}  val_bpb {r['val_bpb']:.4f}  "
             f"({r['tokens']:,} tokens, {r['bytes']:,} bytes{cut}) in {r['seconds']:.1f} s"]
    if r.get("warning"):
        lines.append(f"warning: {r['warning']}")
    if r.get("summary"):
        lines.append(f"recorded in {r['summary']}")
    return "\n".join(lines)


def cmd_audit(args: argparse.Namespace) -> tuple[dict, int]:
    from pgolf.eval.audit import audit_model

    inp = load_for_eval(args.path, args.data, args.tokenizer, args.overrides, args.method, args.max_tokens)
    report = audit_model(inp.model, inp.tokens, inp.tables, inp.cfg, inp.cfg.eval.method, inp.device,
                         points=args.points, probes=args.probes, seed=args.seed)
    run_dir = run_dir_of(args.path)
    if run_dir is not None:  # a run's audit.json feeds the submission's compliance section
        report["recorded"] = str(record_audit(run_dir, report))
    return report, 0 if report["passed"] else 1


def _human_audit(r: dict) -> str:
    lines = [f"audit of {r['method']} over {r['targets']:,} targets: {'PASS' if r['passed'] else 'FAIL'}"]
    for name, c in r["checks"].items():
        tag = "skip" if c["passed"] is None else ("pass" if c["passed"] else "FAIL")
        lines.append(f"  {tag:4s}  {name:20s} {c['details']}")
    return "\n".join(lines)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="val_loss / val_bpb of a run or artifact with an evaluation method")
    _common(p)
    p.add_argument("--max-tokens", type=int, default=None, metavar="N",
                   help="evaluate only the first N val tokens (default: eval.max_tokens; 0 = all)")
    p.add_argument("--record", action="store_true",
                   help="write val_loss/val_bpb/eval_method/eval_seconds into the run's summary.json")
    p.set_defaults(func=cmd_eval, human=_human_eval)

    p = sub.add_parser("audit", help="legality checks: causality, score-before-update, single pass, "
                                     "normalization, document isolation (exit 1 if any fails)")
    _common(p)
    p.add_argument("--max-tokens", type=int, default=AUDIT_DEFAULT_TOKENS, metavar="N",
                   help=f"audit on the first N val tokens (default {AUDIT_DEFAULT_TOKENS})")
    p.add_argument("--points", type=int, default=3, help="perturbation points for the causality check")
    p.add_argument("--probes", type=int, default=8, help="random targets whose full distribution is checked")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_audit, human=_human_audit)
