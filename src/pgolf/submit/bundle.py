"""The counted train_gpt.py: pgolf's record entry (pgolf.pipeline.script) specialised to one recipe.

Its size is the artifact's code bytes. How it is made:
  1. flatten: the modules the entry reaches become one program holding only the reachable
     definitions (pgolf.submit.flatten);
  2. specialise: the recipe's config is compiled in (pgolf.submit.specialize): switches that are off
     take their branches with them, registries keep the recipe's entries (eval methods, artifact
     codecs, Newton-Schulz coefficient sets), and only the seed is read at run time;
  3. drop the guards against programmer error (`if ...: raise ValueError`, as python -O drops
     asserts; the errors a user can cause stay) and attributes nothing reads, shake again, give
     one-letter names to parameters no caller names (pgolf.submit.rename), minify with
     python-minifier (docstrings, asserts and annotations out, names short),
     compress with lzma, brotli or zpaq, whichever is smallest, and wrap in a two-line
     self-extracting stub whose payload is the compressed bytes as a latin-1 string (PEP 263 source
     encoding: 1-3% larger than the bytes, where base85 costs 25%).
The script then needs torch, numpy, sentencepiece and the codec libraries its recipe and its wrapper
use; not pgolf. What it leaves out (audit, plots, checkpoints, corpus building, the downloader, the
CLI) is what the score does not need.
"""
from __future__ import annotations

import ast
import functools
import importlib
import json
import lzma
import sys
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import get_args

import brotli
import python_minifier
import zpaq

from pgolf.atomic import atomic_write_bytes
from pgolf.config import SECTIONS, CodeCompress, Config, QuantGroup, TrainConfig
from pgolf.errors import InputError, WorkError
from pgolf.eval.methods import check as check_method
from pgolf.quant.container import PLAIN_CODECS
from pgolf.quant.pergroup import REMAINDER_CODEC
from pgolf.submit.flatten import PKG_ROOT, Flattener, shake_module, std_modules
from pgolf.submit.prune import drop_dead_attributes, drop_dead_code, drop_guards
from pgolf.submit.rename import shorten_parameters
from pgolf.submit.specialize import NS, Specializer

ENTRY, ROOT = "pgolf.pipeline.script", "main"
SEED = "_SEED"
COMPRESSIONS = get_args(CodeCompress)
WRAPPERS = ("lzma", "brotli", "zpaq")  # what "auto" chooses from: the smallest file
CONFIG_CLASSES = {cls.__name__: cls for cls in (Config, QuantGroup, *SECTIONS.values())}
# module constants the counted script is built with: no tqdm progress bars (its output is a log), no
# toolkit diagnostics
BUNDLE_CONSTANTS = {("pgolf.logs", "BARS"): False, ("pgolf.logs", "DETAIL"): False, (ENTRY, "BUNDLED"): True}


def kept_methods(cfg: Config) -> set[str]:
    """The eval methods a record run uses: the recipe's, and plain (the trainer's validation)."""
    return {"plain", cfg.eval.method}


@dataclass
class Bundle:
    code: str  # the file, exactly as counted
    code_bytes: int
    compress: str  # the wrapper actually used
    modules: list[str] = field(default_factory=list)  # pgolf modules with kept code
    functions: list[str] = field(default_factory=list)  # kept top-level definitions (module.name)
    third_party: list[str] = field(default_factory=list)  # imported top-level packages
    source_bytes: int = 0  # the specialised program before minification
    minified_bytes: int = 0

    def data(self) -> bytes:
        """The file's bytes (a compressed wrapper is a latin-1 source file)."""
        return self.code.encode("latin-1" if self.compress != "none" else "utf-8")


def _substitute_config_from(tree: ast.Module, names: dict, cfg: Config) -> None:
    """The entry's config_from(args): the config is compiled in, only the seed is read."""
    target, seed_fn = names[(ENTRY, "config_from")], names[(ENTRY, "seed_from")]
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == target:
            node.body = ast.parse(f"global {SEED}\n{SEED} = {seed_fn}(args.overrides, {cfg.train.seed})\n"
                                  "return None").body
            node.returns = None
            return
    raise WorkError(f"bundle: {ENTRY}.config_from not found in the flat program")


