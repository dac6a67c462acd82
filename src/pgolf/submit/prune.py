"""Statements the counted script can lose without changing what it computes.

drop_guards: `if <pure test>: raise ValueError(...)` (or RuntimeError) guards against programmer
error, dead in a script whose config is frozen and checked at bundle time (python -O drops asserts
for the same reason). The errors a user can cause (InputError, ConfigError, WorkError) and the
artifact's checksum (CodecError) stay.
drop_dead_code: what such drops and the specialiser's folding leave behind: locals nobody reads
(when computing them has no effect), local functions nobody calls, loops over nothing but `pass`,
`try: ... finally: pass`.
drop_dead_attributes: attributes of the program's own plain classes that nothing reads, and dataclass
fields likewise (out of every construction too).
"""
from __future__ import annotations

import ast
from collections import Counter, defaultdict
from dataclasses import dataclass

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
    if isinstance(st, (ast.FunctionDef, ast.AsyncFunctionDef)) and not st.decorator_list \
            and all(pure(d, functions) for d in (*st.args.defaults, *st.args.kw_defaults) if d is not None):
        return st if st.name in read else None  # a local helper nothing calls
    if not (isinstance(st, ast.Assign) and len(st.targets) == 1):
        return st
    t, v = st.targets[0], st.value
    if isinstance(t, ast.Name):
        return None if t.id not in read and pure(v, functions) else st
    if isinstance(t, ast.Tuple) and isinstance(v, ast.Tuple) and len(t.elts) == len(v.elts) \
            and all(isinstance(x, ast.Name) for x in t.elts):
        return _narrowed(st, lambda x, y: x.id in read or not pure(y, functions))
    return st


def _narrowed(st: ast.Assign, keep) -> ast.stmt | None:
    """`a, b, c = x, y, z` keeping the (target, value) pairs `keep` accepts: the statement itself,
    a smaller one, or None when no pair is left."""
    t, v = st.targets[0], st.value
    pairs = [(x, y) for x, y in zip(t.elts, v.elts) if keep(x, y)]
    if len(pairs) == len(t.elts):
        return st
    if not pairs:
        return None
    if len(pairs) == 1:
        return ast.copy_location(ast.Assign([pairs[0][0]], pairs[0][1]), st)
    new = ast.Assign([ast.Tuple([x for x, _ in pairs], ast.Store())], ast.Tuple([y for _, y in pairs], ast.Load()))
    return ast.fix_missing_locations(ast.copy_location(new, st))


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


# names through which a program could read attributes without naming them
_ATTRIBUTE_INTROSPECTION = {"__dict__", "vars", "asdict", "astuple", "fields", "__slots__", "__getstate__"}


_BY_NAME = {"getattr", "setattr", "hasattr", "delattr", "attrgetter"}


def _named_attributes(tree: ast.Module) -> set[str]:
    """Attribute names the program may use as strings: the names given to getattr and its kin (a
    loop variable over a literal tuple stands for its strings; any other expression for every
    string of the program)."""
    loops = {}
    for n in ast.walk(tree):
        if isinstance(n, (ast.For, ast.comprehension)) and isinstance(n.target, ast.Name) \
                and isinstance(n.iter, (ast.Tuple, ast.List)) and all(isinstance(e, ast.Constant) for e in n.iter.elts):
            loops.setdefault(n.target.id, set()).update(e.value for e in n.iter.elts)
    out: set[str] = set()
    for n in ast.walk(tree):
        if isinstance(n, ast.Call) and getattr(n.func, "id", getattr(n.func, "attr", None)) in _BY_NAME:
            for a in n.args[1:2] if getattr(n.func, "id", None) != "attrgetter" else n.args:
                if isinstance(a, ast.Constant):
                    out.add(a.value)
                elif isinstance(a, ast.Name) and a.id in loops:
                    out |= loops[a.id]
                else:
                    return {c.value for c in ast.walk(tree) if isinstance(c, ast.Constant) and isinstance(c.value, str)}
    return out


