"""pgolf's modules as one flat program: the code a recipe's run reaches, and nothing else.

1. collect: the modules an entry imports (statically, with `ast`), transitively;
2. resolve: every top-level name of every module to the definition it means (through `from pgolf.x
   import y`, module aliases like `runtime.rank`, re-exports);
3. shake: keep the definitions reachable from the entry function; a class keeps the methods whose
   names are used anywhere in kept code (plus dunders and `forward`), so dispatch stays intact;
4. emit: one module (third-party imports first, then the kept definitions in dependency order),
   with every kept definition under a name unique in the whole program.
Scopes come from the stdlib `symtable`, so a local never gets mistaken for a global.
"""
from __future__ import annotations

import ast
import symtable
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pgolf
from pgolf.errors import WorkError

PKG_ROOT = Path(pgolf.__file__).resolve().parent
ALWAYS_METHODS = ("forward",)  # called by nn.Module.__call__, never by name


def copy_tree(node, memo: dict | None = None):
    """A copy of an AST (fields and locations only; memo: id(old node) -> new node). copy.deepcopy
    would also copy stray attributes, and tools such as python-minifier hang their own trees on the
    parser's shared Load/Store objects."""
    if isinstance(node, list):
        return [copy_tree(x, memo) for x in node]
    if not isinstance(node, ast.AST) or isinstance(node, ast.expr_context):
        return node
    new = type(node)()
    for f in node._fields:
        if hasattr(node, f):
            setattr(new, f, copy_tree(getattr(node, f), memo))
    for a in node._attributes:
        if hasattr(node, a):
            setattr(new, a, getattr(node, a))
    if memo is not None:
        memo[id(node)] = new
    return new


def module_path(name: str) -> Path | None:
    """Source file of pgolf module `name` (a package -> its __init__.py), or None."""
    parts = name.split(".")
    if parts[0] != "pgolf":
        return None
    p = PKG_ROOT.joinpath(*parts[1:])
    if (p / "__init__.py").is_file():
        return p / "__init__.py"
    f = p.with_suffix(".py") if len(parts) > 1 else None
    return f if f is not None and f.is_file() else None


def is_ours(mod: str) -> bool:
    return mod == "pgolf" or mod.startswith("pgolf.")


@dataclass
class Module:
    name: str
    path: Path
    tree: ast.Module
    is_pkg: bool
    bindings: dict[str, tuple] = field(default_factory=dict)  # name -> ("def", node) | ("ours", target) | ("ext", stmt)
    table: symtable.SymbolTable | None = None

    def resolve_from(self, node: ast.ImportFrom) -> str:
        if not node.level:
            return node.module or ""
        base = self.name.split(".") if self.is_pkg else self.name.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)]
        return ".".join(base + ([node.module] if node.module else []))


def _top_statements(body: list[ast.stmt], outer: ast.stmt | None = None) -> list[tuple[ast.stmt, ast.stmt | None]]:
    """(statement, the module-level if/try holding it) for top-level statements: a conditional import
    is emitted with its whole if/try."""
    out = []
    for s in body:
        if isinstance(s, (ast.If, ast.Try)):
            inner = list(s.body) + list(getattr(s, "orelse", [])) + [x for h in getattr(s, "handlers", []) for x in h.body]
            out.extend(_top_statements(inner, outer or s))
        else:
            out.append((s, outer))
    return out