def _set_constants(tree: ast.Module, names: dict) -> None:
    flat = {names[k]: v for k, v in BUNDLE_CONSTANTS.items() if k in names}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name) \
                and node.targets[0].id in flat:
            node.value = ast.Constant(flat[node.targets[0].id])


def kept_codecs(cfg: Config) -> set[str]:
    """The artifact codecs a record run can write and read."""
    q = cfg.quant
    if q.codec == "auto":
        return set(PLAIN_CODECS)
    if q.codec == "pergroup":
        return set(q.pergroup_codecs) | {REMAINDER_CODEC}
    return {q.codec}


def kept_ns_sets(cfg: Config) -> set[str]:
    """Muon's Newton-Schulz coefficient sets: the recipe's (and fixed, every function's default)."""
    return {"fixed", cfg.optim.muon_ns_coeffs}


REGISTRIES = (("pgolf.eval.methods", "METHODS", kept_methods), ("pgolf.quant.codecs", "CODECS", kept_codecs),
              ("pgolf.optim.muon", "NS_SETS", kept_ns_sets))


def _prune_registry(tree: ast.Module, names: dict, module: str, registry: str, keep: set[str]) -> None:
    """NAME = {x.name: x for x in (A, B, Codec("c", ...), ...)}: keep the entries named in `keep`
    (an entry is a module-level object with a .name, or a call or tuple whose first item is the name)."""
    target = names.get((module, registry))
    if target is None:
        return
    flat_name = {}
    for (mod, name), flat in names.items():  # PLAIN -> "plain", TTT_SGD -> "ttt-sgd", ...
        obj = getattr(importlib.import_module(mod), name, None)
        if isinstance(getattr(obj, "name", None), str):
            flat_name[flat] = obj.name

    def entry(e: ast.expr) -> str | None:
        if isinstance(e, ast.Name):
            return flat_name.get(e.id)
        if isinstance(e, ast.Call) and e.args and isinstance(e.args[0], ast.Constant):
            return e.args[0].value
        if isinstance(e, ast.Tuple) and e.elts and isinstance(e.elts[0], ast.Constant):
            return e.elts[0].value
        return None

    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
        if any(isinstance(t, ast.Name) and t.id == target for t in targets) \
                and isinstance(node.value, ast.DictComp) and isinstance(node.value.generators[0].iter, ast.Tuple):
            tup = node.value.generators[0].iter
            tup.elts = [e for e in tup.elts if entry(e) in keep]
            return
    raise WorkError(f"bundle: {module}.{registry} is not a dict comprehension over a tuple")


@functools.lru_cache(maxsize=2)
def _flat(fingerprint: tuple) -> tuple[str, dict]:
    """The flat program (no config yet) and its names: (module, name) -> flat name."""
    del fingerprint
    flat = Flattener(ENTRY, ROOT)
    return flat.emit(), flat.unique_names()


