"""Thin command-line front end. Each package's `commands.py` declares its subcommands' arguments and
names the function that does the work as "module:function"; that module is imported only once the
arguments are parsed, so `--help` never loads torch.

Contract (docs/cli.md): human output by default, one JSON object on stdout with `--json`; exit 0
success, 1 failure of the work, 2 bad usage or bad input (message on stderr).
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import math
import sys
from typing import Any, Callable

import pgolf
from pgolf.errors import InputError, WorkError

# Command spec modules; each defines register(subparsers). Only argparse and pgolf.config load here.
COMMAND_MODULES = ("pgolf.pipeline.commands", "pgolf.data.commands", "pgolf.model.commands",
                   "pgolf.train.commands", "pgolf.quant.commands", "pgolf.eval.commands", "pgolf.submit.commands")


class _Help(argparse.HelpFormatter):
    """Help that shows each option's default, when it has a meaningful one."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "%(default)" in text or action.default in (None, False, [], argparse.SUPPRESS):
            return text
        return text + " (default: %(default)s)"


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args, **kw):
        kw.setdefault("formatter_class", _Help)
        super().__init__(*args, **kw)

    def error(self, message: str):  # argparse exits 2 too; keep the message on stderr
        self.print_usage(sys.stderr)
        print(f"pgolf: error: {message}", file=sys.stderr)
        raise SystemExit(2)


def add_json_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")


def add_progress_flag(p: argparse.ArgumentParser, default: bool = True) -> None:
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=default,
                   help="progress bars on stderr (drawn only on a terminal; log lines are always printed)")


def add_config_flags(p: argparse.ArgumentParser, recipe_required: bool = False) -> None:
    p.add_argument("--recipe", required=recipe_required, help="recipe name (src/pgolf/recipes) or .toml path")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field by dotted path, e.g. model.num_layers=11 (repeatable)")


def command(p: argparse.ArgumentParser, handler: str, human: str | None = None) -> None:
    """Name the function ("module:function") that runs the command and, optionally, the one that
    turns its result into human output."""
    p.set_defaults(handler=handler, human=human)


def resolve(ref: str) -> Callable:
    module, _, name = ref.partition(":")
    return getattr(importlib.import_module(module), name)


def _jsonable(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if hasattr(x, "item") and callable(x.item):
        return x.item()
    return x


def emit(result: dict, as_json: bool, human: Callable[[dict], str] | None = None) -> None:
    if os.environ.get("RANK", "0") != "0":  # under torchrun only rank 0 answers: one object on stdout
        return
    if as_json:
        print(json.dumps(_jsonable(result), sort_keys=True))
    elif human is not None:
        print(human(result))
    else:
        for k, v in result.items():
            print(f"{k}: {v}")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="pgolf", description="Parameter Golf toolkit: train, pack, evaluate and submit "
                                               "models under a 16,000,000-byte budget")
    parser.add_argument("--version", action="version", version=f"pgolf {pgolf.__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result = resolve(args.handler)(args)
    except InputError as e:  # ConfigError is an InputError
        print(f"pgolf: error: {e}", file=sys.stderr)
        return 2
    except WorkError as e:
        print(f"pgolf: failed: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("pgolf: interrupted", file=sys.stderr)
        return 130
    if result is None:
        return 0
    code = 0
    if isinstance(result, tuple):  # (payload, exit code) for commands that report and fail
        result, code = result
    human = resolve(args.human) if isinstance(args.human, str) else None
    emit(result, getattr(args, "json", False), human)
    return code


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
