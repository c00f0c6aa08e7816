"""The benches call one another's functions (``from detector_eval import shipped``); a bench changed
alone can leave another calling it with arguments it no longer takes, which only a run of hours
would find (``bench/smooth_training.py`` and ``swap_training.py`` called ``shipped`` with a
contract it had stopped taking, ff29075 → b2f1cf1). Each such call, read from the source, must
bind to the callee's signature."""

from __future__ import annotations

import ast
import importlib
import inspect
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


def sibling_calls() -> list[tuple[str, int, str, str, ast.Call]]:
    """(bench file, line, module, name, call) for every call of a function another bench defines."""
    siblings = {path.stem for path in BENCH.glob("*.py")}
    calls = []
    for path in sorted(BENCH.glob("*.py")):
        tree = ast.parse(path.read_text())
        names, modules = {}, set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module in siblings:
                names.update({alias.asname or alias.name: (node.module, alias.name) for alias in node.names})
            elif isinstance(node, ast.Import):
                modules.update(alias.name for alias in node.names if alias.name in siblings)
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            if isinstance(node.func, ast.Name) and node.func.id in names:
                calls.append((path.name, node.lineno, *names[node.func.id], node))
            elif isinstance(node.func, ast.Attribute) and isinstance(node.func.value, ast.Name) \
                    and node.func.value.id in modules:
                calls.append((path.name, node.lineno, node.func.value.id, node.func.attr, node))
    return calls


CALLS = sibling_calls()


def test_the_benches_call_one_another():
    assert {module for _, _, module, _, _ in CALLS} >= {"detector_eval", "held_out", "smooth_training"}


@pytest.mark.parametrize("where, line, module, name, call", CALLS, ids=[f"{c[0]}:{c[1]}:{c[3]}" for c in CALLS])
def test_each_call_binds_to_the_callee(where, line, module, name, call, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    callee = getattr(importlib.import_module(module), name)
    if not callable(callee) or any(isinstance(arg, ast.Starred) for arg in call.args) \
            or any(keyword.arg is None for keyword in call.keywords):
        pytest.skip("not a function, or arguments unpacked at run time")
    try:
        inspect.signature(callee).bind(*call.args, **{keyword.arg: keyword.value for keyword in call.keywords})
    except TypeError as error:
        pytest.fail(f"bench/{where}:{line} calls {module}.{name} with arguments it does not take: {error}")