@functools.lru_cache(maxsize=16)
def _program(config_json: str, fingerprint: tuple) -> tuple[str, tuple[str, ...], tuple[str, ...]]:
    """(specialised source, kept modules, kept definitions) for a config (cached per source state)."""
    cfg = Config.from_dict(json.loads(config_json))
    check_method(cfg)  # the script's config is checked here, once (its entry no longer does)
    source, names = _flat(fingerprint)
    tree = ast.parse(source)
    tree.body = [s for s in tree.body if not (isinstance(s, ast.ImportFrom) and s.module == "__future__")]
    _set_constants(tree, names)
    _substitute_config_from(tree, names, cfg)
    for module, registry, keep in REGISTRIES:
        _prune_registry(tree, names, module, registry, keep(cfg))
    classes = {names[("pgolf.config", n)]: cls for n, cls in CONFIG_CLASSES.items() if ("pgolf.config", n) in names}
    root = names[(ENTRY, ROOT)]
    spec = Specializer(tree, cfg, classes, {"train.seed": SEED}, roots=[root])
    spec.run()
    spec.drop_sections()
    spec.run()
    left = spec.config_reads()
    if left:
        raise WorkError("bundle: config reads that did not specialise (the script would need the config "
                        "machinery):\n  " + "\n  ".join(left[:12]))
    drop_guards(spec.tree)
    drop_dead_code(spec.tree)
    tree = shake_module(strip_annotations(spec.tree), [root])
    if drop_dead_attributes(tree):  # on the shaken program: dead code no longer reads them
        drop_dead_code(tree)
        tree = shake_module(tree, [root])
    shorten_parameters(tree)
    at = next(i for i, s in enumerate(tree.body) if not isinstance(s, (ast.Import, ast.ImportFrom, ast.If, ast.Try)))
    tree.body.insert(at, ast.parse(f"{SEED} = {cfg.train.seed}").body[0])
    if spec.uses_ns:
        tree.body.insert(0, ast.parse(f"from types import SimpleNamespace as {NS}").body[0])
    tree.body += ast.parse(f"if __name__ == '__main__':\n    sys.exit({root}(sys.argv[1:]))").body
    if not any(isinstance(s, ast.Import) and any(a.name == "sys" and not a.asname for a in s.names) for s in tree.body):
        tree.body.insert(0, ast.parse("import sys").body[0])
    src = ast.unparse(ast.fix_missing_locations(tree)) + "\n"
    flat_names = {v: k for k, v in names.items()}
    defined = [s.name for s in tree.body if isinstance(s, (ast.FunctionDef, ast.ClassDef))]
    kept = sorted(f"{flat_names[n][0]}.{flat_names[n][1]}" for n in defined if n in flat_names)
    mods = sorted({k.rsplit(".", 1)[0] for k in kept})
    return src, tuple(mods), tuple(kept)


def strip_annotations(tree: ast.Module) -> ast.Module:
    """No annotations left to keep definitions alive (python-minifier drops them anyway); a dataclass
    field keeps a neutral one, which the dataclass machinery needs."""
    for n in ast.walk(tree):
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)):
            n.returns = None
            for a in (*n.args.posonlyargs, *n.args.args, *n.args.kwonlyargs, n.args.vararg, n.args.kwarg):
                if a is not None:
                    a.annotation = None
        elif isinstance(n, ast.ClassDef):
            for f in n.body:
                if isinstance(f, ast.AnnAssign):
                    f.annotation = ast.Constant("object")
    for n in ast.walk(tree):  # annotated locals: plain assignments (or nothing, when without a value)
        for name in ("body", "orelse", "finalbody"):
            block = getattr(n, name, None)
            if isinstance(block, list) and block and not isinstance(n, ast.ClassDef):
                setattr(n, name, [ast.Assign([s.target], s.value) if isinstance(s, ast.AnnAssign) and s.value is not None
                                  else s for s in block if not (isinstance(s, ast.AnnAssign) and s.value is None)]
                        or [ast.Pass()])
    return ast.fix_missing_locations(tree)


def _fingerprint() -> tuple:
    """(path, mtime, size) of every package source: the caches follow edits."""
    return tuple((str(p), p.stat().st_mtime_ns, p.stat().st_size) for p in sorted(PKG_ROOT.rglob("*.py")))


def embedded_config(cfg: Config) -> dict:
    """The config a bundle compiles in: machine-local paths blanked and the default seed, so that
    every seed of a recipe gets the same file (the seed is read at run time)."""
    d = cfg.to_dict()
    d["data"]["path"] = ""
    d["data"]["tokenizer"] = ""
    d["train"]["seed"] = TrainConfig().seed
    return d


def program_source(cfg: Config) -> str:
    return _program(json.dumps(embedded_config(cfg), sort_keys=True), _fingerprint())[0]


def minify(source: str) -> str:
    return python_minifier.minify(source, rename_globals=True, remove_literal_statements=True, remove_asserts=True,
                                  remove_debug=True, hoist_literals=False) + "\n"


