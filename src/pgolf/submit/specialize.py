"""Specialise the flat program to one frozen config: its switches become constants, dead branches go.

Config values are found by type: a parameter annotated with a config class (`cfg: ModelConfig`), a
local assigned once from one (`m = cfg.model`), or an attribute set once from one (`self.cfg = cfg`).
A read whose value is a scalar (or a tuple of scalars) becomes that constant; `to_dict()`,
`to_json()`, `dataclasses.asdict(...)` and property or method calls on config values are evaluated
now. Then, until nothing changes: constant expressions fold, `if`/`x if c else y` keep the live
branch, locals and single-assignment attributes holding a constant are substituted, and parameters
that every call passes the same constant become that constant. Runtime fields (the seed) become a
global the entry sets. What the config object is still needed for at run time is reported: the
bundle fails if a config read survives, so the counted script never carries the config machinery.
"""
from __future__ import annotations

import ast
import dataclasses
import json
import operator
from collections import Counter, defaultdict
from typing import Any

from pgolf.config import SECTIONS, Config, QuantGroup
from pgolf.errors import WorkError
from pgolf.submit.flatten import copy_tree, shake_module

SCALARS = (bool, int, float, str, type(None))
_SECTION_CLASSES = {cls: name for name, cls in SECTIONS.items()} | {Config: ""}
_BIN = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
        ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow}
_CMP = {ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Lt: operator.lt, ast.LtE: operator.le, ast.Gt: operator.gt,
        ast.GtE: operator.ge, ast.Is: operator.is_, ast.IsNot: operator.is_not,
        ast.In: lambda a, b: a in b, ast.NotIn: lambda a, b: a not in b}
_PURE_BUILTINS = {"int": int, "float": float, "bool": bool, "str": str, "len": len, "min": min, "max": max,
                  "abs": abs, "round": round, "tuple": tuple}


def is_const(node: ast.AST) -> bool:
    if isinstance(node, ast.Constant):
        return True
    if isinstance(node, ast.Tuple):
        return all(is_const(e) for e in node.elts)
    return False


def const_value(node: ast.AST) -> Any:
    if isinstance(node, ast.Constant):
        return node.value
    return tuple(const_value(e) for e in node.elts)


def to_ast(v: Any) -> ast.expr:
    """A literal expression for a JSON-like value (tuples stay tuples)."""
    if isinstance(v, SCALARS):
        return ast.Constant(v)
    if isinstance(v, tuple):
        return ast.Tuple([to_ast(x) for x in v], ast.Load())
    if isinstance(v, list):
        return ast.List([to_ast(x) for x in v], ast.Load())
    if isinstance(v, dict):
        return ast.Dict([ast.Constant(k) for k in v], [to_ast(x) for x in v.values()])
    raise WorkError(f"bundle: cannot write {type(v).__name__} as a literal")


def literal(v: Any) -> bool:
    return isinstance(v, SCALARS) or (isinstance(v, tuple) and all(literal(x) for x in v))


NS = "_NS"  # types.SimpleNamespace in the specialised program: plain data read at run time


def data_value(v: Any) -> bool:
    """A quantization group (or a tuple of them): data the program reads at run time, not a switch."""
    return isinstance(v, QuantGroup) or (isinstance(v, tuple) and bool(v) and all(isinstance(x, QuantGroup) for x in v))


def data_ast(v: Any) -> ast.expr:
    if isinstance(v, tuple):
        return ast.Tuple([data_ast(x) for x in v], ast.Load())
    return ast.Call(ast.Name(NS, ast.Load()), [],
                    [ast.keyword(f.name, to_ast(getattr(v, f.name))) for f in dataclasses.fields(v)])


