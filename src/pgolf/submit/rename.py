"""Short parameter names for the counted script.

python-minifier renames locals but keeps every parameter that a caller could pass by keyword (it
sees one module, not who calls it), so `def read_shard(path, vocab_size=None)` keeps both names and
often an alias (`A=path`). The bundle sees the whole program: a parameter whose name is never a
keyword at any call, never a string the program could splat or look up, and not reachable through
introspection can take a one-letter name. Library callbacks are called positionally (forward
hooks, Handler.emit, ...); the keywords of `model(x, flag=...)` are keywords in the program, so a
forward's parameter of that name keeps it.
"""
from __future__ import annotations

import ast
import builtins
import itertools
import string
from collections import Counter

# decorators that call the function with the arguments its caller gave (or none)
SAFE_DECORATORS = ("property", "staticmethod", "classmethod", "contextmanager", "abstractmethod",
                   "torch.no_grad()", "torch.inference_mode()", "torch.enable_grad()", "functools.cache")
# any of these in the program and parameter names may be read back: the pass does nothing
INTROSPECTION_NAMES = {"locals", "vars", "eval", "exec", "globals", "inspect"}
INTROSPECTION_ATTRIBUTES = {"signature", "f_locals", "co_varnames", "__code__", "__wrapped__", "getfullargspec"}
# library calls that call a function they are given with the keywords they got
FORWARDING = {"partial", "partialmethod", "submit", "map", "apply", "run", "call", "checkpoint", "wraps"}
_FUNCS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)


def _short_names():
    letters = string.ascii_lowercase
    yield from letters
    for a, b in itertools.product(letters, letters + string.digits):
        yield a + b


def _params(fn: ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda) -> list[ast.arg]:
    a = fn.args
    return [*a.posonlyargs, *a.args, *([a.vararg] if a.vararg else []), *a.kwonlyargs,
            *([a.kwarg] if a.kwarg else [])]


def _identifiers(node: ast.AST) -> set[str]:
    """Every name the subtree binds or reads (so a new name cannot capture or shadow one)."""
    out: set[str] = set()
    for n in ast.walk(node):
        if isinstance(n, ast.Name):
            out.add(n.id)
        elif isinstance(n, ast.arg):
            out.add(n.arg)
        elif isinstance(n, (ast.Global, ast.Nonlocal)):
            out.update(n.names)
        elif isinstance(n, ast.alias):
            out.add(n.asname or n.name.split(".")[0])
        elif isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            out.add(n.name)
        elif isinstance(n, ast.ExceptHandler) and n.name:
            out.add(n.name)
    return out


def _pinned_in_nested(fn: ast.AST, name: str) -> bool:
    """Whether a scope inside fn binds `name` on its own (a parameter, a class-body name, global or
    nonlocal, an import) or matches patterns: a uniform rename of fn's subtree could change it."""
    for n in ast.walk(fn):
        if n is fn:
            continue
        if isinstance(n, _FUNCS) and any(a.arg == name for a in _params(n)):
            return True
        if isinstance(n, ast.ClassDef) and name in _identifiers(n):
            return True
        if isinstance(n, (ast.Global, ast.Nonlocal)) and name in n.names:
            return True
        if isinstance(n, ast.alias) and (n.asname or n.name.split(".")[0]) == name:
            return True
        if isinstance(n, ast.Match):
            return True
    return False


def _root(e: ast.expr) -> str | None:
    while isinstance(e, ast.Attribute):
        e = e.value
    return e.id if isinstance(e, ast.Name) else None


