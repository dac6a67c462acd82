"""One self-contained `train_gpt.py` generated from pgolf's own modules: the code part of the artifact.

What the file holds, in order (this is exactly what `code_bytes` counts, byte for byte):
  1. a short header comment and the stdlib imports the importer needs;
  2. SOURCES: {module name: source text} for the pgolf modules the entry module `pgolf.pipeline`
     needs - the transitive closure of its intra-package imports found with `ast` (top-level and
     lazy imports inside functions, relative imports, `from pkg import submodule`, and
     `importlib.import_module("pgolf...")` with a literal name), plus every parent package's
     `__init__`, less the OPTIONAL modules the recipe does not use (TTT methods it does not
     evaluate with, the hub downloader). Sources are embedded unchanged in the plain variant.
     CLI command modules (`pgolf.cli`, `pgolf.*.commands`) are left out unless a bundled module
     imports one (then it is included and listed in `BundleInfo.forced`). `pgolf.submit.bundle`
     itself is in the closure (packing computes code bytes), and inside a running bundle it
     regenerates the file from the embedded SOURCES, so code bytes are the same there.
  3. CONFIG_JSON: the resolved recipe config (compact JSON). Machine-local `data.path` and
     `data.tokenizer` are blanked and `train.seed` is reset to its default, so every seed of a
     recipe gets the same file (seeds are chosen with `--set train.seed=N`);
  4. PACKAGES (the module names that are packages) and a meta-path importer (MetaPathFinder +
     Loader) that serves `pgolf.*` from SOURCES, ahead of any installed pgolf, and registers the
     sources with linecache for tracebacks and inspect;
  5. `if __name__ == "__main__": pgolf.pipeline.main(["--config-json", CONFIG_JSON, *argv])`.
With compress="lzma"/"brotli" the embedded sources are first minified (docstrings and comments
removed by an `ast` round trip, see `minify`), then that whole file is compressed, base85-encoded and wrapped in a
two-line stub that `exec`s it; `code_bytes` then counts the stub file. At run time the file needs
torch, numpy, sentencepiece, safetensors and the codecs the recipe uses - not pgolf itself.
"""
from __future__ import annotations

import ast
import base64
import fnmatch
import functools
import json
import lzma
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pgolf
from pgolf.config import Config, TrainConfig
from pgolf.errors import InputError, WorkError

ENTRY = "pgolf.pipeline"
EXCLUDE = ("pgolf.cli", "pgolf.*.commands")
# Modules imported only lazily, where they are used: a recipe's bundle carries them only if its
# config needs them. The record's script is run on pre-downloaded shards (--data), so the hub
# downloader is never bundled (the pipeline then says to pass --data).
OPTIONAL: dict[str, Callable[[Config], bool]] = {
    "pgolf.eval.ttt_sgd": lambda c: c.eval.method in ("ttt-sgd", "phased"),
    "pgolf.eval.ttt_lora": lambda c: c.eval.method in ("ttt-lora", "phased"),
    "pgolf.eval.phased": lambda c: c.eval.method == "phased",
    "pgolf.data.hub": lambda c: False,
}
COMPRESSIONS = ("none", "lzma", "brotli")
PKG_ROOT = Path(pgolf.__file__).resolve().parent


@dataclass
class BundleInfo:
    modules: list[str]  # bundled module names, sorted
    packages: list[str]  # those that are packages (__init__.py)
    forced: list[str] = field(default_factory=list)  # excluded-by-rule modules a bundled module imports
    skipped: list[str] = field(default_factory=list)  # OPTIONAL modules this config does not need
    third_party: list[str] = field(default_factory=list)  # top-level non-pgolf, non-stdlib imports


def _bundled() -> tuple[dict, set] | None:
    """(SOURCES, PACKAGES) when pgolf itself runs from a generated train_gpt.py, else None."""
    loader = getattr(pgolf, "__loader__", None)
    sources = getattr(loader, "sources", None)
    return (sources, loader.packages) if isinstance(sources, dict) else None


def module_path(name: str) -> Path | None:
    """Source file of pgolf module `name` (package -> its __init__.py), or None."""
    parts = name.split(".")
    if parts[0] != "pgolf":
        return None
    p = PKG_ROOT.joinpath(*parts[1:])
    if (p / "__init__.py").is_file():
        return p / "__init__.py"
    f = p.with_suffix(".py") if len(parts) > 1 else None
    return f if f is not None and f.is_file() else None


def module_source(name: str) -> tuple[str, bool] | None:
    """(source text, is_package) of a pgolf module: from disk, or from the running bundle."""
    bundled = _bundled()
    if bundled is not None:
        sources, packages = bundled
        return (sources[name], name in packages) if name in sources else None
    path = module_path(name)
    if path is None:
        return None
    return path.read_text(encoding="utf-8"), path.name == "__init__.py"