def load_module(name: str) -> Module:
    path = module_path(name)
    if path is None:
        raise WorkError(f"bundle: pgolf module {name} not found under {PKG_ROOT}")
    src = path.read_text(encoding="utf-8")
    mod = Module(name, path, ast.parse(src, filename=str(path)), path.name == "__init__.py")
    mod.table = symtable.symtable(src, str(path), "exec")
    for s, outer in _top_statements(mod.tree.body):
        if isinstance(s, ast.Import):
            for a in s.names:
                bound = a.asname or a.name.split(".")[0]
                if is_ours(a.name):
                    mod.bindings[bound] = ("ours", (a.name if a.asname else a.name.split(".")[0], None))
                else:
                    mod.bindings[bound] = ("ext", outer or ast.Import(names=[a]))
        elif isinstance(s, ast.ImportFrom):
            src_mod = mod.resolve_from(s)
            for a in s.names:
                bound = a.asname or a.name
                if src_mod == "__future__":
                    continue
                if is_ours(src_mod):
                    sub = f"{src_mod}.{a.name}"
                    target = (sub, None) if module_path(sub) is not None else (src_mod, a.name)
                    mod.bindings[bound] = ("ours", target)
                else:
                    mod.bindings[bound] = ("ext", outer or ast.ImportFrom(module=src_mod, names=[a], level=0))
        elif isinstance(s, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            mod.bindings[s.name] = ("def", s)
        elif isinstance(s, (ast.Assign, ast.AnnAssign)):
            targets = s.targets if isinstance(s, ast.Assign) else [s.target]
            for name in _bound_names(targets):
                mod.bindings[name] = ("def", s)
    return mod


def _bound_names(targets: list[ast.expr]) -> list[str]:
    """Names an assignment binds (not the bases of attribute or subscript targets)."""
    out = []
    for t in targets:
        if isinstance(t, ast.Name):
            out.append(t.id)
        elif isinstance(t, (ast.Tuple, ast.List)):
            out.extend(_bound_names(list(t.elts)))
        elif isinstance(t, ast.Starred):
            out.extend(_bound_names([t.value]))
    return out


def imported_modules(mod: Module) -> set[str]:
    """Every pgolf module `mod` imports, anywhere (top level or inside functions)."""
    out = set()
    for node in ast.walk(mod.tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if is_ours(a.name))
        elif isinstance(node, ast.ImportFrom):
            src = mod.resolve_from(node)
            if is_ours(src):
                out.add(src)
                out.update(f"{src}.{a.name}" for a in node.names if module_path(f"{src}.{a.name}") is not None)
    parents = set()
    for m in out:
        parts = m.split(".")
        parents.update(".".join(parts[:i]) for i in range(1, len(parts)))
    return out | parents


class Program:
    """All modules an entry reaches, with name resolution across them."""

    def __init__(self, entry: str):
        self.entry = entry
        self.modules: dict[str, Module] = {}
        todo = [entry]
        while todo:
            name = todo.pop()
            if name in self.modules:
                continue
            self.modules[name] = load_module(name)
            todo.extend(imported_modules(self.modules[name]) - set(self.modules))

    def resolve(self, mod: str, name: str, _depth: int = 0) -> tuple | None:
        """What `name` at the top of module `mod` refers to: ("def", mod, name, node), ("module", mod),
        ("ext", stmt) or None (a builtin)."""
        if _depth > 20:
            raise WorkError(f"bundle: import cycle resolving {mod}.{name}")
        m = self.modules.get(mod)
        if m is None:
            m = self.modules[mod] = load_module(mod)
        b = m.bindings.get(name)
        if b is None:
            return None
        kind, val = b
        if kind == "def":
            return ("def", mod, name, val)
        if kind == "ext":
            return ("ext", val)
        target_mod, target_name = val
        if target_name is None:
            return ("module", target_mod)
        return self.resolve(target_mod, target_name, _depth + 1)

    def resolve_attr(self, module: str, attr: str) -> tuple | None:
        """`module.attr` for a pgolf module object."""
        if module_path(f"{module}.{attr}") is not None:
            return ("module", f"{module}.{attr}")
        return self.resolve(module, attr)


def std_modules() -> frozenset[str]:
    return frozenset(getattr(sys, "stdlib_module_names", ())) | frozenset(sys.builtin_module_names)


# ---------------------------------------------------------------------------------------------
# references, scopes and reachability

DefKey = tuple[str, str]  # (module, top-level name)


def _scope_nodes(node: ast.AST):
    return isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef, ast.ListComp,
                             ast.SetComp, ast.DictComp, ast.GeneratorExp))