class Specializer:
    def __init__(self, tree: ast.Module, cfg: Config, config_classes: dict[str, type],
                 runtime: dict[str, str] | None = None, roots: list[str] | None = None):
        self.tree = tree
        self.cfg = cfg
        self.classes = config_classes  # flat name -> config class (Config, ModelConfig, ..., QuantGroup)
        self.runtime = runtime or {}  # config path -> global name read at run time (e.g. the seed)
        self.uses_ns = False
        self.roots = roots or []  # entry points: their parameters come from outside, and shaking starts there
        self.keep_params = set(self.roots)
        self._round: dict[str, Any] = {}  # per fixpoint round (see run)
        # annotated class fields (dataclasses): an EvalContext's `cfg: Config` is the config too
        self.fields = {n.name: {f.target.id: f.annotation for f in n.body
                                if isinstance(f, ast.AnnAssign) and isinstance(f.target, ast.Name)}
                       for n in tree.body if isinstance(n, ast.ClassDef)}

    # -- config paths --------------------------------------------------------------------------
    def value(self, path: str) -> Any:
        v: Any = self.cfg
        for part in path.split(".") if path else []:
            v = getattr(v, part)
        return v

    def has(self, path: str, attr: str) -> bool:
        try:
            v = self.value(path)
        except AttributeError:
            return False
        return dataclasses.is_dataclass(v) and hasattr(type(v), attr) or (
            dataclasses.is_dataclass(v) and attr in {f.name for f in dataclasses.fields(v)})

    def annotation_path(self, ann: ast.expr | None) -> str | None:
        if ann is None:
            return None
        if isinstance(ann, ast.BinOp) and isinstance(ann.op, ast.BitOr):  # X | None
            return self.annotation_path(ann.left) or self.annotation_path(ann.right)
        if isinstance(ann, ast.Subscript):  # Optional[X]
            return self.annotation_path(ann.slice)
        if isinstance(ann, ast.Name) and ann.id in self.classes:
            cls = self.classes[ann.id]
            return _SECTION_CLASSES.get(cls)
        return None

    # -- the fixpoint ----------------------------------------------------------------------------
    def run(self) -> ast.Module:
        _annassign_to_assign(self.tree)
        before = ast.dump(self.tree)
        for _ in range(20):
            # a round's passes only remove stores and classes, so what _attr_stores and _attr_classes
            # find at its start stays true or errs on the safe side (more stores than there are)
            self._round = {}
            self._fold_config()
            self._simplify()
            self._propagate_locals()
            self._propagate_globals()
            self._propagate_attributes()
            self._propagate_fields()
            self._propagate_arguments()
            self._inline_constant_functions()
            self._drop_idle_calls()
            self._drop_unused_parameters()
            self._drop_unread_attributes()
            self._simplify()
            if self.roots:
                self.tree = shake_module(self.tree, self.roots)
            after = ast.dump(self.tree)
            if after == before:
                break
            before = after
        self._round = {}
        return self.tree

    # -- 1. config reads -> constants --------------------------------------------------------------
    def _functions(self):
        """(function, class name or None) for every function and method."""
        for node in self.tree.body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                yield node, None
            elif isinstance(node, ast.ClassDef):
                for sub in node.body:
                    if isinstance(sub, (ast.FunctionDef, ast.AsyncFunctionDef)):
                        yield sub, node.name

    def _attr_stores(self) -> tuple[Counter, Counter]:
        """(stores of `self.x` per (class, x), stores of `.x` on anything else per x). A setattr with a
        computed name (module swapping in TTT) is assumed never to touch a config-derived attribute:
        the bundled-vs-pgolf equality tests check that."""
        if "stores" in self._round:
            return self._round["stores"]
        own: Counter = Counter()
        other: Counter = Counter()
        for fn, cls in self._functions():
            me = _self(fn) if cls else None
            for n in ast.walk(fn):
                t = n.target if isinstance(n, ast.AugAssign) else n
                if isinstance(t, ast.Attribute) and (isinstance(t.ctx, (ast.Store, ast.Del)) or t is not n):
                    if isinstance(t.value, ast.Name) and t.value.id == me:
                        own[(cls, t.attr)] += 1
                    else:
                        other[t.attr] += 1
        for n in self.tree.body:  # module level
            if not isinstance(n, (ast.FunctionDef, ast.ClassDef)):
                for sub in ast.walk(n):
                    if isinstance(sub, ast.Attribute) and isinstance(sub.ctx, (ast.Store, ast.Del)):
                        other[sub.attr] += 1
        self._round["stores"] = own, other
        return own, other

    def _stored_once(self, cls: str, attr: str, own: Counter, other: Counter) -> bool:
        return own[(cls, attr)] == 1 and other[attr] == 0 and sum(
            v for (c, a), v in own.items() if a == attr and c != cls and c in self._subclasses(cls)) == 0

    def _subclasses(self, cls: str) -> set[str]:
        out, grew = {cls}, True
        classes = [n for n in self.tree.body if isinstance(n, ast.ClassDef)]
        while grew:
            grew = False
            for c in classes:
                if c.name not in out and any(isinstance(b, ast.Name) and b.id in out for b in c.bases):
                    out.add(c.name)
                    grew = True
        return out

    def _class_attr_paths(self) -> dict[str, dict[str, str]]:
        """class -> {attr: config path} for `self.attr = <config value>` stored once, in __init__."""
        own, other = self._attr_stores()
        out: dict[str, dict[str, str]] = defaultdict(dict)
        for fn, cls in self._functions():
            if cls is None or fn.name != "__init__":
                continue
            env = self._env(fn, cls, {})
            for n in ast.walk(fn):
                if isinstance(n, ast.Assign) and len(n.targets) == 1:
                    for t, v in self._pairs(n.targets[0], n.value):
                        if (isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name) and t.value.id == _self(fn)
                                and self._stored_once(cls, t.attr, own, other)):
                            p = self.path_of(v, env, cls, {})
                            if p is not None:
                                for sub in self._subclasses(cls):
                                    out[sub][t.attr] = p
        return out

    @staticmethod
    def _pairs(target: ast.expr, value: ast.expr):
        if isinstance(target, ast.Tuple) and isinstance(value, ast.Tuple) and len(target.elts) == len(value.elts):
            return list(zip(target.elts, value.elts))
        return [(target, value)]

    def _env(self, fn: ast.FunctionDef, cls: str | None, attr_paths: dict) -> dict[str, str]:
        """Local name -> config path inside `fn` (annotated params, single assignments)."""
        env: dict[str, str] = {}
        assigned = Counter()
        assigns = []
        for n in ast.walk(fn):
            if isinstance(n, ast.Name) and isinstance(n.ctx, (ast.Store, ast.Del)):
                assigned[n.id] += 1
            elif isinstance(n, ast.Assign) and len(n.targets) == 1:
                assigns.append(n)
        a = fn.args
        for arg in (*a.posonlyargs, *a.args, *a.kwonlyargs):
            if assigned[arg.arg]:
                continue
            p = self.annotation_path(arg.annotation)
            if p is not None:
                env[arg.arg] = p
            elif isinstance(arg.annotation, ast.Name) and arg.annotation.id in self.fields:
                env[arg.arg] = "@" + arg.annotation.id  # an instance of a class with annotated fields
        static = any(isinstance(d, ast.Name) and d.id in ("staticmethod", "classmethod") for d in fn.decorator_list)
        me = _self(fn) if cls and not static else None
        if me and not assigned[me] and any(isinstance(v, ast.expr) for v in self.fields.get(cls, {}).values()):
            env.setdefault(me, "@" + cls)  # self in a method of a class with annotated fields (a dataclass)
        pairs = [(t, v) for n in assigns for t, v in self._pairs(n.targets[0], n.value)
                 if isinstance(t, ast.Name) and assigned[t.id] == 1]
        for _ in range(3):  # chains of aliases: m = cfg.model; g = m.something
            for t, v in pairs:
                if t.id not in env:
                    p = self.path_of(v, env, cls, attr_paths)
                    if p is not None:
                        env[t.id] = p
        return env

    def path_of(self, node: ast.expr, env: dict, cls: str | None, attr_paths: dict, self_name: str = "self") -> str | None:
        if isinstance(node, ast.Name):
            p = env.get(node.id)
            return None if p is None or p.startswith("@") else p
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and \
                str(env.get(node.value.id, "")).startswith("@"):
            p = self.annotation_path(self.fields[env[node.value.id][1:]].get(node.attr))
            if p is not None:
                return p
        if isinstance(node, ast.Attribute):
            if isinstance(node.value, ast.Name) and node.value.id == self_name and cls is not None:
                if node.attr in attr_paths.get(cls, {}):
                    return attr_paths[cls][node.attr]
            base = self.path_of(node.value, env, cls, attr_paths, self_name)
            if base is not None and self.has(base, node.attr):
                return f"{base}.{node.attr}" if base else node.attr
        return None

    def _fold_config(self) -> None:
        attr_paths = self._class_attr_paths()
        spec = self
        for fn, cls in list(self._functions()):
            env = self._env(fn, cls, attr_paths)
            me = _self(fn)

            class Fold(ast.NodeTransformer):
                def visit_Call(self, n: ast.Call):
                    self.generic_visit(n)
                    f = n.func
                    # dataclasses.asdict(x) of a config value: the literal
                    if (isinstance(f, ast.Attribute) and f.attr == "asdict" and len(n.args) == 1) or (
                            isinstance(f, ast.Name) and f.id == "asdict" and len(n.args) == 1):
                        p = spec.path_of(n.args[0], env, cls, attr_paths, me)
                        if p is not None:
                            return ast.copy_location(to_ast(json.loads(json.dumps(dataclasses.asdict(spec.value(p))))), n)
                    # a method of a config value with constant (or config) arguments
                    if isinstance(f, ast.Attribute):
                        p = spec.path_of(f.value, env, cls, attr_paths, me)
                        if p is not None and callable(getattr(spec.value(p), f.attr, None)):
                            args = []
                            for a in n.args:
                                ap = spec.path_of(a, env, cls, attr_paths, me)
                                if ap is not None:
                                    args.append(spec.value(ap))
                                elif is_const(a):
                                    args.append(const_value(a))
                                else:
                                    return n
                            if not n.keywords:
                                v = getattr(spec.value(p), f.attr)(*args)
                                if literal(v) or isinstance(v, dict):
                                    return ast.copy_location(to_ast(json.loads(json.dumps(v)) if isinstance(v, dict)
                                                                    else v), n)
                    return n

                def visit_Attribute(self, n: ast.Attribute):
                    p = spec.path_of(n, env, cls, attr_paths, me)
                    if p is not None and isinstance(n.ctx, ast.Load):
                        if p in spec.runtime:
                            return ast.copy_location(ast.Name(spec.runtime[p], ast.Load()), n)
                        v = spec.value(p)
                        if literal(v):
                            return ast.copy_location(to_ast(v), n)
                        if data_value(v):
                            spec.uses_ns = True
                            return ast.copy_location(data_ast(v), n)
                        return n  # a section: its uses fold, the object itself becomes None at the end
                    self.generic_visit(n)
                    return n

            Fold().visit(fn)

    # -- 2. constant expressions and dead branches -----------------------------------------------
    def _simplify(self) -> None:
        self.tree = _Simplify().visit(self.tree)

    # -- 3. locals and attributes holding constants ----------------------------------------------
    def _propagate_locals(self) -> None:
        for fn, _ in list(self._functions()):
            assigned = Counter()
            values: dict[str, ast.expr] = {}
            for n in ast.walk(fn):
                if isinstance(n, ast.Name) and isinstance(n.ctx, (ast.Store, ast.Del)):
                    assigned[n.id] += 1
                if isinstance(n, (ast.Global, ast.Nonlocal)):
                    for name in n.names:
                        assigned[name] += 99
            # a name whose every assignment, at any depth of the function's own blocks (not nested
            # scopes), is the same constant: a read that runs after one sees it (one before would fail).
            # An assignment that runs only when the name is not None (`if x is None: ... else: x = ...`)
            # never runs if every other one is None, by induction: it does not count.
            guarded = {k: {id(x) for x in v} for k, v in _none_guarded(fn).items()}
            for name, nodes in _none_guarded(fn).items():
                assigned[name] -= sum(1 for n in nodes if isinstance(n, ast.Name) and n.id == name
                                      and isinstance(n.ctx, ast.Store))
            seen: dict[str, set[str]] = defaultdict(set)
            count: Counter = Counter()
            for n in _own_statements(fn):
                if isinstance(n, ast.Assign) and len(n.targets) == 1 and any(
                        id(t) in guarded.get(getattr(t, "id", None), set()) for t in ast.walk(n.targets[0])):
                    continue
                if isinstance(n, ast.Assign) and len(n.targets) == 1:
                    for t, v in self._pairs(n.targets[0], n.value):
                        if isinstance(t, ast.Name):
                            count[t.id] += 1
                            seen[t.id].add(ast.dump(v) if is_const(v) else "?")
                            values[t.id] = v
            values = {k: v for k, v in values.items() if count[k] == assigned[k] and seen[k] == {ast.dump(v)}}
            args = {a.arg for a in (*fn.args.posonlyargs, *fn.args.args, *fn.args.kwonlyargs)}
            values = {k: v for k, v in values.items() if k not in args}
            if not values:
                continue

            class Sub(ast.NodeTransformer):
                def visit_Name(self, n: ast.Name):
                    if isinstance(n.ctx, ast.Load) and n.id in values:
                        return ast.copy_location(copy_tree(values[n.id]), n)
                    return n

            for stmt in fn.body:
                Sub().visit(stmt)
            read = {n.id for n in ast.walk(fn) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
            for owner, field in _own_blocks(fn):
                block = getattr(owner, field)
                setattr(owner, field, [st for st in block if not (
                    isinstance(st, ast.Assign) and len(st.targets) == 1 and isinstance(st.targets[0], ast.Name)
                    and st.targets[0].id in values and st.targets[0].id not in read)] or [ast.Pass()])

    def _propagate_globals(self) -> None:
        """`NAME = <constant>` at module level, bound nowhere else: its reads become the constant
        (not in a function that has a local of that name)."""
        bound: Counter = Counter()
        consts: dict[str, ast.expr] = {}
        for n in self.tree.body:
            if isinstance(n, ast.Assign) and len(n.targets) == 1 and isinstance(n.targets[0], ast.Name) \
                    and is_const(n.value):
                consts[n.targets[0].id] = n.value
            for sub in ast.walk(n):
                if isinstance(sub, ast.Name) and isinstance(sub.ctx, (ast.Store, ast.Del)):
                    bound[sub.id] += 1
                elif isinstance(sub, (ast.Global, ast.Nonlocal)):
                    bound.update({name: 99 for name in sub.names})
                elif isinstance(sub, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and sub is not n:
                    bound[sub.name] += 1
                elif isinstance(sub, ast.arg):
                    bound[sub.arg] += 1
        # (a backslash cannot go into an f-string's expression part)
        consts = {k: v for k, v in consts.items() if bound[k] == 1 and "\\" not in ast.unparse(v)}
        if not consts:
            return

        class Sub(ast.NodeTransformer):
            def visit_Name(self, n: ast.Name):
                if isinstance(n.ctx, ast.Load) and n.id in consts:
                    return ast.copy_location(copy_tree(consts[n.id]), n)
                return n

        for n in self.tree.body:
            if not (isinstance(n, ast.Assign) and len(n.targets) == 1 and isinstance(n.targets[0], ast.Name)
                    and n.targets[0].id in consts):
                Sub().visit(n)

    def _attr_classes(self) -> dict[tuple[str, str], str]:
        """(class, attr) -> the program class of `self.attr`: stored once, in __init__, from a call of
        that class (without subclasses) or of a module-level function that only returns such calls."""
        if "classes" in self._round:
            return self._round["classes"]
        own, other = self._attr_stores()
        classes = {n.name for n in self.tree.body if isinstance(n, ast.ClassDef) and self._subclasses(n.name) == {n.name}}
        makes: dict[str, str] = {}  # factory function -> the class it returns
        for f in self.tree.body:
            if isinstance(f, ast.FunctionDef) and f.body and isinstance(f.body[-1], ast.Return):
                made = {r.value.func.id if isinstance(r.value, ast.Call) and isinstance(r.value.func, ast.Name) else None
                        for r in ast.walk(f) if isinstance(r, ast.Return)}
                if len(made) == 1 and (c := made.pop()) in classes:
                    makes[f.name] = c
        out = {}
        for fn, cls in self._functions():
            if cls is None or fn.name != "__init__":
                continue
            for st in fn.body:
                if (isinstance(st, ast.Assign) and len(st.targets) == 1 and isinstance(st.targets[0], ast.Attribute)
                        and isinstance(st.targets[0].value, ast.Name) and st.targets[0].value.id == _self(fn)
                        and isinstance(st.value, ast.Call) and isinstance(st.value.func, ast.Name)
                        and self._stored_once(cls, st.targets[0].attr, own, other)):
                    c = st.value.func.id if st.value.func.id in classes else makes.get(st.value.func.id)
                    if c is not None:
                        out[(cls, st.targets[0].attr)] = c
        self._round["classes"] = out
        return out

    def _propagate_attributes(self) -> None:
        """`self.x = <constant>` stored once (in the class, nowhere else): reads of `self.x` there, and
        of `self.y.x` where self.y holds an instance of that class (see _attr_classes)."""
        own, other = self._attr_stores()
        consts: dict[tuple[str, str], ast.expr] = {}
        for fn, cls in self._functions():
            if cls is None:
                continue
            for n in ast.walk(fn):
                if isinstance(n, ast.Assign) and len(n.targets) == 1:
                    for t, v in self._pairs(n.targets[0], n.value):
                        if (isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name) and t.value.id == _self(fn)
                                and is_const(v) and self._stored_once(cls, t.attr, own, other)):
                            for sub in self._subclasses(cls):
                                consts[(sub, t.attr)] = v
        if not consts:
            return
        typed = self._attr_classes()
        classes = {c for c, _ in consts}
        for fn, cls in list(self._functions()):
            receivers = {_self(fn): {a: v for (c, a), v in consts.items() if c == cls}} if cls else {}
            # a parameter annotated with a class without subclasses reads the same constants
            for arg, name in _typed_params(fn, classes).items():
                if self._subclasses(name) == {name}:
                    receivers.setdefault(arg, {a: v for (c, a), v in consts.items() if c == name})
            receivers = {k: v for k, v in receivers.items() if v}
            if cls:  # self.y.x, self.y an instance of a class with constant attributes
                for (d, attr), c in typed.items():
                    if d == cls and any(k == c for k, _ in consts):
                        receivers[f"{_self(fn)}.{attr}"] = {a: v for (k, a), v in consts.items() if k == c}
                held = {attr for (d, attr) in typed if d == cls}
                if held:  # an instance is never None
                    _NotNone(_self(fn), held).visit(fn)
            if receivers:
                _AttrConsts(receivers).visit(fn)

    def _propagate_fields(self) -> None:
        """A dataclass field that every construction gives the same constant (passed, or its constant
        default) and nothing stores: reads of `self.field` in the class's own methods. Only for a class
        without bases or subclasses whose name is used for nothing but constructing it."""
        own, other = self._attr_stores()
        skip = {id(x) for a in _annotations(self.tree) for x in ast.walk(a)}
        calls: dict[str, list[ast.Call]] = defaultdict(list)  # by the called name
        names: dict[str, list[ast.Name]] = defaultdict(list)  # loads by name, annotations left out
        factory_refs: dict[tuple[str, str], list[ast.Name]] = defaultdict(list)  # Name.attr -> the Name
        replaced = set()  # dataclasses.replace(x, field=...) makes instances too
        for n in ast.walk(self.tree):
            if isinstance(n, ast.Call):
                if isinstance(n.func, ast.Name):
                    calls[n.func.id].append(n)
                if getattr(n.func, "id", None) == "replace" or getattr(n.func, "attr", None) == "replace":
                    replaced |= {k.arg for k in n.keywords}
            elif isinstance(n, ast.Name) and id(n) not in skip:
                names[n.id].append(n)
            elif isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name):
                factory_refs[(n.value.id, n.attr)].append(n.value)
        for node in self.tree.body:
            if not (isinstance(node, ast.ClassDef) and _plain_dataclass(node) and self._subclasses(node.name) == {node.name}):
                continue
            fields = [(f.target.id, f.value) for f in node.body
                      if isinstance(f, ast.AnnAssign) and isinstance(f.target, ast.Name)]
            sites, allowed = [], set()
            factories = {m.name for m in node.body if isinstance(m, ast.FunctionDef)
                         and any(getattr(d, "id", None) == "classmethod" for d in m.decorator_list)}
            for m in node.body:  # cls(...) in a classmethod constructs it too
                if isinstance(m, ast.FunctionDef) and m.name in factories:
                    sites += [c for c in ast.walk(m) if isinstance(c, ast.Call) and getattr(c.func, "id", None) == _self(m)]
            for c in calls.get(node.name, []):
                sites.append(c)
                allowed.add(id(c.func))
            for f in factories:
                allowed |= {id(x) for x in factory_refs.get((node.name, f), [])}
            if not sites or any(id(n) not in allowed for n in names.get(node.name, [])):
                continue  # the class is passed around as a value: instances may come from elsewhere
            consts: dict[str, ast.expr] = {}
            for i, (f, default) in enumerate(fields):
                if own[(node.name, f)] or other[f] or f in replaced:
                    continue
                seen = set()
                for c in sites:
                    if any(isinstance(a, ast.Starred) for a in c.args) or any(k.arg is None for k in c.keywords):
                        seen.add("?")
                        break
                    v = c.args[i] if i < len(c.args) else next((k.value for k in c.keywords if k.arg == f), default)
                    seen.add(ast.dump(v) if v is not None and is_const(v) else "?")
                    consts[f] = v
                if len(seen) != 1 or "?" in seen:
                    consts.pop(f, None)
            if not consts:
                continue
            for m in node.body:
                if isinstance(m, ast.FunctionDef) and not any(
                        getattr(d, "id", None) in ("classmethod", "staticmethod") for d in m.decorator_list):
                    _AttrConsts({_self(m): consts}).visit(m)

    def _inline_constant_functions(self) -> None:
        """A function whose body is `return <constant>`: its calls with simple arguments are that constant."""
        consts = {}
        for n in self.tree.body:
            if isinstance(n, ast.FunctionDef) and len(n.body) == 1 and isinstance(n.body[0], ast.Return) and (
                    n.body[0].value is None or is_const(n.body[0].value)) and not n.decorator_list:
                consts[n.name] = n.body[0].value or ast.Constant(None)
        # a method `def m(self, ...): return <constant>` defined by one class only: `self.m(...)` in that
        # class, and `x.m(...)` where x is a parameter annotated with that class
        defs = Counter(m.name for c in self.tree.body if isinstance(c, ast.ClassDef) for m in c.body
                       if isinstance(m, ast.FunctionDef))
        by_class: dict[str, dict[str, ast.expr]] = {}
        for c in self.tree.body:
            if not isinstance(c, ast.ClassDef):
                continue
            own = {m.name: m.body[0].value or ast.Constant(None) for m in c.body
                   if isinstance(m, ast.FunctionDef) and defs[m.name] == 1 and not m.decorator_list
                   and m.args.args and m.args.args[0].arg == "self" and not (m.args.vararg or m.args.kwarg)
                   and len(m.body) == 1 and isinstance(m.body[0], ast.Return)
                   and (m.body[0].value is None or is_const(m.body[0].value))}
            if own:
                _SelfConstCalls(own).visit(c)
                if self._subclasses(c.name) == {c.name}:
                    by_class[c.name] = own
        for fn, _ in list(self._functions()):
            for arg, name in _typed_params(fn, set(by_class)).items():
                _SelfConstCalls(by_class[name], arg).visit(fn)
        if not consts:
            return

        class Sub(ast.NodeTransformer):
            def visit_Call(self, c: ast.Call):
                self.generic_visit(c)
                if isinstance(c.func, ast.Name) and c.func.id in consts and all(
                        _simple(a) for a in [*c.args, *[k.value for k in c.keywords]]):
                    return ast.copy_location(copy_tree(consts[c.func.id]), c)
                return c

        self.tree = Sub().visit(self.tree)

    def _drop_idle_calls(self) -> None:
        """`f(<constants>)` as a statement, where f's body with those arguments folds to nothing (a check
        that passes, `return []`): the statement goes."""
        funcs = {n.name: n for n in self.tree.body if isinstance(n, ast.FunctionDef) and not n.decorator_list
                 and not (n.args.vararg or n.args.kwarg or n.args.posonlyargs)}

        def idle(c: ast.Call) -> bool:
            fn = funcs.get(c.func.id) if isinstance(c.func, ast.Name) else None
            if fn is None or any(isinstance(a, ast.Starred) for a in c.args) or any(k.arg is None for k in c.keywords):
                return False
            params = [a.arg for a in fn.args.args] + [a.arg for a in fn.args.kwonlyargs]
            bound = dict(zip([a.arg for a in fn.args.args][len(fn.args.args) - len(fn.args.defaults):], fn.args.defaults))
            bound |= {a.arg: d for a, d in zip(fn.args.kwonlyargs, fn.args.kw_defaults) if d is not None}
            bound |= dict(zip(params, c.args)) | {k.arg: k.value for k in c.keywords}
            if set(bound) != set(params) or not all(is_const(v) for v in bound.values()):
                return False

            class Sub(ast.NodeTransformer):
                def visit_Name(self, n: ast.Name):
                    return ast.copy_location(copy_tree(bound[n.id]), n) if n.id in bound else n

            body = _Simplify().visit(ast.Module(body=[Sub().visit(copy_tree(st)) for st in fn.body], type_ignores=[]))
            rest = [st for st in body.body if not isinstance(st, ast.Pass) and not _is_docstring(st)]
            return not rest or (len(rest) == 1 and isinstance(rest[0], ast.Return) and (
                rest[0].value is None or _literal_expr(rest[0].value)))

        class Drop(ast.NodeTransformer):
            def visit_Expr(self, n: ast.Expr):
                return ast.Pass() if isinstance(n.value, ast.Call) and idle(n.value) else n

        self.tree = Drop().visit(self.tree)

    def _direct_calls(self) -> tuple[dict, dict]:
        """(name -> function or __init__, name -> its call nodes) for definitions used only by direct calls."""
        funcs: dict[str, ast.FunctionDef] = {n.name: n for n in self.tree.body if isinstance(n, ast.FunctionDef)}
        for n in self.tree.body:
            if isinstance(n, ast.ClassDef):
                init = next((m for m in n.body if isinstance(m, ast.FunctionDef) and m.name == "__init__"), None)
                if init is not None and not n.decorator_list and not any(
                        isinstance(c, ast.ClassDef) and any(isinstance(b, ast.Name) and b.id == n.name for b in c.bases)
                        for c in self.tree.body):
                    funcs[n.name] = init
        calls: dict[str, list[ast.Call]] = defaultdict(list)
        uses: Counter = Counter()
        skip = {id(x) for a in _annotations(self.tree) for x in ast.walk(a)}
        for n in ast.walk(self.tree):
            if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id in funcs:
                calls[n.func.id].append(n)
            elif isinstance(n, ast.Name) and n.id in funcs and isinstance(n.ctx, ast.Load) and id(n) not in skip:
                uses[n.id] += 1
        ok = {k: f for k, f in funcs.items() if calls.get(k) and uses[k] == len(calls[k]) and k not in self.keep_params
              and not (f.args.vararg or f.args.kwarg or f.args.posonlyargs) and _plain_signature(f)}
        # a base class built only through its subclasses' super().__init__(...) (each has its own
        # __init__, none has subclasses, the base's name is used only as their base)
        classes = {n.name: n for n in self.tree.body if isinstance(n, ast.ClassDef)}
        for name, base in classes.items():
            init = next((m for m in base.body if isinstance(m, ast.FunctionDef) and m.name == "__init__"), None)
            subs = [c for c in classes.values() if any(isinstance(b, ast.Name) and b.id == name for b in c.bases)]
            if init is None or not subs or base.decorator_list or calls.get(name) or name in self.keep_params \
                    or init.args.vararg or init.args.kwarg or init.args.posonlyargs or not _plain_signature(init):
                continue
            sub_inits = [next((m for m in c.body if isinstance(m, ast.FunctionDef) and m.name == "__init__"), None)
                         for c in subs]
            if any(i is None for i in sub_inits) or any(self._subclasses(c.name) != {c.name} for c in subs) \
                    or any(len(c.bases) != 1 for c in subs) or sum(
                        1 for n in ast.walk(self.tree) if isinstance(n, ast.Name) and n.id == name
                        and isinstance(n.ctx, ast.Load) and id(n) not in skip) != len(subs):
                continue
            sites = [c for i in sub_inits for c in ast.walk(i) if _is_super_init(c)]
            if len(sites) == len(subs):
                ok[f"{name}.__init__"], calls[f"{name}.__init__"] = init, sites
        return ok, calls

    def _drop_unused_parameters(self) -> None:
        """A parameter the body never reads (after folding) leaves the signature and every call, when
        each call passes it as a side-effect-free expression."""
        funcs, calls = self._direct_calls()
        targets = [(fn, calls[name], fn.name == "__init__" and name != "__init__") for name, fn in funcs.items()]
        targets += [(fn, sites, True) for fn, sites in self._self_only_methods()]
        for fn, sites, is_init in targets:  # is_init: the first parameter (self) is no call argument
            read = {n.id for st in fn.body for n in ast.walk(st) if isinstance(n, ast.Name)}
            read |= {n.id for d in [*fn.args.defaults, *fn.args.kw_defaults] if d is not None for n in ast.walk(d)
                     if isinstance(n, ast.Name)}
            positional = [a.arg for a in fn.args.args][1 if is_init else 0:]
            for p in [a.arg for a in fn.args.args][1 if is_init else 0:] + [a.arg for a in fn.args.kwonlyargs]:
                if p in read:
                    continue
                i = positional.index(p) if p in positional else None
                if any(any(isinstance(x, ast.Starred) for x in c.args) or any(k.arg is None for k in c.keywords)
                       for c in sites):
                    break
                passed = [(c.args[i] if i is not None and i < len(c.args) else
                           next((k.value for k in c.keywords if k.arg == p), None)) for c in sites]
                if not all(v is None or _simple(v) or is_const(v) for v in passed):
                    continue
                for c in sites:
                    if i is not None and i < len(c.args):
                        del c.args[i]
                    c.keywords = [k for k in c.keywords if k.arg != p]
                _remove_param(fn, p)
                if i is not None:
                    positional.remove(p)

    def _drop_unread_attributes(self) -> None:
        """`self.x = <constant>` where no `.x` is read anywhere (nor named in a string): the store goes."""
        read = set()
        for n in ast.walk(self.tree):
            if isinstance(n, ast.Attribute) and not isinstance(n.ctx, ast.Store):
                read.add(n.attr)
            elif isinstance(n, ast.Constant) and isinstance(n.value, str):
                read.add(n.value)
        for fn, cls in self._functions():
            if cls is None:
                continue
            me = _self(fn)
            for block_owner in ast.walk(fn):
                for field in ("body", "orelse", "finalbody"):
                    block = getattr(block_owner, field, None)
                    if not isinstance(block, list) or not block or not isinstance(block[0], ast.stmt):
                        continue
                    keep = []
                    for st in block:
                        if (isinstance(st, ast.Assign) and len(st.targets) == 1 and isinstance(st.targets[0], ast.Attribute)
                                and isinstance(st.targets[0].value, ast.Name) and st.targets[0].value.id == me
                                and st.targets[0].attr not in read and is_const(st.value)):
                            continue
                        keep.append(st)
                    setattr(block_owner, field, keep or [ast.Pass()])

    # -- 4. parameters every call site passes the same constant -----------------------------------
    def _propagate_arguments(self) -> None:
        funcs: dict[str, ast.FunctionDef] = {n.name: n for n in self.tree.body if isinstance(n, ast.FunctionDef)}
        inits = {}  # a class's constructor calls fix its __init__ parameters (after self)
        for n in self.tree.body:
            if isinstance(n, ast.ClassDef):
                init = next((m for m in n.body if isinstance(m, ast.FunctionDef) and m.name == "__init__"), None)
                if init is not None:
                    inits[n.name] = init
        funcs = {**funcs, **inits}
        calls: dict[str, list[ast.Call]] = defaultdict(list)
        other_uses: Counter = Counter()
        for n in ast.walk(self.tree):
            if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id in funcs:
                calls[n.func.id].append(n)
        skip = {id(x) for a in _annotations(self.tree) for x in ast.walk(a)}
        for n in self.tree.body:  # super().__init__(...) in a subclass is a call of its base's __init__
            if isinstance(n, ast.ClassDef) and len(n.bases) == 1 and isinstance(n.bases[0], ast.Name) \
                    and n.bases[0].id in inits:
                skip.add(id(n.bases[0]))
                for c in ast.walk(n):
                    if _is_super_init(c):
                        calls[n.bases[0].id].append(c)
                        other_uses[n.bases[0].id] += 1
        for n in ast.walk(self.tree):
            if isinstance(n, ast.Name) and n.id in funcs and isinstance(n.ctx, ast.Load) and id(n) not in skip:
                other_uses[n.id] += 1
        targets = [(fn, calls.get(name, []), name in inits) for name, fn in funcs.items()
                   if calls.get(name) and other_uses[name] == len(calls[name])  # else passed around as a value
                   and name not in self.keep_params]
        targets += [(fn, sites, True) for fn, sites in self._self_only_methods()]
        for fn, sites, method in targets:
            a = fn.args
            if a.vararg or a.kwarg or a.posonlyargs:
                continue
            positional = [p.arg for p in a.args][1:] if method else [p.arg for p in a.args]
            params = positional + [p.arg for p in a.kwonlyargs]
            defaults = dict(zip([p.arg for p in a.args][len(a.args) - len(a.defaults):], a.defaults))
            defaults.update({p.arg: d for p, d in zip(a.kwonlyargs, a.kw_defaults) if d is not None})
            assigned = {n.id for n in ast.walk(fn) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
            fixed: dict[str, ast.expr] = {}
            for i, p in enumerate(params):
                if p in assigned:
                    continue
                seen = set()
                value = None
                for call in sites:
                    if any(isinstance(x, ast.Starred) for x in call.args) or any(k.arg is None for k in call.keywords):
                        seen.add("?")
                        break
                    v = None
                    if i < len(call.args) and i < len(positional):
                        v = call.args[i]
                    else:
                        v = next((k.value for k in call.keywords if k.arg == p), None)
                        if v is None:
                            v = defaults.get(p)
                    if v is None or not is_const(v):
                        seen.add("?")
                        break
                    seen.add(ast.dump(v))
                    value = v
                if len(seen) == 1 and "?" not in seen:
                    fixed[p] = value
            if not fixed:
                continue

            class Sub(ast.NodeTransformer):
                def visit_Name(self, n: ast.Name):
                    if isinstance(n.ctx, ast.Load) and n.id in fixed:
                        return ast.copy_location(copy_tree(fixed[n.id]), n)
                    return n

            for stmt in fn.body:
                Sub().visit(stmt)

    def _self_only_methods(self) -> list[tuple[ast.FunctionDef, list[ast.Call]]]:
        """(method, its calls) for plain methods of a class without bases or subclasses that only that
        class's own `self.m(...)` calls reach (no other reference to `.m` in the program)."""
        refs: Counter = Counter()
        named = set()
        for n in ast.walk(self.tree):
            if isinstance(n, ast.Attribute):
                refs[n.attr] += 1
            elif isinstance(n, ast.Constant) and isinstance(n.value, str):
                named.add(n.value)
        out = []
        typed = self._attr_classes()
        for c in self.tree.body:
            if not (isinstance(c, ast.ClassDef) and not c.bases and self._subclasses(c.name) == {c.name}):
                continue
            methods = {m.name: m for m in c.body if isinstance(m, ast.FunctionDef) and _plain_signature(m)
                       and not m.name.startswith("__") and m.args.args and m.name not in named}  # (getattr)
            sites: dict[str, list[ast.Call]] = defaultdict(list)
            for m in c.body:
                if isinstance(m, ast.FunctionDef):
                    me = _self(m)
                    for n in ast.walk(m):
                        if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr in methods \
                                and isinstance(n.func.value, ast.Name) and n.func.value.id == me:
                            sites[n.func.attr].append(n)
            for fn, d in self._functions():  # self.y.m(...), self.y an instance of c
                holders = {attr for (k, attr), cls in typed.items() if k == d and cls == c.name} if d else set()
                for n in ast.walk(fn) if holders else ():
                    f = n.func if isinstance(n, ast.Call) else None
                    if isinstance(f, ast.Attribute) and f.attr in methods and isinstance(f.value, ast.Attribute) \
                            and f.value.attr in holders and isinstance(f.value.value, ast.Name) \
                            and f.value.value.id == _self(fn):
                        sites[f.attr].append(n)
            out += [(methods[k], v) for k, v in sites.items() if refs[k] == len(v)]
        return out

    # -- what is left ----------------------------------------------------------------------------
    def drop_sections(self) -> None:
        """Config sections still passed around (`GPT(cfg.model)`): every read of them folded, so at run
        time they are None (the config object is not in the program)."""
        attr_paths = self._class_attr_paths()
        spec = self
        for fn, cls in list(self._functions()):
            env = self._env(fn, cls, attr_paths)
            me = _self(fn)

            class Drop(ast.NodeTransformer):
                def visit_Attribute(self, n: ast.Attribute):
                    p = spec.path_of(n, env, cls, attr_paths, me)
                    if p is not None and isinstance(n.ctx, ast.Load) and dataclasses.is_dataclass(spec.value(p)):
                        return ast.copy_location(ast.Constant(None), n)
                    self.generic_visit(n)
                    return n

            Drop().visit(fn)

    def config_reads(self) -> list[str]:
        """Config reads that did not fold (each would need the config object at run time)."""
        attr_paths = self._class_attr_paths()
        out = []
        for fn, cls in self._functions():
            env = self._env(fn, cls, attr_paths)
            me = _self(fn)
            for n in ast.walk(fn):
                if isinstance(n, ast.Attribute) and isinstance(n.ctx, ast.Load):
                    p = self.path_of(n, env, cls, attr_paths, me)
                    if p is not None and not literal(self.value(p)) and p not in self.runtime:
                        out.append(f"{cls + '.' if cls else ''}{fn.name}: {ast.unparse(n)} ({p})")
        sections = {name: {f.name for f in dataclasses.fields(c)} | {a for a in vars(c) if not a.startswith("_")}
                    for name, c in SECTIONS.items()}
        every = set().union(*sections.values())
        for n in ast.walk(self.tree):  # config-looking reads in code without types: a.model.x, m.cfg.y
            if (isinstance(n, ast.Attribute) and isinstance(n.value, ast.Attribute) and isinstance(n.ctx, ast.Load)
                    and (n.value.attr in sections and n.attr in sections[n.value.attr]
                         or n.value.attr == "cfg" and n.attr in every)):
                out.append(f"untyped read: {ast.unparse(n)}")
        return out


class _SelfConstCalls(ast.NodeTransformer):
    """`self.m(<simple arguments>)` -> the constant m returns (m: a method of this class; `me` names
    the receiver)."""

    def __init__(self, consts: dict[str, ast.expr], me: str = "self"):
        self.consts, self.me = consts, me

    def visit_Call(self, c: ast.Call):
        self.generic_visit(c)
        f = c.func
        if (isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) and f.value.id == self.me
                and f.attr in self.consts and all(_simple(a) for a in [*c.args, *[k.value for k in c.keywords]])):
            return ast.copy_location(copy_tree(self.consts[f.attr]), c)
        return c