def _excluded(name: str) -> bool:
    return any(fnmatch.fnmatchcase(name, pat) for pat in EXCLUDE)


def _resolve_from(node: ast.ImportFrom, name: str, is_pkg: bool) -> str:
    if not node.level:
        return node.module or ""
    base = name.split(".") if is_pkg else name.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(source: str, name: str, is_pkg: bool, where: str = "") -> tuple[set[str], set[str]]:
    """(pgolf module names, other top-level module names) imported anywhere in `source`."""
    try:
        tree = ast.parse(source, filename=where or name)
    except SyntaxError as e:
        raise WorkError(f"{where or name}: cannot parse for bundling ({e})") from None
    ours: set[str] = set()
    other: set[str] = set()

    def note(mod: str) -> None:
        if mod == "pgolf" or mod.startswith("pgolf."):
            ours.add(mod)
        elif mod:
            other.add(mod.split(".")[0])

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                note(a.name)
        elif isinstance(node, ast.ImportFrom):
            mod = _resolve_from(node, name, is_pkg)
            note(mod)
            if mod == "pgolf" or mod.startswith("pgolf."):
                for a in node.names:  # `from pgolf.quant import container` imports a submodule
                    if module_source(f"{mod}.{a.name}") is not None:
                        ours.add(f"{mod}.{a.name}")
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            fn = node.func
            fname = fn.attr if isinstance(fn, ast.Attribute) else getattr(fn, "id", "")
            if fname == "import_module" and isinstance(node.args[0].value, str):
                note(node.args[0].value)
    return ours, other


def _with_parents(mod: str) -> list[str]:
    parts = mod.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


def _stdlib() -> frozenset[str]:
    import sys

    return frozenset(getattr(sys, "stdlib_module_names", ())) | frozenset(sys.builtin_module_names)


@functools.lru_cache(maxsize=8)
def _closure_cached(entry: str, fingerprint: tuple, skip: frozenset = frozenset()) -> BundleInfo:
    del fingerprint  # part of the cache key only
    todo, seen, forced, missing = [entry], set(skip), set(), []
    third: set[str] = set()
    while todo:
        mod = todo.pop()
        if mod in seen:
            continue
        found = module_source(mod)
        seen.add(mod)
        if found is None:
            missing.append(mod)
            continue
        ours, other = imports_of(found[0], mod, found[1])
        third |= other
        for dep in ours:
            for m in _with_parents(dep):
                if m in seen:
                    continue
                if _excluded(m) and m != entry:
                    forced.add(m)
                todo.append(m)
        for parent in _with_parents(mod)[:-1]:
            if parent not in seen:
                todo.append(parent)
    if missing:
        raise WorkError(f"bundle: pgolf modules imported but not found under {PKG_ROOT}: {sorted(missing)}")
    mods = sorted(seen - skip)
    std = _stdlib()
    return BundleInfo(mods, [m for m in mods if module_source(m)[1]], forced=sorted(forced),
                      third_party=sorted(t for t in third if t not in std and t != "__future__"),
                      skipped=sorted(skip))


def _fingerprint() -> tuple:
    """(path, mtime, size) of every package source: the closure cache follows edits."""
    if _bundled() is not None:
        return ()
    out = []
    for p in sorted(PKG_ROOT.rglob("*.py")):
        st = p.stat()
        out.append((str(p), st.st_mtime_ns, st.st_size))
    return tuple(out)


def module_closure(entry: str = ENTRY, cfg: Config | None = None) -> BundleInfo:
    """The modules `entry` needs; with a config, OPTIONAL modules it does not need are left out."""
    skip = frozenset(m for m, needed in OPTIONAL.items() if cfg is not None and not needed(cfg))
    return _closure_cached(entry, _fingerprint(), skip)


def embedded_config(cfg: Config) -> dict:
    """The config the bundle carries: machine-local paths blanked, seed reset to the default."""
    d = json.loads(cfg.to_json())
    d["data"]["path"] = ""
    d["data"]["tokenizer"] = ""
    d["train"]["seed"] = TrainConfig().seed
    return d


def _literal(text: str) -> str:
    """A Python string literal for `text`: readable triple quotes when exact, else repr."""
    body = text.replace("\\", "\\\\").replace("'''", "\\'\\'\\'")
    if body.endswith("'"):
        body = body[:-1] + "\\'"
    lit = "'''" + body + "'''"
    try:
        if ast.literal_eval(lit) == text:
            return lit
    except (SyntaxError, ValueError):
        pass
    return repr(text)


