"""The package layers, from every import of src/pgolf: nothing imports from a later layer, at module
level or inside a function, and only optional third-party dependencies are imported lazily.

    foundations (errors, config, metric, atomic, compat, runtime, logs) -> data | model | optim -> quant
    -> eval -> train -> submit -> pipeline -> cli and the commands.py modules
data, model and optim share a layer and do not import one another. The CLI names its handlers as
"module:function" strings; those are checked like imports.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "pgolf"
FOUNDATIONS = {"pgolf", "pgolf.errors", "pgolf.config", "pgolf.metric", "pgolf.atomic", "pgolf.compat",
               "pgolf.runtime", "pgolf.logs"}
PACKAGES = {"data": 1, "model": 1, "optim": 1, "quant": 2, "eval": 3, "train": 4, "submit": 5, "pipeline": 6}
TOP = 7
# Imported inside functions on purpose: optional at run time (the `plots` extra; inductor only when
# compiling). Everything else is imported at the top of its module.
LAZY_OK = ("matplotlib", "torch._inductor")


def module_name(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def layer(mod: str) -> int:
    if mod in ("pgolf.cli", "pgolf.__main__") or mod.endswith(".commands"):
        return TOP
    if mod in FOUNDATIONS:
        return 0
    parts = mod.split(".")
    if len(parts) >= 2 and parts[1] in PACKAGES:
        return PACKAGES[parts[1]]
    raise AssertionError(f"{mod}: no layer assigned (add it to tests/test_layers.py)")


def package(mod: str) -> str:
    parts = mod.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in PACKAGES else ""


def imports(path: Path) -> list[tuple[str, bool, int]]:
    """(imported module, inside a function?, line) for every import; relative imports resolved."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    me = module_name(path)
    out = []

    def visit(node: ast.AST, in_func: bool) -> None:
        for child in ast.iter_child_nodes(node):
            func = in_func or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                out.extend((a.name, in_func, child.lineno) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    pkg = me.split(".") if path.name == "__init__.py" else me.split(".")[:-1]
                    base = ".".join(pkg[: len(pkg) - child.level + 1] + ([child.module] if child.module else []))
                out.append((base, in_func, child.lineno))
                if base.startswith("pgolf"):
                    for a in child.names:  # `from pgolf.x import y` may import the submodule y
                        if (SRC.parent / (base.replace(".", "/") + f"/{a.name}.py")).is_file():
                            out.append((f"{base}.{a.name}", in_func, child.lineno))
            elif isinstance(child, ast.Constant) and isinstance(child.value, str):
                m = re.fullmatch(r"(pgolf(?:\.\w+)+):\w+", child.value)  # a CLI handler reference
                if m:
                    out.append((m.group(1), True, child.lineno))
            visit(child, func)

    visit(tree, False)
    return out


FILES = sorted(SRC.rglob("*.py"))


@pytest.mark.parametrize("path", FILES, ids=[module_name(p) for p in FILES])
def test_no_upward_or_hidden_import(path):
    me = module_name(path)
    mine = layer(me)
    problems = []
    for target, in_func, line in imports(path):
        if target == "pgolf" or target.startswith("pgolf."):
            theirs = layer(target)
            if theirs > mine:
                problems.append(f"line {line}: {target} (layer {theirs}) from layer {mine}")
            elif mine == theirs == 1 and package(target) != package(me):
                problems.append(f"line {line}: {target}: data, model and optim do not import one another")
            elif in_func and mine < TOP:
                problems.append(f"line {line}: {target} imported inside a function (import it at the top)")
        elif in_func and not target.startswith(LAZY_OK):
            problems.append(f"line {line}: {target} imported inside a function (only {LAZY_OK} may be)")
    assert not problems, f"{me}:\n  " + "\n  ".join(problems)


def test_the_layer_test_catches_an_upward_import(tmp_path, monkeypatch):
    fake = SRC / "quant" / "_probe_upward.py"
    fake.write_text("def f():\n    from pgolf.pipeline import job\n")
    try:
        with pytest.raises(AssertionError, match="pgolf.pipeline.job"):
            test_no_upward_or_hidden_import(fake)
    finally:
        fake.unlink()


def test_every_module_has_a_layer():
    for p in FILES:
        layer(module_name(p))
