"""Statements the counted script can lose without changing what it computes.

drop_guards: `if <pure test>: raise ValueError(...)` (or RuntimeError) guards against programmer
error, dead in a script whose config is frozen and checked at bundle time (python -O drops asserts
for the same reason). The errors a user can cause (InputError, ConfigError, WorkError) and the
artifact's checksum (CodecError) stay.
drop_dead_code: what such drops and the specialiser's folding leave behind: locals nobody reads
(when computing them has no effect), loops over nothing but `pass`, `try: ... finally: pass`.
"""
from __future__ import annotations

import ast

GUARD_ERRORS = ("ValueError", "RuntimeError")


def drop_guards(tree: ast.Module) -> int:
    """Drop the guards against programmer error (see the module docstring); returns how many."""
    dropped = 0

    def guard(s: ast.stmt) -> bool:
        if not (isinstance(s, ast.If) and not s.orelse and len(s.body) == 1 and isinstance(s.body[0], ast.Raise)):
            return False
        exc = s.body[0].exc
        f = exc.func if isinstance(exc, ast.Call) else exc
        return isinstance(f, ast.Name) and f.id in GUARD_ERRORS and pure(s.test)

    for owner, name, block in list(_blocks(tree)):
        kept = [s for s in block if not guard(s)]
        dropped += len(block) - len(kept)
        setattr(owner, name, kept or [ast.Pass()])
    return dropped


PURE_CALLS = {"len", "isinstance", "type", "set", "tuple", "int", "float", "bool", "all", "any", "max", "min",
              "str", "list", "dict", "enumerate", "zip", "range", "sorted", "abs", "sum"}
PURE_METHODS = {"numel", "min", "max", "dim", "get", "items", "keys", "values"}


def pure(e: ast.AST) -> bool:
    """Whether evaluating `e` has no effect beyond its value (or an exception): its only calls are
    pure builtins and tensor / dict methods that only read."""
    for c in ast.walk(e):
        if isinstance(c, (ast.NamedExpr, ast.Yield, ast.YieldFrom, ast.Await, ast.Lambda)):
            return False
        if isinstance(c, ast.Call):
            f = c.func
            if not (isinstance(f, ast.Name) and f.id in PURE_CALLS or isinstance(f, ast.Attribute) and f.attr in PURE_METHODS):
                return False
    return True


def _blocks(tree: ast.AST):
    for n in ast.walk(tree):
        for name in ("body", "orelse", "finalbody"):
            block = getattr(n, name, None)
            if isinstance(block, list) and block and isinstance(block[0], ast.stmt):
                yield n, name, block


def _unneeded(st: ast.stmt, read: set[str]) -> ast.stmt | None:
    """None when `st` can go; a smaller statement when part of it can; else `st` itself."""
    if isinstance(st, ast.For) and not st.orelse and all(isinstance(b, ast.Pass) for b in st.body) and pure(st.iter):
        bound = {x.id for x in ast.walk(st.target) if isinstance(x, ast.Name)}
        return st if bound & read else None  # the loop variable read after the loop: keep
    if isinstance(st, ast.Try) and not st.handlers and all(isinstance(b, ast.Pass) for b in st.finalbody):
        return st.body  # a list: spliced in
    if not (isinstance(st, ast.Assign) and len(st.targets) == 1):
        return st
    t, v = st.targets[0], st.value
    if isinstance(t, ast.Name):
        return None if t.id not in read and pure(v) else st
    if isinstance(t, ast.Tuple) and isinstance(v, ast.Tuple) and len(t.elts) == len(v.elts) \
            and all(isinstance(x, ast.Name) for x in t.elts):
        pairs = [(x, y) for x, y in zip(t.elts, v.elts) if x.id in read or not pure(y)]
        if len(pairs) == len(t.elts):
            return st
        if not pairs:
            return None
        if len(pairs) == 1:
            return ast.copy_location(ast.Assign([pairs[0][0]], pairs[0][1]), st)
        new = ast.Assign([ast.Tuple([x for x, _ in pairs], ast.Store())], ast.Tuple([y for _, y in pairs], ast.Load()))
        return ast.fix_missing_locations(ast.copy_location(new, st))
    return st


def drop_dead_code(tree: ast.Module) -> int:
    """Drop the leftovers listed in the module docstring, to a fixed point; returns how many went."""
    total = 0
    while True:
        dropped = 0
        for fn in [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]:
            read = {x.id for x in ast.walk(fn) if isinstance(x, ast.Name) and not isinstance(x.ctx, ast.Store)}
            read |= {name for x in ast.walk(fn) if isinstance(x, (ast.Global, ast.Nonlocal)) for name in x.names}
            read |= {x.target.id for x in ast.walk(fn) if isinstance(x, ast.AugAssign) and isinstance(x.target, ast.Name)}
            for owner, name, block in list(_blocks(fn)):
                out: list[ast.stmt] = []
                for st in block:
                    new = _unneeded(st, read)
                    if new is st:
                        out.append(st)
                        continue
                    dropped += 1
                    if isinstance(new, list):
                        out.extend(new)
                    elif new is not None:
                        out.append(new)
                setattr(owner, name, out or [ast.Pass()])
        total += dropped
        if not dropped:
            return total