class _AttrConsts(ast.NodeTransformer):
    """Reads of `x.attr`: the constant for that receiver name and attr."""

    def __init__(self, receivers: dict[str, dict[str, ast.expr]]):
        self.receivers = receivers

    def visit_Attribute(self, n: ast.Attribute):
        v = n.value
        key = v.id if isinstance(v, ast.Name) else \
            f"{v.value.id}.{v.attr}" if isinstance(v, ast.Attribute) and isinstance(v.value, ast.Name) else None
        if isinstance(n.ctx, ast.Load) and key is not None and n.attr in self.receivers.get(key, {}):
            return ast.copy_location(copy_tree(self.receivers[key][n.attr]), n)
        self.generic_visit(n)
        return n


class _NotNone(ast.NodeTransformer):
    """`me.attr is None` / `is not None` for attributes that hold an instance: False / True."""

    def __init__(self, me: str, attrs: set[str]):
        self.me, self.attrs = me, attrs

    def visit_Compare(self, n: ast.Compare):
        self.generic_visit(n)
        left = n.left
        if (len(n.ops) == 1 and isinstance(n.ops[0], (ast.Is, ast.IsNot)) and isinstance(n.comparators[0], ast.Constant)
                and n.comparators[0].value is None and isinstance(left, ast.Attribute) and left.attr in self.attrs
                and isinstance(left.value, ast.Name) and left.value.id == self.me):
            return ast.copy_location(ast.Constant(isinstance(n.ops[0], ast.IsNot)), n)
        return n


