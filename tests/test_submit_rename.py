"""Short parameter names in the counted script (pgolf.submit.rename) on small programs."""
from __future__ import annotations

import ast

from pgolf.submit.rename import shorten_parameters

PROGRAM = """
import torch

def scale(values, factor=2, offset=0):
    return [v * factor + offset for v in values]

def shift(values, offset):
    return [v + offset for v in values]

def outer(count, width):
    def inner(step):
        return step * width
    return [inner(k) for k in range(count)]

def shadow(value):
    def inner(value):
        return value + 1
    return inner(value) * value

class Box:
    def __init__(self, payload, tag='t'):
        self.payload, self.tag = payload, tag

    def total(self, extra):
        return sum(self.payload) + extra

def call_model(model, data):
    return model(data, flag=True)

def flagged(data, flag=False):
    return data if flag else -data

def run():
    b = Box([1, 2], tag='x')
    return (scale([1, 2], offset=1), shift([1], 3), outer(3, 4), shadow(5), b.total(1), b.tag,
            call_model(flagged, 2), flagged(3), torch.zeros(2, dtype=torch.int64).tolist())
"""


def params(tree: ast.Module, name: str) -> list[str]:
    fn = next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == name)
    return [a.arg for a in fn.args.args]


def run(tree: ast.Module):
    g: dict = {}
    exec(compile(ast.fix_missing_locations(tree), "prog", "exec"), g)
    return g["run"]()


def test_parameters_no_caller_names_get_short_names():
    before = ast.parse(PROGRAM)
    tree = ast.parse(PROGRAM)
    assert shorten_parameters(tree) > 0
    assert run(tree) == run(before)  # the same program
    assert params(tree, "scale")[0] != "values" and "offset" in params(tree, "scale")  # f(offset=...) reaches f
    assert "factor" not in params(tree, "scale")
    assert "offset" not in params(tree, "shift")  # that keyword reaches scale, not shift
    assert params(tree, "outer") != ["count", "width"]  # width is read by a closure: renamed there too
    assert params(tree, "shadow") == ["value"]  # an inner scope binds the same name: left as it is
    assert "tag" in params(tree, "__init__")  # Box(tag=...) reaches the constructors
    assert "flag" in params(tree, "flagged")  # model(data, flag=...) may reach any function
    assert "extra" not in params(tree, "total")


def test_what_keeps_every_name():
    for extra in ("\ndef dyn():\n    return locals()\n",                      # introspection
                  "\ndef splat(d):\n    return scale(**d)\nKEYS = ('values',)\n"):  # a **mapping and its strings
        tree = ast.parse(PROGRAM + extra)
        shorten_parameters(tree)
        if "locals" in extra:
            assert params(tree, "scale") == ["values", "factor", "offset"]
        else:
            assert params(tree, "scale")[0] == "values"
    handed = ast.parse("import numpy as np\ndef f(row, scale=1):\n    return row * scale\n"
                       "def g(a):\n    return np.apply_along_axis(f, 0, a, scale=2)\n")
    shorten_parameters(handed)
    assert params(handed, "f")[1] == "scale"  # numpy is handed f and passes scale= on to it
    deco = ast.parse("import functools\n@functools.lru_cache(maxsize=None)\ndef f(long_name):\n    return long_name\n"
                     "@staticmethod\ndef g(long_name):\n    return long_name\n")
    shorten_parameters(deco)
    assert params(deco, "f") == ["long_name"] and params(deco, "g") != ["long_name"]  # an unknown decorator