_IMPORTER = '''
_HERE = os.path.dirname(os.path.abspath(globals().get("__file__") or "train_gpt.py"))


class _BundleImporter(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Serves the embedded pgolf modules; inserted first so an installed pgolf never shadows them."""

    sources, packages = SOURCES, PACKAGES  # pgolf.submit.bundle regenerates this file from them

    def find_spec(self, name, path=None, target=None):
        if name not in SOURCES:
            return None
        is_pkg = name in PACKAGES
        rel = name.split(".") + (["__init__.py"] if is_pkg else [])
        origin = os.path.join(_HERE, *rel) + ("" if is_pkg else ".py")
        spec = importlib.machinery.ModuleSpec(name, self, origin=origin, is_package=is_pkg)
        spec.has_location = True  # sets __file__ (config.py locates recipes relative to it)
        return spec

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        src, fname = SOURCES[module.__name__], module.__spec__.origin
        linecache.cache[fname] = (len(src), None, src.splitlines(True), fname)
        exec(compile(src, fname, "exec"), module.__dict__)


sys.meta_path.insert(0, _BundleImporter())

if __name__ == "__main__":
    import ENTRY_MODULE

    sys.exit(ENTRY_MODULE.main(["--config-json", CONFIG_JSON, *sys.argv[1:]]))
'''


def minify(source: str) -> str:
    """The same module without docstrings and comments (ast round trip; idempotent).

    The counted (compressed) bundle carries no prose: the readable sources live in the repository.
    """
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                    and isinstance(body[0].value.value, str):
                body.pop(0)
                if not body:
                    body.append(ast.Pass())
    return ast.unparse(tree) + "\n"


def render(cfg: Config, entry: str = ENTRY, strip: bool = False) -> str:
    """The uncompressed train_gpt.py text (`entry` is swapped only by tests); `strip` minifies."""
    info = module_closure(entry, cfg)
    conf = json.dumps(embedded_config(cfg), sort_keys=True, separators=(",", ":"))
    deps = ", ".join(info.third_party)
    lines = [
        f"# train_gpt.py: generated by pgolf {pgolf.__version__} from recipe '{cfg.name}' "
        f"({len(info.modules)} modules embedded; pgolf need not be installed).",
        f"# Needs: {deps}. Run: torchrun --standalone --nproc_per_node=8 train_gpt.py --data DIR "
        "[--set train.seed=N]",
        "import importlib.abc, importlib.machinery, linecache, os, sys",
        "",
        "SOURCES = {",
    ]
    for mod in info.modules:
        src = module_source(mod)[0]  # type: ignore[index]
        lines.append(f"{mod!r}: {_literal(minify(src) if strip else src)},")
    packages = "{" + ", ".join(repr(p) for p in info.packages) + "}"  # sorted: the file is deterministic
    lines += ["}", f"PACKAGES = {packages}", f"CONFIG_JSON = {conf!r}", ""]
    return "\n".join(lines) + _IMPORTER.replace("ENTRY_MODULE", entry)


def _compress(raw: bytes, compress: str) -> str:
    if compress == "lzma":
        blob = lzma.compress(raw, preset=9 | lzma.PRESET_EXTREME)
    else:
        import brotli

        blob = brotli.compress(raw, quality=11)
    enc = base64.b85encode(blob).decode("ascii")  # b85 has no quotes or backslashes
    return (f"# train_gpt.py (pgolf, {compress}+base85 self-extracting)\n"
            f"import {compress},base64;exec({compress}.decompress(base64.b85decode(\"{enc}\")))\n")


def bundle_code(cfg: Config, compress: str = "none", entry: str = ENTRY) -> str:
    """The single-file train_gpt.py for `cfg` (optionally a compressed self-extracting wrapper)."""
    if compress not in COMPRESSIONS:
        raise InputError(f"--compress: expected one of {' | '.join(COMPRESSIONS)}, got '{compress}'")
    text = render(cfg, entry, strip=compress != "none")
    if compress == "none":
        return text
    return _compress(text.encode("utf-8"), compress)


@functools.lru_cache(maxsize=32)
def _code_bytes_cached(config_json: str, compress: str, fingerprint: tuple) -> int:
    del fingerprint
    cfg = Config.from_dict(json.loads(config_json))
    return len(bundle_code(cfg, compress).encode("utf-8"))


def code_bytes(cfg: Config, compress: str = "none") -> int:
    """Bytes of train_gpt.py for `cfg`: the code part of the artifact budget (cached per config)."""
    key = json.dumps(embedded_config(cfg), sort_keys=True)
    return _code_bytes_cached(key, compress, _fingerprint())


def requirements(info: BundleInfo | None = None) -> list[str]:
    """Pinned `dist==version` lines for the bundle's third-party imports that are installed here."""
    from importlib import metadata

    info = info or module_closure()
    dists = metadata.packages_distributions()
    out = set()
    for mod in info.third_party:
        for dist in dists.get(mod, []):
            try:
                out.add(f"{dist}=={metadata.version(dist).split('+')[0]}")  # no local tag (+cpu, +cu128)
            except metadata.PackageNotFoundError:
                continue
    return sorted(out, key=str.lower)
