"""`pgolf eval` and `pgolf audit` (arguments and human output; the work is pgolf.pipeline.evaluation)."""
from __future__ import annotations

from pgolf.cli import add_json_flag, command
from pgolf.config import EvalConfig, choices

E = "pgolf.pipeline.evaluation"


def _common(p) -> None:
    p.add_argument("path", metavar="RUN_OR_ARTIFACT", help="run directory (pre-quant weights) or artifact file")
    p.add_argument("--data", metavar="DIR", help="shard dir with fineweb_val_*.bin (default: the run's own data)")
    p.add_argument("--method", choices=choices(EvalConfig, "method"), help="default: the config's eval.method")
    p.add_argument("--tokenizer", metavar="MODEL", help="default: the run's, then DIR/manifest.json's")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override an eval field, e.g. eval.stride=64 (repeatable)")
    p.add_argument("--max-tokens", type=int, default=None, metavar="N",
                   help="score only the first N val tokens (default: eval.max_tokens; on CPU ~1M)")
    add_json_flag(p)


def human_audit(r: dict) -> str:
    lines = [f"audit of {r['method']} ({r['order']} order) over {r['targets']:,} targets, seed {r['seed']}: "
             f"{'PASS' if r['passed'] else 'FAIL'} ({r['audit_tokens']:,} extra tokens in perturbation runs)"]
    for name, c in r["checks"].items():
        tag = "skip" if c["passed"] is None else ("pass" if c["passed"] else "FAIL")
        lines.append(f"  {tag:4s}  {name:20s} {c['details']}")
    if r.get("recorded"):
        lines.append(f"recorded in {r['recorded']}")
    return "\n".join(lines)


def register(sub) -> None:
    p = sub.add_parser("eval", help="val_loss / val_bpb of a run or artifact with an evaluation method")
    _common(p)
    p.add_argument("--record", action="store_true", help="write the score into the run's summary.json")
    command(p, f"{E}:cmd_eval", f"{E}:describe_eval")

    p = sub.add_parser("audit", help="legality checks from outside: finite, single pass, normalization, "
                                     "causality, target independence (exit 1 if any fails)")
    _common(p)
    p.add_argument("--seed", type=int, default=None, help="replay an audit (default: a fresh random seed)")
    p.add_argument("--budget", type=float, default=0.1,
                   help="perturbation runs process at most this fraction of the scored tokens (min one sub-stream)")
    p.add_argument("--thorough", action="store_true", help="perturbation runs over the whole stream (each costs one eval)")
    p.add_argument("--atol", type=float, default=1e-4, help="tolerance for unchanged scores (raise for bf16 GPUs)")
    command(p, f"{E}:cmd_audit", "pgolf.eval.commands:human_audit")