class _LoopConstTests(ast.NodeTransformer):
    """`t == c`, `t != c`, `t in <constants>` over a loop variable t whose values are all known: the
    constant result when every value gives the same one."""

    def __init__(self, name: str, values: list):
        self.name, self.values = name, values

    def visit_Compare(self, n: ast.Compare):
        self.generic_visit(n)
        if not (isinstance(n.left, ast.Name) and n.left.id == self.name and len(n.ops) == 1
                and type(n.ops[0]) in _CMP and is_const(n.comparators[0])):
            return n
        op, other = _CMP[type(n.ops[0])], const_value(n.comparators[0])
        try:
            results = {bool(op(v, other)) for v in self.values}
        except TypeError:
            return n
        return ast.copy_location(ast.Constant(results.pop()), n) if len(results) == 1 else n


def _record_fields(elts: list[ast.expr]) -> dict[str, ast.expr]:
    """field -> constant for the fields every `_NS(...)` record of a literal gives the same constant."""
    if not elts or not all(isinstance(e, ast.Call) and getattr(e.func, "id", None) == NS and not e.args for e in elts):
        return {}
    common = None
    for e in elts:
        mine = {k.arg: ast.dump(k.value) for k in e.keywords if k.arg and is_const(k.value)}
        common = mine if common is None else {k: v for k, v in common.items() if mine.get(k) == v}
    return {k.arg: k.value for k in elts[0].keywords if k.arg in (common or {})}