class _Scopes:
    """AST node -> symtable scope, by walking both in order."""

    def __init__(self, table: symtable.SymbolTable, tree: ast.AST):
        self.of: dict[int, symtable.SymbolTable] = {}
        self._match(tree, table)

    def _match(self, node: ast.AST, table: symtable.SymbolTable) -> None:
        children = list(table.get_children())
        for child in ast.iter_child_nodes(node):
            self._visit(child, table, children)

    def _visit(self, node: ast.AST, table: symtable.SymbolTable, pool: list) -> None:
        if _scope_nodes(node):
            line = node.lineno
            for i, t in enumerate(pool):
                if t.get_lineno() == line:
                    self.of[id(node)] = t
                    pool.pop(i)
                    # default args, decorators and bases belong to the enclosing scope
                    for sub in _outer_parts(node):
                        self._visit(sub, table, pool)
                    inner = list(t.get_children())
                    for sub in _inner_parts(node):
                        self._visit(sub, t, inner)
                    return
        for child in ast.iter_child_nodes(node):
            self._visit(child, table, pool)


def _outer_parts(node: ast.AST) -> list[ast.AST]:
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        a = node.args
        return [*node.decorator_list, *a.defaults, *[d for d in a.kw_defaults if d is not None],
                *([node.returns] if node.returns else []),
                *[x.annotation for x in (*a.posonlyargs, *a.args, *a.kwonlyargs, a.vararg, a.kwarg) if x is not None
                  and x.annotation is not None]]
    if isinstance(node, ast.Lambda):
        return [*node.args.defaults, *[d for d in node.args.kw_defaults if d is not None]]
    if isinstance(node, ast.ClassDef):
        return [*node.decorator_list, *node.bases, *[k.value for k in node.keywords]]
    if isinstance(node, (ast.ListComp, ast.SetComp, ast.GeneratorExp, ast.DictComp)):
        return [node.generators[0].iter]
    return []


def _inner_parts(node: ast.AST) -> list[ast.AST]:
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return list(node.body)
    if isinstance(node, ast.Lambda):
        return [node.body]
    if isinstance(node, (ast.ListComp, ast.SetComp, ast.GeneratorExp)):
        gens = node.generators
        return [node.elt, gens[0].target, *gens[0].ifs, *[x for g in gens[1:] for x in (g.target, g.iter, *g.ifs)]]
    if isinstance(node, ast.DictComp):
        gens = node.generators
        return [node.key, node.value, gens[0].target, *gens[0].ifs,
                *[x for g in gens[1:] for x in (g.target, g.iter, *g.ifs)]]
    return []


def global_names(node: ast.AST, table: symtable.SymbolTable, scopes: _Scopes) -> list[ast.Name]:
    """Name nodes inside `node` that refer to module-level names (per symtable)."""
    out: list[ast.Name] = []

    def walk(n: ast.AST, t: symtable.SymbolTable) -> None:
        if isinstance(n, ast.Name):
            try:
                sym = t.lookup(n.id)
            except KeyError:
                sym = None
            if t.get_type() == "module" or sym is None or sym.is_global():
                out.append(n)
            return
        if _scope_nodes(n) and id(n) in scopes.of:
            inner = scopes.of[id(n)]
            for sub in _outer_parts(n):
                walk(sub, t)
            for sub in _inner_parts(n):
                walk(sub, inner)
            return
        for c in ast.iter_child_nodes(n):
            walk(c, t)

    walk(node, table)
    return out


def _is_docstring(s: ast.stmt) -> bool:
    return isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant) and isinstance(s.value.value, str)


def _method_name(s: ast.stmt) -> str | None:
    return s.name if isinstance(s, (ast.FunctionDef, ast.AsyncFunctionDef)) else None


def _keeps_method(name: str, attrs: set[str]) -> bool:
    return (name.startswith("__") and name.endswith("__")) or name in ALWAYS_METHODS or name in attrs


