"""Thin command-line front end. Each package registers its own subcommands (``commands.py``).

Contract (docs/cli.md): human output by default, one JSON object on stdout with ``--json``;
exit 0 success, 1 failure of the work, 2 bad usage or bad input (message on stderr).
"""
from __future__ import annotations

import argparse
import importlib
import json
import math
import sys
from typing import Any, Callable

from pgolf.config import ConfigError
from pgolf.errors import InputError, WorkError

COMMAND_MODULES = [
    "pgolf.pipeline",
    "pgolf.data.commands",
    "pgolf.model.commands",
    "pgolf.train.commands",
    "pgolf.quant.commands",
    "pgolf.eval.commands",
    "pgolf.submit.commands",
]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse exits 2 too; keep the message on stderr
        self.print_usage(sys.stderr)
        print(f"pgolf: error: {message}", file=sys.stderr)
        raise SystemExit(2)


def add_json_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")


def add_config_flags(p: argparse.ArgumentParser, recipe_required: bool = False) -> None:
    p.add_argument("--recipe", required=recipe_required, help="recipe name or .toml path")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field by dotted path, e.g. model.num_layers=11 (repeatable)")


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
    if as_json:
        print(json.dumps(_jsonable(result), sort_keys=True))
        return
    if human is not None:
        print(human(result))
        return
    for k, v in result.items():
        print(f"{k}: {v}")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="pgolf", description="Parameter Golf toolkit")
    parser.add_argument("--version", action="version", version=f"pgolf {__import__('pgolf').__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name in COMMAND_MODULES:
        try:
            mod = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name == name:  # a package whose commands are not there yet
                continue
            raise
        mod.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result = args.func(args)
    except (InputError, ConfigError) as e:
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
    emit(result, getattr(args, "json", False), getattr(args, "human", None))
    return code


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
