"""The bundle's pruning passes (pgolf.submit.prune) on small programs, and on a recipe's script."""
from __future__ import annotations

import ast

from pgolf.config import load_config
from pgolf.submit import bundle
from pgolf.submit.prune import drop_dead_code, drop_guards, pure

GUARDED = """
def f(x, w):
    if x < 0:
        raise ValueError('x must be >= 0')
    if not isinstance(w, list):
        raise RuntimeError
    if x > 9:
        raise InputError('x: too large')
    if w != w[::-1]:
        raise CodecError('sha mismatch')
    if check(x):
        raise ValueError('check has effects')
    if w.pop():
        raise ValueError('pop has effects')
    if w.numel() > 3 or w.max() > 2:
        raise ValueError('too big')
    if x == 5:
        raise ValueError('five')
    else:
        x += 1
    for y in w:
        if y is None:
            raise ValueError('no None')
    return x
"""


def test_drop_guards_keeps_user_errors_and_effects():
    tree = ast.parse(GUARDED)
    assert drop_guards(tree) == 4
    out = ast.unparse(tree)
    for gone in ("x must be", "RuntimeError", "no None", "too big"):
        assert gone not in out
    for kept in ("too large", "sha mismatch", "check has effects", "pop has effects", "'five'", "pass"):
        assert kept in out
    src = bundle.program_source(load_config("pr1413"))
    assert "sha256 mismatch" in src and "Muon: lr must be" not in src and "no bytes scored" not in src


DEAD = """
def f(entries, data, w):
    names = [e['name'] for e in entries]
    raw_len = len(data)
    count = 0
    count += 1
    cfg, s = (None, w.state)
    a, b = (len(data), g(data))
    for i, e in enumerate(entries):
        pass
    for e in gen(entries):
        pass
    for last in entries:
        pass
    try:
        out = s + 1
    finally:
        pass
    if out:
        out += 1
    while out < 0:
        out += 1
    return out, last
"""


def test_drop_dead_code_keeps_effects_and_reads():
    tree = ast.parse(DEAD)
    assert drop_dead_code(tree) == 6
    got = ast.unparse(tree)
    want = ast.unparse(ast.parse("""
def f(entries, data, w):
    count = 0
    count += 1
    s = w.state
    b = g(data)
    for e in gen(entries):
        pass
    for last in entries:
        pass
    out = s + 1
    if out:
        out += 1
    while out < 0:
        out += 1
    return out, last
"""))
    assert got == want
    # the pruned function computes what the original did
    scope: dict = {"g": lambda d: d, "gen": iter}
    exec(got, scope)
    class W:
        state = 4
    assert scope["f"]([{"name": "x"}], [1], W()) == (6, {"name": "x"})


def test_pure_expressions():
    yes = ["len(x) + 1", "[e['n'] for e in xs]", "a.b[c]", "x.numel() and x.max() > 2", "{k: v for k, v in d.items()}"]
    no = ["f(x)", "x.append(1)", "(y := 2)", "lambda: f()", "print(x)"]
    assert all(pure(ast.parse(e, mode="eval").body) for e in yes)
    assert not any(pure(ast.parse(e, mode="eval").body) for e in no)


def test_pure_functions_and_what_a_loop_leaves_behind():
    from pgolf.submit.prune import pure_functions
    src = """
def qmax(bits):
    return (1 << bits - 1) - 1
def twice(bits):
    return 2 * qmax(bits)
def noisy(x):
    return print(x)
def f(entries, bits):
    qm = qmax(bits)
    q2 = twice(bits)
    n = noisy(bits)
    for i, role in entries:
        bits += i
    for i, e in enumerate(entries):
        pass
    out = {e: i for i, e in entries}
    return bits, out
def g(entries):
    for i in entries:
        pass
    return i
def h(n):
    i = n
    for k in range(n):
        pass
    return [i for i in range(i)], lambda: k
"""
    tree = ast.parse(src)
    assert pure_functions(tree) == {"qmax", "twice"}
    drop_dead_code(tree)
    f = next(n for n in tree.body if getattr(n, "name", "") == "f")
    got = ast.unparse(f)
    # pure calls unread go, an effect stays; the pass loop goes: only a comprehension (its own i, e)
    # and an earlier loop read those names
    assert "qm =" not in got and "q2 =" not in got and "n = noisy(bits)" in got and "enumerate" not in got
    assert "for i in entries:" in ast.unparse(tree)  # g returns the loop variable: the loop stays
    # a comprehension's first iterable is the enclosing scope's; a closure may read a loop variable
    assert "i = n" in ast.unparse(tree) and "for k in range(n)" in ast.unparse(tree)


ATTRS = """
from dataclasses import dataclass, field
import torch

@dataclass
class State:
    step: int = 0
    unused: int = 3
    pinned: int = 1
    label: str = 'x'
    extra: dict = field(default_factory=dict)

@dataclass
class Plan:
    kind: str
    group: str
    bits: int = 0

    @classmethod
    def make(cls, kind):
        return cls(kind, f'{kind} group', bits=8)

class Trainer:
    def __init__(self, n):
        self.n = n
        self.resume, self.progress = False, n
        self.metrics = None
        self.counter = 0
        self.named = 1

    def run(self):
        self.counter += 1
        return self.n + getattr(self, 'named') + self.progress

class Layer(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.flag = True  # a library class: its attributes stay

def helper(x):
    def unused(y=2):
        return y
    def used():
        return x
    return used()

def main():
    s = State(5)
    s.pinned = 2
    p = Plan('int', 'int grp')
    q = Plan.make('fp16')
    return s.step, s.pinned, p.kind, p.bits, q.kind, q.bits, Trainer(4).run(), helper(3), Layer().flag
"""


def test_dead_attributes_and_fields_go_their_constructions_with_them():
    from pgolf.submit.prune import drop_dead_attributes
    before = ast.parse(ATTRS)
    tree = ast.parse(ATTRS)
    n = drop_dead_attributes(tree)
    drop_dead_code(tree)
    out = ast.unparse(tree)
    for gone in ("unused: int", "label: str", "extra: dict", "group: str", "self.resume", "self.metrics",
                 "self.counter", "'int grp'", "{kind} group", "def unused"):
        assert gone not in out, gone
    for kept in ("pinned: int", "self.progress = n", "self.named = 1", "self.flag = True", "bits: int", "def used"):
        assert kept in out, kept
    assert n == 8  # resume, metrics, counter twice (store and +=), State.unused/label/extra, Plan.group

    def run(t):
        g: dict = {}
        exec(compile(t, "prog", "exec"), g)
        return g["main"]()
    assert run(tree) == run(before)


def test_a_dataclass_used_as_a_value_keeps_its_fields():
    from pgolf.submit.prune import drop_dead_attributes
    src = ATTRS.replace("    s = State(5)\n", "    make = State\n    s = make(5)\n")
    tree = ast.parse(src)
    drop_dead_attributes(tree)
    assert "unused: int" in ast.unparse(tree)  # constructions out of sight