class Flattener:
    """Reachability over a Program from (entry module, entry function), and the flat source."""

    def __init__(self, entry: str, function: str = "main"):
        self.prog = Program(entry)
        self.root: DefKey = (entry, function)
        self.scopes = {name: _Scopes(m.table, m.tree) for name, m in self.prog.modules.items()}
        self.kept: dict[DefKey, ast.AST] = {}
        self.methods: dict[DefKey, set[str]] = {}  # class -> kept method names
        self.attrs: set[str] = set()
        self.ext: dict[str, ast.stmt] = {}  # bound name -> import statement (third-party and stdlib)
        self._order: list[str] | None = None
        self._shake()

    # -- references ----------------------------------------------------------------------------
    def _module_chain(self, mod: str, node: ast.AST) -> tuple | None:
        """The target of an attribute chain that starts at a module alias (`runtime.rank`)."""
        if isinstance(node, ast.Name):
            r = self.prog.resolve(mod, node.id)
            return r if r is not None and r[0] == "module" else None
        if isinstance(node, ast.Attribute):
            base = self._module_chain(mod, node.value)
            if base is not None:
                return self.prog.resolve_attr(base[1], node.attr)
        return None

    def refs(self, mod: str, node: ast.AST, skip: set[int] = frozenset()) -> tuple[set[DefKey], set[str], dict]:
        """(definitions, attribute names, third-party bindings) that `node` uses; `skip` = ids of
        sub-nodes to leave out (methods not kept)."""
        defs, attrs, ext = set(), set(), {}
        m = self.prog.modules[mod]
        skipped = {id(x) for s in ast.walk(node) if id(s) in skip for x in ast.walk(s)} if skip else set()
        for n in global_names(node, m.table, self.scopes[mod]):
            if id(n) in skipped:
                continue
            r = self.prog.resolve(mod, n.id)
            if r is None:
                continue
            if r[0] == "def":
                defs.add((r[1], r[2]))
            elif r[0] == "ext":
                ext[n.id] = r[1]
        for sub in ast.walk(node):
            if id(sub) in skipped:
                continue
            if isinstance(sub, ast.Attribute):
                attrs.add(sub.attr)
                target = self._module_chain(mod, sub)
                if target is not None and target[0] == "def":
                    defs.add((target[1], target[2]))
            if isinstance(sub, ast.Constant) and isinstance(sub.value, str) and sub.value.isidentifier():
                attrs.add(sub.value)  # getattr(x, "name") / setattr with literal names
        return defs, attrs, ext

    # -- reachability ----------------------------------------------------------------------------
    def _shake(self) -> None:
        todo = [self.root]
        pending_classes: set[DefKey] = set()
        while True:
            while todo:
                key = todo.pop()
                if key in self.kept:
                    continue
                r = self.prog.resolve(*key)
                if r is None or r[0] != "def":
                    raise WorkError(f"bundle: {key[0]}.{key[1]} is not a definition")
                node = r[3]
                self.kept[key] = node
                if isinstance(node, ast.ClassDef):
                    self.methods[key] = set()
                    pending_classes.add(key)
                    skip = {id(s) for s in node.body if _method_name(s)}
                    self._add(key[0], node, todo, skip)
                else:
                    self._add(key[0], node, todo)
            grew = False
            for key in sorted(pending_classes):
                node = self.kept[key]
                outside = self._external_bases(key[0], node)
                for s in node.body:
                    name = _method_name(s)
                    if name and name not in self.methods[key] and (
                            _keeps_method(name, self.attrs) or any(hasattr(b, name) for b in outside)):
                        self.methods[key].add(name)
                        self._add(key[0], s, todo)
                        grew = True
            if not grew and not todo:
                break

    def _external_bases(self, mod: str, node: ast.ClassDef) -> list[type]:
        """The third-party or stdlib classes a class derives from (directly or through our classes):
        their methods are called by that library (Handler.emit, RawIOBase.readinto...), so overrides stay."""
        out = []
        for base in node.bases:
            if isinstance(base, ast.Name):
                r = self.prog.resolve(mod, base.id)
            else:
                r = None
                chain = ast.unparse(base).split(".")
                head = self.prog.resolve(mod, chain[0])
                if head is not None and head[0] == "ext":
                    r = head
            if r is None:
                continue
            if r[0] == "def" and isinstance(r[3], ast.ClassDef):
                out.extend(self._external_bases(r[1], r[3]))
            elif r[0] == "ext":
                scope: dict = {}
                exec(ast.unparse(r[1]), scope)
                try:
                    out.append(eval(ast.unparse(base), scope))
                except Exception:
                    pass
        return [b for b in out if isinstance(b, type)]

    def _add(self, mod: str, node: ast.AST, todo: list, skip: set[int] = frozenset()) -> None:
        defs, attrs, ext = self.refs(mod, node, skip)
        todo.extend(d for d in defs if d not in self.kept)
        self.attrs |= attrs
        for name, stmt in ext.items():
            self.ext.setdefault(name, stmt)


    # -- emission --------------------------------------------------------------------------------
    def _local_names(self) -> set[str]:
        """Every name bound inside a function or class anywhere: a global must not be renamed into one."""
        out: set[str] = set()

        def walk(t: symtable.SymbolTable) -> None:
            if t.get_type() != "module":
                out.update(s.get_name() for s in t.get_symbols() if not s.is_global())
            for c in t.get_children():
                walk(c)

        for m in self.prog.modules.values():
            walk(m.table)
        return out

    def unique_names(self) -> dict[DefKey, str]:
        """A program-wide unique name per kept definition (the first module keeps the bare name),
        never one that a function or class uses as a local."""
        taken = set(self.ext) | self._local_names()
        out: dict[DefKey, str] = {}
        for key in self._ordered_keys():
            name = key[1]
            if name in taken:
                short = key[0].split(".")[-1]
                name, i = f"{key[1]}_{short}", 2
                while name in taken:
                    name, i = f"{key[1]}_{short}{i}", i + 1
            taken.add(name)
            out[key] = name
        return out

    def _module_order(self) -> list[str]:
        if self._order is not None:
            return self._order
        seen, order = set(), []

        def visit(m: str) -> None:
            if m in seen:
                return
            seen.add(m)
            for dep in sorted(imported_modules(self.prog.modules[m])):
                if dep in self.prog.modules:
                    visit(dep)
            order.append(m)

        visit(self.prog.entry)
        for m in sorted(self.prog.modules):
            visit(m)
        self._order = order
        return order

    def _ordered_keys(self) -> list[DefKey]:
        rank = {m: i for i, m in enumerate(self._module_order())}
        return sorted(self.kept, key=lambda k: (rank.get(k[0], 0), getattr(self.kept[k], "lineno", 0), k[1]))

    def _load_time_parts(self, node: ast.AST) -> list[ast.AST]:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            return _outer_parts(node)
        if isinstance(node, ast.ClassDef):
            return _outer_parts(node) + [s for s in node.body if not _method_name(s)]
        return [node]

    def _load_deps(self, key: DefKey) -> set[DefKey]:
        deps = set()
        for part in self._load_time_parts(self.kept[key]):
            d, _, _ = self.refs(key[0], _Wrap(part))
            deps |= {x for x in d if x in self.kept and self.kept[x] is not self.kept[key]}
        return deps

    def top_statements(self) -> list[tuple[str, ast.stmt]]:
        """Module-level statements that are not definitions (e.g. `log.setLevel(...)`) whose names
        are all kept."""
        out = []
        for mod in self._module_order():
            m = self.prog.modules[mod]
            for s in m.tree.body:
                if not isinstance(s, (ast.Expr, ast.Assign, ast.AugAssign)) or _is_docstring(s):
                    continue
                if isinstance(s, ast.Assign) and all(isinstance(t, ast.Name) for t in s.targets):
                    continue  # a binding, shaken like any definition
                defs, _, _ = self.refs(mod, s)
                if defs and defs <= set(self.kept):
                    out.append((mod, s))
        return out

    def emit(self) -> str:
        names = self.unique_names()
        ordered, done = [], set()
        keys = self._ordered_keys()
        rank = {k: i for i, k in enumerate(keys)}

        def place(key: DefKey, stack: tuple = ()) -> None:
            if key in done:
                return
            if key in stack:
                raise WorkError(f"bundle: definitions depend on each other at load time: {key}")
            for dep in sorted(self._load_deps(key), key=rank.__getitem__):
                place(dep, stack + (key,))
            done.add(key)
            ordered.append(key)

        for key in keys:
            place(key)
        imports = []
        for name in sorted(self.ext):
            text = ast.unparse(self.ext[name])
            if text not in imports:
                imports.append(text)
        body, emitted = [], set()
        for key in ordered:
            node = self.kept[key]
            if id(node) in emitted:  # a tuple assignment binding several kept names
                continue
            emitted.add(id(node))
            body.append(self._rewrite(key[0], node, names, self.methods.get(key)))
        for mod, s in self.top_statements():
            body.append(self._rewrite(mod, s, names, None))
        return "\n".join(["from __future__ import annotations", *imports, ""] + [ast.unparse(b) for b in body]) + "\n"

    def _rewrite(self, mod: str, node: ast.AST, names: dict[DefKey, str], methods: set[str] | None) -> ast.AST:
        m = self.prog.modules[mod]
        rename: dict[int, str] = {}
        for n in global_names(node, m.table, self.scopes[mod]):
            r = self.prog.resolve(mod, n.id)
            if r is not None and r[0] == "def" and (r[1], r[2]) in names:
                rename[id(n)] = names[(r[1], r[2])]
        chains: dict[int, str] = {}
        for sub in ast.walk(node):
            if isinstance(sub, ast.Attribute):
                t = self._module_chain(mod, sub)
                if t is not None and t[0] == "def" and (t[1], t[2]) in names:
                    chains[id(sub)] = names[(t[1], t[2])]
        memo: dict[int, object] = {}
        new = copy_tree(node, memo)
        rename_new = {id(memo[k]): v for k, v in rename.items() if k in memo}
        chains_new = {id(memo[k]): v for k, v in chains.items() if k in memo}

        class T(ast.NodeTransformer):
            def visit_Name(self, n: ast.Name):
                if id(n) in rename_new:
                    n.id = rename_new[id(n)]
                return n

            def visit_Attribute(self, n: ast.Attribute):
                if id(n) in chains_new:
                    return ast.copy_location(ast.Name(id=chains_new[id(n)], ctx=n.ctx), n)
                self.generic_visit(n)
                return n

        new = T().visit(new)
        if isinstance(new, (ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef)):
            if isinstance(new, ast.ClassDef) and methods is not None:
                new.body = [s for s in new.body if not _method_name(s) or s.name in methods]
            new.name = names.get((mod, new.name), new.name)
        for sub in ast.walk(new):
            if isinstance(sub, (ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef, ast.Module)) and sub.body \
                    and _is_docstring(sub.body[0]):
                sub.body = sub.body[1:] or [ast.Pass()]
        return new