def _plain_classes(tree: ast.Module) -> set[str]:
    """Module-level classes whose instances only the program reads: no bases but other such classes
    (or ABC / object), so no library class reads their attributes."""
    classes = {n.name: n for n in tree.body if isinstance(n, ast.ClassDef)}
    plain: set[str] = set()
    grew = True
    while grew:
        grew = False
        for name, c in classes.items():
            if name not in plain and not c.keywords and all(
                    isinstance(b, ast.Name) and (b.id in plain or b.id in ("ABC", "object")) for b in c.bases):
                plain.add(name)
                grew = True
    return plain


MODULE_BASES = ("nn.Module", "torch.nn.Module")


def _module_classes(tree: ast.Module) -> set[str]:
    """Module-level classes derived from torch's nn.Module through program classes only: torch reads
    their parameters, buffers, submodules and its own attributes, not a plain constant of ours."""
    classes = {n.name: n for n in tree.body if isinstance(n, ast.ClassDef)}
    out: set[str] = set()
    grew = True
    while grew:
        grew = False
        for name, c in classes.items():
            if name not in out and c.bases and all(ast.unparse(b) in MODULE_BASES or isinstance(b, ast.Name) and b.id in out
                                                   for b in c.bases):
                out.add(name)
                grew = True
    return out


def _literal(e: ast.expr) -> bool:
    if isinstance(e, ast.Tuple):
        return all(_literal(x) for x in e.elts)
    if isinstance(e, ast.UnaryOp) and isinstance(e.op, ast.USub):
        return _literal(e.operand)
    return isinstance(e, ast.Constant)


def drop_dead_attributes(tree: ast.Module) -> int:
    """Attributes nothing reads: `self.x = <pure>` in the methods of a plain class (see
    _plain_classes), and dataclass fields with a default that no construction passes and nothing
    stores or reads (every instance holds the same default, so equality and hashing stay).
    An attribute named by a string anywhere (getattr, a **mapping) is read. Returns how many went."""
    names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)} | \
        {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
    if names & _ATTRIBUTE_INTROSPECTION:
        return 0
    loaded = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute) and isinstance(n.ctx, ast.Load)}
    stored = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute) and not isinstance(n.ctx, ast.Load)}
    strings = _named_attributes(tree)
    functions = pure_functions(tree)
    dead = lambda attr: attr not in loaded and attr not in strings  # noqa: E731
    plain, modules = _plain_classes(tree), _module_classes(tree)
    index = _Index.of(tree)
    # on an nn.Module only a constant of ours can go (a tensor or module would be registered), and
    # never an attribute torch itself keeps (training, _parameters, ...)
    module_dead = lambda attr: dead(attr) and not attr.startswith("_") and attr != "training"  # noqa: E731
    dropped = 0
    for c in tree.body:
        if not (isinstance(c, ast.ClassDef) and (c.name in plain or c.name in modules)):
            continue
        on_module = c.name in modules
        for m in c.body:
            if isinstance(m, (ast.FunctionDef, ast.AsyncFunctionDef)) and m.args.args:
                me = m.args.args[0].arg
                for owner, name, block in list(_blocks(m)):
                    kept = []
                    for st in block:
                        new = (_without_dead_stores(st, me, module_dead, functions, _literal) if on_module
                               else _without_dead_stores(st, me, dead, functions))
                        dropped += new is not st
                        if new is not None:
                            kept.append(new)
                    setattr(owner, name, kept or [ast.Pass()])
        if _is_dataclass(c):
            dropped += _drop_dead_fields(index, c, dead, stored, functions)
    return dropped


@dataclass
class _Index:
    """What _drop_dead_fields looks up, gathered in one walk of the program."""

    calls: dict  # called name -> the Call nodes
    loads: Counter  # name -> its loads
    in_isinstance: Counter  # name -> loads inside isinstance's second argument
    on_attribute: Counter  # (name, attr) -> loads as the object of `name.attr`
    keywords: Counter  # keyword -> calls passing it

    @classmethod
    def of(cls, tree: ast.Module) -> "_Index":
        ix = cls(defaultdict(list), Counter(), Counter(), Counter(), Counter())
        for n in ast.walk(tree):
            if isinstance(n, ast.Call):
                if isinstance(n.func, ast.Name):
                    ix.calls[n.func.id].append(n)
                ix.keywords.update({k.arg for k in n.keywords if k.arg})
                if getattr(n.func, "id", None) == "isinstance" and len(n.args) == 2:
                    ix.in_isinstance.update(x.id for x in ast.walk(n.args[1]) if isinstance(x, ast.Name))
            elif isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load):
                ix.loads[n.id] += 1
            elif isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name):
                ix.on_attribute[(n.value.id, n.attr)] += 1
        return ix