def latin1_literal(blob: bytes) -> str:
    """The bytes as a triple-quoted str literal of a latin-1 source file (read back with
    .encode('latin1')). Escaped only where a source file must be: backslash, CR (newline translation
    would make it LF), NUL, and a quote that would close the literal."""
    out = []
    quotes = 0
    for i, ch in enumerate(blob.decode("latin-1")):
        if ch == "\\":
            ch = "\\\\"
        elif ch == "\r":
            ch = "\\r"
        elif ch == "\0":
            ch = "\\x00" if i + 1 < len(blob) and 48 <= blob[i + 1] <= 55 else "\\0"
        elif ch == "'" and (quotes == 2 or i == len(blob) - 1):
            ch = "\\'"
        quotes = quotes + 1 if ch == "'" else 0
        out.append(ch)
    return "'''" + "".join(out) + "'''"


def wrap(minified: str, compress: str) -> tuple[str, str]:
    """(file text, wrapper used): the program itself for "none", else a self-extracting stub."""
    if compress not in COMPRESSIONS:
        raise InputError(f"--compress: expected one of {' | '.join(COMPRESSIONS)}, got '{compress}'")
    if compress == "none":
        return minified, "none"
    raw = minified.encode("utf-8")
    texts = {}
    for name in (WRAPPERS if compress == "auto" else (compress,)):
        blob, head = _compressed(raw, name)
        texts[name] = f"#coding:latin1\nL={latin1_literal(blob)}\n{head}\n"
    choice = min(texts, key=lambda k: len(texts[k].encode("latin-1")))
    return texts[choice], choice


def _compressed(raw: bytes, name: str) -> tuple[bytes, str]:
    """(payload, the stub's decoding lines) for one wrapper."""
    if name == "lzma":
        return (lzma.compress(raw, format=lzma.FORMAT_RAW, filters=[{"id": lzma.FILTER_LZMA2, "preset": 9 | lzma.PRESET_EXTREME}]),
                "import lzma\nexec(lzma.decompress(L.encode('latin1'),lzma.FORMAT_RAW,None,[{'id':lzma.FILTER_LZMA2}]))")
    if name == "brotli":
        return brotli.compress(raw, quality=11, lgwin=24), "import brotli\nexec(brotli.decompress(L.encode('latin1')))"
    # zpaq method 5 (context mixing): ~13% under brotli-11 on minified Python; one thread, so the
    # same program gives the same bytes
    return zpaq.compress(raw, level=5, threads=1), "import zpaq\nexec(zpaq.decompress(L.encode('latin1')))"


@functools.lru_cache(maxsize=32)
def _bundle(config_json: str, compress: str, fingerprint: tuple) -> Bundle:
    src, mods, kept = _program(config_json, fingerprint)
    mini = minify(src)
    text, used = wrap(mini, compress)
    std = std_modules()
    third = sorted(({line.split()[1].split(".")[0] for line in src.splitlines() if line.startswith(("import ", "from "))}
                    | ({used} if used != "none" else set())) - std - {"__future__"})
    b = Bundle(text, 0, used, list(mods), list(kept), third, len(src.encode()), len(mini.encode()))
    b.code_bytes = len(b.data())
    return b


def bundle_info(cfg: Config, compress: str | None = None) -> Bundle:
    """The counted script for `cfg` and what it holds (cached per config and source state)."""
    return _bundle(json.dumps(embedded_config(cfg), sort_keys=True), compress or cfg.quant.code_compress, _fingerprint())


def code_bytes(cfg: Config, compress: str | None = None) -> int:
    """Bytes of train_gpt.py for `cfg`: the code part of the artifact budget."""
    return bundle_info(cfg, compress).code_bytes


def write_bundle(path: str | Path, b: Bundle) -> None:
    atomic_write_bytes(path, b.data())


def distribution_names(modules: list[str]) -> list[str]:
    """The installed distributions that provide these top-level modules (lowercased)."""
    dists = metadata.packages_distributions()
    return sorted({d.lower() for m in modules for d in dists.get(m, [])})


def requirements(b: Bundle) -> list[str]:
    """Pinned `dist==version` lines for exactly the bundle's third-party imports."""
    dists = metadata.packages_distributions()
    out = set()
    for mod in b.third_party:
        for dist in dists.get(mod, []):
            try:
                out.add(f"{dist}=={metadata.version(dist).split('+')[0]}")  # no local tag (+cpu, +cu128)
            except metadata.PackageNotFoundError:
                continue
    return sorted(out, key=str.lower)