class _Wrap(ast.AST):
    """A node list entry walked as-is (load-time parts of a definition)."""

    _fields = ("inner",)

    def __init__(self, inner: ast.AST):
        super().__init__()
        self.inner = inner


# ---------------------------------------------------------------------------------------------
# shaking one module (after specialisation)

def shake_module(tree: ast.Module, roots: list[str]) -> ast.Module:
    """Drop the top-level definitions, class methods and imports of a single module that nothing
    reachable from `roots` uses (the same rules as the Flattener's)."""
    src = ast.unparse(tree)
    tree = ast.parse(src)
    table = symtable.symtable(src, "<flat>", "exec")
    scopes = _Scopes(table, tree)
    defs: dict[str, ast.stmt] = {}
    imports: dict[str, ast.stmt] = {}
    for s, outer in _top_statements(tree.body):
        if isinstance(s, (ast.Import, ast.ImportFrom)):
            for a in s.names:
                imports[a.asname or a.name.split(".")[0]] = outer or s
        elif isinstance(s, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            defs[s.name] = s
        elif isinstance(s, (ast.Assign, ast.AnnAssign)):
            for name in _bound_names(s.targets if isinstance(s, ast.Assign) else [s.target]):
                defs[name] = s
    kept: set[str] = set()
    used_imports: set[str] = set()
    attrs: set[str] = set()
    methods: dict[str, set[str]] = {}
    todo = list(roots)

    def add(node: ast.AST, skip: set[int] = frozenset()) -> None:
        skipped = {id(x) for s in getattr(node, "body", []) if id(s) in skip for x in ast.walk(s)} if skip else ()
        for n in global_names(node, table, scopes):
            if id(n) in skipped:
                continue
            if n.id in defs and n.id not in kept:
                todo.append(n.id)
            elif n.id in imports:
                used_imports.add(n.id)
        values = {id(v) for d in ast.walk(node) if isinstance(d, ast.Dict) for v in d.values}
        for sub in ast.walk(node):
            if id(sub) in skipped:
                continue
            if isinstance(sub, ast.Attribute):
                attrs.add(sub.attr)
            # a string may name a method (getattr); a dict literal's values are data, not names
            if isinstance(sub, ast.Constant) and isinstance(sub.value, str) and sub.value.isidentifier() \
                    and id(sub) not in values:
                attrs.add(sub.value)

    def external(node: ast.ClassDef) -> list[type]:
        out = []
        for b in node.bases:
            head = ast.unparse(b).split(".")[0]
            if head in defs and isinstance(defs[head], ast.ClassDef):
                out.extend(external(defs[head]))
            elif head in imports:
                scope: dict = {}
                try:
                    exec(ast.unparse(imports[head]), scope)
                    obj = eval(ast.unparse(b), scope)
                except Exception:
                    continue
                if isinstance(obj, type):
                    out.append(obj)
        return out

    while True:
        while todo:
            name = todo.pop()
            if name in kept:
                continue
            kept.add(name)
            node = defs[name]
            if isinstance(node, ast.ClassDef):
                methods.setdefault(name, set())
                add(node, {id(s) for s in node.body if _method_name(s)})
            else:
                add(node)
        grew = False
        for cname in sorted(methods):
            node, outside = defs[cname], external(defs[cname])
            for s in node.body:
                m = _method_name(s)
                if m and m not in methods[cname] and (_keeps_method(m, attrs) or any(hasattr(b, m) for b in outside)):
                    methods[cname].add(m)
                    add(s)
                    grew = True
        if not grew and not todo:
            break
    body = []
    for s in tree.body:
        inner = [x for x in ast.walk(s) if isinstance(x, (ast.Import, ast.ImportFrom))] \
            if isinstance(s, (ast.Import, ast.ImportFrom, ast.If, ast.Try)) else []
        if inner:
            bound = {a.asname or a.name.split(".")[0] for x in inner for a in x.names}
            if (isinstance(s, ast.ImportFrom) and s.module == "__future__") or bound & used_imports:
                body.append(s)
            continue
        if isinstance(s, (ast.FunctionDef, ast.AsyncFunctionDef)):
            if s.name in kept:
                body.append(s)
        elif isinstance(s, ast.ClassDef):
            if s.name in kept:
                s.body = [x for x in s.body if not _method_name(x) or x.name in methods.get(s.name, set())] or [ast.Pass()]
                body.append(s)
        elif isinstance(s, (ast.Assign, ast.AnnAssign)) and _bound_names(
                s.targets if isinstance(s, ast.Assign) else [s.target]):
            if set(_bound_names(s.targets if isinstance(s, ast.Assign) else [s.target])) & kept:
                body.append(s)
        else:  # module-level statements such as `log.setLevel(...)`: kept when their names are
            refs = {n.id for n in global_names(s, table, scopes)}
            if refs & set(defs) and refs & set(defs) <= kept:
                body.append(s)
    tree.body = body
    return tree