class _RecordFields(ast.NodeTransformer):
    def __init__(self, name: str, fields: dict[str, ast.expr]):
        self.name, self.fields = name, fields

    def visit_Attribute(self, n: ast.Attribute):
        if isinstance(n.value, ast.Name) and n.value.id == self.name and n.attr in self.fields \
                and isinstance(n.ctx, ast.Load):
            return ast.copy_location(copy_tree(self.fields[n.attr]), n)
        return self.generic_visit(n)


# decorators that keep a function's signature and pass its calls' arguments through as they are
PLAIN_DECORATORS = ("torch.no_grad()", "torch.inference_mode()", "torch.enable_grad()", "contextmanager")


def _plain_signature(fn: ast.FunctionDef) -> bool:
    return all(ast.unparse(d) in PLAIN_DECORATORS for d in fn.decorator_list)


def _typed_params(fn: ast.FunctionDef, classes: set[str]) -> dict[str, str]:
    """parameter -> class, for the parameters annotated with one of `classes` that fn never rebinds."""
    typed = {a.arg: a.annotation.id for a in fn.args.args + fn.args.kwonlyargs
             if isinstance(a.annotation, ast.Name) and a.annotation.id in classes}
    if typed:
        stored = {n.id for n in ast.walk(fn) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
        typed = {k: v for k, v in typed.items() if k not in stored}
    return typed


def _own_blocks(fn: ast.FunctionDef):
    """(node, field) for every statement list of a function's own scope (nested scopes left out)."""
    todo: list[ast.AST] = [fn]
    while todo:
        n = todo.pop()
        for field in ("body", "orelse", "finalbody", "handlers", "cases"):
            block = getattr(n, field, None)
            if isinstance(block, list) and block:
                if field in ("body", "orelse", "finalbody"):
                    yield n, field
                todo += [s for s in block if not isinstance(s, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))]