def _keywords(tree: ast.Module) -> tuple[set[str], dict[ast.AST, set[str]]]:
    """(keywords that may reach any function, keywords per program function they can only reach).

    A keyword at a call reaches
      - `f(k=...)`, f a module-level function: f;
      - `C(k=...)`, C a program class: the `__init__` / `__new__` methods;
      - `x.m(k=...)`, m the name of program methods and never a stored attribute: those methods;
      - `torch.zeros(dtype=...)`, an imported module's attribute, or an imported name or builtin
        called by its name: the library;
      - anything else (`model(x, k=...)`, `self.fwd(...)`, a callback), and any call handed one of
        the program's functions, classes or methods (`pool.submit(fn, k=...)` passes k on): any function.
    A `**mapping` at a call could hold any name: every string constant of the program is then a
    keyword that may reach any function."""
    modules = {a.asname or a.name.split(".")[0] for n in tree.body if isinstance(n, ast.Import) for a in n.names}
    defs = Counter(n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)))
    stored = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and not isinstance(n.ctx, ast.Load)}
    functions = {n.name: n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
                 if defs[n.name] == 1 and n.name not in stored}
    classes = {n.name for n in tree.body if isinstance(n, ast.ClassDef)}
    imported = {a.asname or a.name for n in tree.body if isinstance(n, ast.ImportFrom) for a in n.names}
    bound = stored | {a.arg for f in ast.walk(tree) if isinstance(f, _FUNCS) for a in _params(f)}
    library = (imported | set(dir(builtins))) - bound - set(defs)
    methods: dict[str, list[ast.AST]] = {}
    fields: set[str] = set()
    for c in ast.walk(tree):
        if isinstance(c, ast.ClassDef):
            for m in c.body:
                if isinstance(m, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    methods.setdefault(m.name, []).append(m)
                elif isinstance(m, (ast.Assign, ast.AnnAssign)):
                    fields.update(t.id for t in (m.targets if isinstance(m, ast.Assign) else [m.target])
                                  if isinstance(t, ast.Name))
        elif isinstance(c, ast.Attribute) and not isinstance(c.ctx, ast.Load):
            fields.add(c.attr)
    callables = {n.name for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))}
    blocked: set[str] = set()
    aimed: dict[ast.AST, set[str]] = {}

    def aim(targets: list[ast.AST], names: set[str]) -> None:
        for t in targets:
            aimed.setdefault(t, set()).update(names)

    for n in ast.walk(tree):
        if isinstance(n, ast.ClassDef):
            blocked.update(k.arg for k in n.keywords if k.arg)
        if not isinstance(n, ast.Call):
            continue
        if any(k.arg is None for k in n.keywords):
            blocked.update(c.value for c in ast.walk(tree) if isinstance(c, ast.Constant) and isinstance(c.value, str))
        names = {k.arg for k in n.keywords if k.arg}
        if not names:
            continue
        f = n.func
        if any(isinstance(v, ast.Lambda) or isinstance(v, ast.Name) and v.id in callables
               or isinstance(v, ast.Attribute) and v.attr in methods for v in [*n.args, *(k.value for k in n.keywords)]):
            blocked.update(names)  # a callee handed one of our functions may pass its keywords on
        elif isinstance(f, ast.Name) and f.id in functions:
            aim([functions[f.id]], names)
        elif isinstance(f, ast.Name) and f.id in classes:
            aim(methods.get("__init__", []) + methods.get("__new__", []), names)
        elif isinstance(f, ast.Name) and f.id in library and f.id not in FORWARDING:
            continue
        elif isinstance(f, ast.Attribute) and _root(f) in modules and f.attr not in FORWARDING:
            continue
        elif isinstance(f, ast.Attribute) and f.attr not in fields and f.attr not in FORWARDING:
            aim(methods.get(f.attr, []), names)
        else:
            blocked.update(names)
    return blocked, aimed


def shorten_parameters(tree: ast.Module) -> int:
    """Rename the parameters no caller can name (see the module docstring); returns how many."""
    attributes = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
    if _identifiers(tree) & INTROSPECTION_NAMES or attributes & INTROSPECTION_ATTRIBUTES:
        return 0
    blocked, aimed = _keywords(tree)
    renamed = 0
    for fn in [n for n in ast.walk(tree) if isinstance(n, _FUNCS)]:
        if not isinstance(fn, ast.Lambda) and not all(ast.unparse(d) in SAFE_DECORATORS for d in fn.decorator_list):
            continue
        named = blocked | aimed.get(fn, set())
        uses = Counter(n.id for n in ast.walk(fn) if isinstance(n, ast.Name))
        free = [a for a in _params(fn) if a.arg not in named
                and len(a.arg) > 1 and not _pinned_in_nested(fn, a.arg)]
        if not free:
            continue
        taken = _identifiers(fn)
        fresh = (s for s in _short_names() if s not in taken)
        mapping = {}
        for a in sorted(free, key=lambda a: -uses[a.arg]):
            mapping[a.arg] = next(fresh)
            a.arg = mapping[a.arg]
        for n in ast.walk(fn):
            if isinstance(n, ast.Name) and n.id in mapping:
                n.id = mapping[n.id]
        renamed += len(mapping)
    return renamed