def _drop_dead_fields(ix: _Index, c: ast.ClassDef, dead, stored: set[str], functions: set[str]) -> int:
    """A dataclass's fields nothing reads or stores, out of the class and out of every construction
    (their values there are pure). Only when every construction is in sight: `C(...)`, and
    `cls(...)` in C's classmethods; C used any other way but isinstance and `C.factory(...)` (a
    subclass, a factory passed around) keeps its fields."""
    sites = list(ix.calls.get(c.name, []))
    factories = set()
    for m in c.body:
        if isinstance(m, ast.FunctionDef) and m.args.args and any(getattr(d, "id", None) == "classmethod"
                                                                   for d in m.decorator_list):
            me = m.args.args[0].arg
            sites += [n for n in ast.walk(m) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == me]
            factories.add(m.name)
    seen = len(ix.calls.get(c.name, [])) + ix.in_isinstance[c.name] + sum(ix.on_attribute[(c.name, f)] for f in factories)
    if ix.loads[c.name] != seen:
        return 0
    if any(isinstance(a, ast.Starred) for s in sites for a in s.args) or any(k.arg is None for s in sites for k in s.keywords):
        return 0
    mine = Counter(k.arg for s in sites for k in s.keywords if k.arg)
    elsewhere = {k for k, n in ix.keywords.items() if n > mine[k]}
    fields = [f for f in c.body if isinstance(f, ast.AnnAssign) and isinstance(f.target, ast.Name)]
    dropped = 0
    for i in reversed(range(len(fields))):  # from the last: a positional argument's index stays right
        f, name = fields[i], fields[i].target.id
        if not dead(name) or name in stored or name in elsewhere:
            continue
        if f.value is not None and not pure(f.value, functions | {"field"}):
            continue
        given = [(s, s.args[i]) if len(s.args) > i else (s, next((k for k in s.keywords if k.arg == name), None))
                 for s in sites]
        if any(v is not None and not pure(v if isinstance(v, ast.expr) else v.value, functions) for _, v in given):
            continue
        if f.value is None and any(v is None for _, v in given):
            continue  # a construction that fails without it: leave as written
        for s, v in given:
            if isinstance(v, ast.keyword):
                s.keywords.remove(v)
            elif v is not None:
                s.args.remove(v)
        c.body.remove(f)
        dropped += 1
    c.body = c.body or [ast.Pass()]
    return dropped


def _is_dataclass(c: ast.ClassDef) -> bool:
    heads = [d.func if isinstance(d, ast.Call) else d for d in c.decorator_list]
    return any(getattr(h, "id", getattr(h, "attr", None)) == "dataclass" for h in heads)


def _without_dead_stores(st: ast.stmt, me: str, dead, functions: set[str], value=None) -> ast.stmt | None:
    """st without its stores to dead attributes of `me` (None: nothing left); `value` narrows which
    stored values may go (default: any pure one)."""
    def own(t: ast.expr) -> bool:
        return isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name) and t.value.id == me and dead(t.attr)

    def pure_value(v: ast.expr) -> bool:
        return pure(v, functions) and (value is None or value(v))

    if isinstance(st, ast.AugAssign) and own(st.target) and pure_value(st.value):
        return None
    if not (isinstance(st, ast.Assign) and len(st.targets) == 1):
        return st
    t, v = st.targets[0], st.value
    if own(t) and pure_value(v):
        return None
    if isinstance(t, ast.Tuple) and isinstance(v, ast.Tuple) and len(t.elts) == len(v.elts) \
            and not any(isinstance(x, ast.Starred) for x in (*t.elts, *v.elts)):
        return _narrowed(st, lambda x, y: not (own(x) and pure_value(y)))
    return st