def _none_guarded(fn: ast.FunctionDef) -> dict[str, list[ast.AST]]:
    """name -> the nodes that run only when the name is not None: the body of `if name is not None:`
    and the else of `if name is None:` (a test of just that)."""
    out: dict[str, dict[int, ast.AST]] = defaultdict(dict)
    for st in _own_statements(fn):
        if not (isinstance(st, ast.If) and isinstance(st.test, ast.Compare) and isinstance(st.test.left, ast.Name)
                and len(st.test.ops) == 1 and isinstance(st.test.ops[0], (ast.Is, ast.IsNot))
                and isinstance(st.test.comparators[0], ast.Constant) and st.test.comparators[0].value is None):
            continue
        block = st.body if isinstance(st.test.ops[0], ast.IsNot) else st.orelse
        out[st.test.left.id].update((id(x), x) for b in block for x in ast.walk(b))
    return {k: list(v.values()) for k, v in out.items()}


def _own_statements(fn: ast.FunctionDef) -> list[ast.stmt]:
    return [s for owner, field in _own_blocks(fn) for s in getattr(owner, field)]


def _plain_dataclass(node: ast.ClassDef) -> bool:
    """A dataclass without bases whose annotated fields are its constructor's parameters, in order (no
    own __init__ / __post_init__, no ClassVar / InitVar / KW_ONLY, no field(init=False))."""
    if node.bases or not any(getattr(d.func if isinstance(d, ast.Call) else d, "id", None) == "dataclass"
                             for d in node.decorator_list):
        return False
    for f in node.body:
        if isinstance(f, ast.FunctionDef) and f.name in ("__init__", "__post_init__"):
            return False
        if isinstance(f, ast.AnnAssign) and (any(w in ast.unparse(f.annotation) for w in ("ClassVar", "InitVar", "KW_ONLY"))
                                             or isinstance(f.value, ast.Call) and any(k.arg == "init" for k in f.value.keywords)):
            return False
    return True


