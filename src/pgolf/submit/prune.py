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


def pure(e: ast.AST, functions: frozenset[str] | set[str] = frozenset()) -> bool:
    """Whether evaluating `e` has no effect beyond its value (or an exception): its only calls are
    pure builtins, tensor / dict methods that only read, and the program's `functions` known pure."""
    for c in ast.walk(e):
        if isinstance(c, (ast.NamedExpr, ast.Yield, ast.YieldFrom, ast.Await, ast.Lambda)):
            return False
        if isinstance(c, ast.Call):
            f = c.func
            if not (isinstance(f, ast.Name) and (f.id in PURE_CALLS or f.id in functions)
                    or isinstance(f, ast.Attribute) and f.attr in PURE_METHODS):
                return False
    return True


def pure_functions(tree: ast.Module) -> set[str]:
    """Module-level functions whose body is one `return <pure expression>` (calls of each other
    included), defined once and never rebound."""
    defs: dict[str, ast.FunctionDef] = {}
    counts: dict[str, int] = {}
    for n in tree.body:
        if isinstance(n, (ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef)):
            counts[n.name] = counts.get(n.name, 0) + 1
            if isinstance(n, ast.FunctionDef) and not n.decorator_list and len(n.body) == 1 \
                    and isinstance(n.body[0], ast.Return) and n.body[0].value is not None:
                defs[n.name] = n
    stored = {x.id for x in ast.walk(tree) if isinstance(x, ast.Name) and isinstance(x.ctx, ast.Store)}
    out: set[str] = set()
    grew = True
    while grew:
        grew = False
        for name, fn in defs.items():
            if name not in out and counts[name] == 1 and name not in stored and pure(fn.body[0].value, out | {name}):
                out.add(name)
                grew = True
    return out


def _pass_loop(st: ast.stmt) -> bool:
    return isinstance(st, ast.For) and not st.orelse and all(isinstance(b, ast.Pass) for b in st.body)


def _blocks(tree: ast.AST):
    for n in ast.walk(tree):
        for name in ("body", "orelse", "finalbody"):
            block = getattr(n, name, None)
            if isinstance(block, list) and block and isinstance(block[0], ast.stmt):
                yield n, name, block


def reads(fn: ast.AST) -> set[str]:
    """The names a function reads, leaving out a comprehension's reads of its own loop variables
    (they are the comprehension's, not the function's)."""
    out: set[str] = set()

    def walk(n: ast.AST, own: frozenset[str]) -> None:
        if isinstance(n, (ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)):
            walk(n.generators[0].iter, own)  # evaluated in the enclosing scope
            own = own | {x.id for g in n.generators for x in ast.walk(g.target) if isinstance(x, ast.Name)}
            for c in [*(x for g in n.generators for x in (g.target, *g.ifs)), *(g.iter for g in n.generators[1:]),
                      *((n.key, n.value) if isinstance(n, ast.DictComp) else (n.elt,))]:
                walk(c, own)
            return
        if isinstance(n, ast.Name) and not isinstance(n.ctx, ast.Store) and n.id not in own:
            out.add(n.id)
        elif isinstance(n, (ast.Global, ast.Nonlocal)):
            out.update(n.names)
        elif isinstance(n, ast.AugAssign) and isinstance(n.target, ast.Name):
            out.add(n.target.id)
        for c in ast.iter_child_nodes(n):
            walk(c, own)

    walk(fn, frozenset())
    return out


def _unneeded(st: ast.stmt, read: set[str], functions: set[str]) -> ast.stmt | None:
    """None when `st` can go; a smaller statement when part of it can; else `st` itself."""
    if _pass_loop(st) and pure(st.iter, functions):
        bound = {x.id for x in ast.walk(st.target) if isinstance(x, ast.Name)}
        return st if bound & read else None  # the loop variable read after the loop: keep
    if isinstance(st, ast.Try) and not st.handlers and all(isinstance(b, ast.Pass) for b in st.finalbody):
        return st.body  # a list: spliced in
    if not (isinstance(st, ast.Assign) and len(st.targets) == 1):
        return st
    t, v = st.targets[0], st.value
    if isinstance(t, ast.Name):
        return None if t.id not in read and pure(v, functions) else st
    if isinstance(t, ast.Tuple) and isinstance(v, ast.Tuple) and len(t.elts) == len(v.elts) \
            and all(isinstance(x, ast.Name) for x in t.elts):
        pairs = [(x, y) for x, y in zip(t.elts, v.elts) if x.id in read or not pure(y, functions)]
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
    functions = pure_functions(tree)
    while True:
        dropped = 0
        for fn in [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]:
            read = reads(fn)
            # in the function's own body (run once, no closures), what a loop leaves behind is read
            # only by the statements after it
            once = not any(isinstance(x, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef))
                           for b in fn.body for x in ast.walk(b))
            for owner, name, block in list(_blocks(fn)):
                out: list[ast.stmt] = []
                for k, st in enumerate(block):
                    after = read
                    if _pass_loop(st) and once and owner is fn and name == "body":
                        after = set().union(*map(reads, block[k + 1:]))
                    new = _unneeded(st, after, functions)
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