def _is_super_init(c: ast.AST) -> bool:
    """`super().__init__(...)`"""
    return (isinstance(c, ast.Call) and isinstance(c.func, ast.Attribute) and c.func.attr == "__init__"
            and isinstance(c.func.value, ast.Call) and isinstance(c.func.value.func, ast.Name)
            and c.func.value.func.id == "super" and not c.func.value.args)


def _annassign_to_assign(tree: ast.Module) -> None:
    """`self.x: T = v` inside functions as `self.x = v` (the annotation is dropped later anyway)."""
    for fn in ast.walk(tree):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for n in ast.walk(fn):
                for name in ("body", "orelse", "finalbody"):
                    block = getattr(n, name, None)
                    if isinstance(block, list):
                        setattr(n, name, [ast.copy_location(ast.Assign([s.target], s.value), s)
                                          if isinstance(s, ast.AnnAssign) and s.value is not None
                                          else s for s in block])


def _annotations(tree: ast.AST) -> list[ast.expr]:
    out = []
    for n in ast.walk(tree):
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)):
            out += [x.annotation for x in (*n.args.posonlyargs, *n.args.args, *n.args.kwonlyargs, n.args.vararg,
                                           n.args.kwarg) if x is not None and x.annotation is not None]
            if n.returns is not None:
                out.append(n.returns)
        elif isinstance(n, ast.AnnAssign):
            out.append(n.annotation)
    return out


def _self(fn: ast.FunctionDef) -> str:
    args = fn.args.posonlyargs + fn.args.args
    return args[0].arg if args else "self"


class _Simplify(ast.NodeTransformer):
    """Constant folding over literals, and the live branch of constant conditions."""

    def visit_FormattedValue(self, n: ast.FormattedValue):
        n.value = self.visit(n.value)  # the format spec stays an f-string node
        return n

    def visit_JoinedStr(self, n: ast.JoinedStr):
        """f"...{<constant>}..." -> the text, merged into its neighbours (a fully constant f-string is a str)."""
        self.generic_visit(n)
        parts: list[ast.expr] = []
        for v in n.values:
            if isinstance(v, ast.FormattedValue) and isinstance(v.value, ast.Constant) and (
                    v.format_spec is None or all(isinstance(x, ast.Constant) for x in v.format_spec.values)):
                conv = {-1: lambda x: x, 115: str, 114: repr, 97: ascii}[v.conversion]
                spec = "".join(x.value for x in v.format_spec.values) if v.format_spec is not None else ""
                try:
                    v = ast.Constant(format(conv(v.value.value), spec))
                except (TypeError, ValueError):
                    pass
            if parts and isinstance(v, ast.Constant) and isinstance(parts[-1], ast.Constant):
                parts[-1] = ast.Constant(parts[-1].value + v.value)
            else:
                parts.append(v)
        if all(isinstance(p, ast.Constant) for p in parts):
            return ast.copy_location(ast.Constant("".join(p.value for p in parts)), n)
        n.values = parts
        return n

    def visit_BinOp(self, n: ast.BinOp):
        self.generic_visit(n)
        if is_const(n.left) and is_const(n.right) and type(n.op) in _BIN:
            try:
                v = _BIN[type(n.op)](const_value(n.left), const_value(n.right))
            except Exception:
                return n
            if literal(v) and not (isinstance(v, (int, float)) and abs(v) > 1e18):
                return ast.copy_location(to_ast(v), n)
        return n

    def visit_UnaryOp(self, n: ast.UnaryOp):
        self.generic_visit(n)
        if is_const(n.operand):
            v = const_value(n.operand)
            try:
                r = {ast.Not: lambda x: not x, ast.USub: operator.neg, ast.UAdd: operator.pos}[type(n.op)](v)
            except (KeyError, TypeError):
                return n
            return ast.copy_location(to_ast(r), n)
        return n

    def visit_Compare(self, n: ast.Compare):
        self.generic_visit(n)
        if is_const(n.left) and all(is_const(c) for c in n.comparators) and all(type(o) in _CMP for o in n.ops):
            left, ok = const_value(n.left), True
            for op, c in zip(n.ops, n.comparators):
                right = const_value(c)
                try:
                    ok = ok and _CMP[type(op)](left, right)
                except TypeError:
                    return n
                left = right
            return ast.copy_location(ast.Constant(bool(ok)), n)
        # a chain `a < b < x` with a false constant link is false (links are and-ed; the rest is pure)
        items = [n.left, *n.comparators]
        if all(type(o) in _CMP for o in n.ops) and all(_simple(x) for x in items):
            for i, op in enumerate(n.ops):
                if is_const(items[i]) and is_const(items[i + 1]):
                    try:
                        if not _CMP[type(op)](const_value(items[i]), const_value(items[i + 1])):
                            return ast.copy_location(ast.Constant(False), n)
                    except TypeError:
                        return n
        return n

    def visit_BoolOp(self, n: ast.BoolOp):
        """`a and b and ...`: a deciding constant ends the chain; a neutral one not in last place drops."""
        self.generic_visit(n)
        deciding = (lambda v: not v) if isinstance(n.op, ast.And) else bool
        out: list[ast.expr] = []
        for i, v in enumerate(n.values):
            last = i == len(n.values) - 1
            if is_const(v):
                if deciding(const_value(v)):
                    out.append(v)
                    break
                if not last:
                    continue
            out.append(v)
        if len(out) == 1:
            return ast.copy_location(out[0], n)
        n.values = out
        return n

    def visit_IfExp(self, n: ast.IfExp):
        self.generic_visit(n)
        n.test = _neutral_tail(n.test)
        t = _truth(n.test)
        if t is not None:
            return ast.copy_location(n.body if t else n.orelse, n)
        return n

    def visit_Call(self, n: ast.Call):
        self.generic_visit(n)
        if (isinstance(n.func, ast.Name) and n.func.id in ("any", "all") and len(n.args) == 1 and not n.keywords
                and isinstance(n.args[0], (ast.GeneratorExp, ast.ListComp))):
            first = n.args[0].generators[0].iter
            if isinstance(first, (ast.Tuple, ast.List)) and not first.elts:  # over an empty literal
                return ast.copy_location(ast.Constant(n.func.id == "all"), n)
        if (isinstance(n.func, ast.Name) and n.func.id in ("tuple", "list") and len(n.args) == 1 and not n.keywords
                and isinstance(n.args[0], (ast.GeneratorExp, ast.ListComp))
                and isinstance(n.args[0].generators[0].iter, (ast.Tuple, ast.List)) and not n.args[0].generators[0].iter.elts):
            return ast.copy_location((ast.Tuple if n.func.id == "tuple" else ast.List)([], ast.Load()), n)
        if (isinstance(n.func, ast.Name) and n.func.id in _PURE_BUILTINS and not n.keywords
                and n.args and all(is_const(a) for a in n.args)):
            try:
                v = _PURE_BUILTINS[n.func.id](*[const_value(a) for a in n.args])
            except Exception:
                return n
            if literal(v):
                return ast.copy_location(to_ast(v), n)
        return n

    def visit_If(self, n: ast.If):
        self.generic_visit(n)
        n.test = _neutral_tail(n.test)
        t = _truth(n.test)
        if t is not None:
            return (n.body if t else n.orelse) or [ast.Pass()]
        return n

    def visit_For(self, n: ast.For):
        # `for t in (<constants>)`: a test on t that every element answers alike is that answer
        if isinstance(n.target, ast.Name) and isinstance(n.iter, (ast.Tuple, ast.List)) and n.iter.elts \
                and all(isinstance(e, ast.Constant) for e in n.iter.elts) and not any(
                isinstance(x, ast.Name) and x.id == n.target.id and isinstance(x.ctx, ast.Store) for b in n.body
                for x in ast.walk(b)):
            n.body = [_LoopConstTests(n.target.id, [e.value for e in n.iter.elts]).visit(b) for b in n.body]
        self.generic_visit(n)
        return n

    def _comprehension(self, n: ast.ListComp | ast.SetComp | ast.GeneratorExp):
        """`(g for g in (_NS(k=...), ...) if ...)`: a field every record gives the same constant is that
        constant; an `if` that is then always false leaves nothing to iterate."""
        g = n.generators[0] if len(n.generators) == 1 else None
        if g is not None and isinstance(g.target, ast.Name) and isinstance(g.iter, (ast.Tuple, ast.List)):
            fields = _record_fields(g.iter.elts)
            if fields:
                fold = _RecordFields(g.target.id, fields)
                g.ifs = [fold.visit(c) for c in g.ifs]
                n.elt = fold.visit(n.elt)
        self.generic_visit(n)
        if g is not None and any(_truth(c) is False for c in g.ifs):
            g.iter = ast.copy_location(ast.Tuple([], ast.Load()), g.iter)
            g.ifs = []
        if g is not None and isinstance(g.iter, (ast.Tuple, ast.List)) and not g.iter.elts \
                and isinstance(n, ast.ListComp):
            return ast.copy_location(ast.List([], ast.Load()), n)
        return n

    visit_ListComp = visit_SetComp = visit_GeneratorExp = _comprehension

    def visit_While(self, n: ast.While):
        self.generic_visit(n)
        n.test = _neutral_tail(n.test)
        if _truth(n.test) is False:
            return n.orelse or [ast.Pass()]
        return n

    def visit_Assert(self, n: ast.Assert):
        return None  # the counted script carries no asserts

    def generic_visit(self, node: ast.AST) -> ast.AST:
        node = super().generic_visit(node)
        for name in ("body", "orelse", "finalbody"):
            block = getattr(node, name, None)
            if isinstance(block, list) and block and isinstance(block[0], ast.stmt):
                setattr(node, name, _tidy(block))
        body = getattr(node, "body", None)  # a block emptied by folding still needs a statement
        if isinstance(body, list) and not body and not isinstance(node, ast.Module):
            node.body = [ast.Pass()]
        return node


def _literal_expr(e: ast.expr) -> bool:
    """A literal built of constants (no calls): [], {}, (1, 2), ..."""
    if is_const(e):
        return True
    if isinstance(e, (ast.List, ast.Tuple, ast.Set)):
        return all(_literal_expr(x) for x in e.elts)
    if isinstance(e, ast.Dict):
        return all(k is not None and _literal_expr(k) for k in e.keys) and all(_literal_expr(v) for v in e.values)
    return False


def _is_docstring(s: ast.stmt) -> bool:
    return isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant) and isinstance(s.value.value, str)


def _remove_param(fn: ast.FunctionDef, p: str) -> None:
    a = fn.args
    names = [x.arg for x in a.args]
    if p in names:
        i = names.index(p)
        first_default = len(a.args) - len(a.defaults)
        if i >= first_default:
            del a.defaults[i - first_default]
        del a.args[i]
    else:
        i = [x.arg for x in a.kwonlyargs].index(p)
        del a.kwonlyargs[i]
        del a.kw_defaults[i]


def _simple(e: ast.expr) -> bool:
    """An expression without side effects (names, attributes, constants, comparisons of those)."""
    if isinstance(e, (ast.Name, ast.Constant)):
        return True
    if isinstance(e, ast.Attribute):
        return _simple(e.value)
    if isinstance(e, ast.Compare):
        return _simple(e.left) and all(_simple(c) for c in e.comparators)
    if isinstance(e, (ast.BoolOp,)):
        return all(_simple(v) for v in e.values)
    if isinstance(e, ast.UnaryOp):
        return _simple(e.operand)
    return False


def _neutral_tail(test: ast.expr) -> ast.expr:
    """A condition's `x and True` -> `x`, `x or False` -> `x` (only its truth matters)."""
    if isinstance(test, ast.BoolOp) and len(test.values) > 1:
        last = test.values[-1]
        if is_const(last) and bool(const_value(last)) is isinstance(test.op, ast.And):
            rest = test.values[:-1]
            return _neutral_tail(rest[0] if len(rest) == 1 else ast.BoolOp(test.op, rest))
    return test


def _truth(test: ast.expr) -> bool | None:
    """The truth of a condition when constants decide it (side-effect-free parts may be skipped)."""
    if is_const(test):
        return bool(const_value(test))
    if isinstance(test, ast.BoolOp):
        deciding = False if isinstance(test.op, ast.And) else True
        for v in test.values:
            t = _truth(v)
            if t is deciding:
                return deciding
            if t is None and not _simple(v):
                return None
        if all(_truth(v) is not None for v in test.values):
            return not deciding
    if isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not):
        t = _truth(test.operand)
        return None if t is None else not t
    return None


def _tidy(block: list[ast.stmt]) -> list[ast.stmt]:
    """No statement after a return/raise/break/continue; no `pass` beside other statements."""
    out = []
    for st in block:
        if isinstance(st, ast.Pass):
            continue
        out.append(st)
        if isinstance(st, (ast.Return, ast.Raise, ast.Break, ast.Continue)):
            break
    return out or [ast.Pass()]
