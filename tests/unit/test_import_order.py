"""The package reads one way: a module imports only the ground floor and stages before its own.

Every ``import`` / ``from ... import`` of ``eoforge`` in ``platform/eoforge`` is read from the
source (module level and function level alike, so a lazy import cannot hide a climb back up).
Each module belongs to a floor (:data:`FLOORS`, in the order data flows); an import from a
higher floor fails the test with the module, the line and both floors. Modules of one floor may
import each other, but never in a circle.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "platform" / "eoforge"

#: Floors from the bottom up. A folder (stage) or top-level module name -> its floor's index.
FLOORS: list[tuple[str, set[str]]] = [
    (
        "ground",
        {
            "__init__",
            "errors",
            "progress",
            "redact",
            "signing",
            "storage",
            "bands",
            "ray_node",
            "times",
            "stack_secrets",
        },
    ),
    ("config", {"config"}),
    ("tracking", {"tracking"}),
    ("catalog", {"catalog"}),
    ("plan", {"plan"}),
    ("data", {"data"}),
    ("models", {"models"}),
    ("ssl", {"ssl"}),
    ("train", {"train"}),
    ("finetune", {"finetune"}),
    ("tune", {"tune"}),
    ("predict", {"predict"}),
    ("tools", {"demo", "k8s", "discovery", "cli", "stack", "stack_state", "stack_probe", "processes", "jobmain"}),
]
FLOOR_OF = {name: i for i, (_, names) in enumerate(FLOORS) for name in names}


def module_name(path: Path) -> str:
    """``eoforge.a.b`` of a file under the package (``__init__`` files name their package)."""
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> list[tuple[int, str]]:
    """(line, imported eoforge module or symbol path) of every import in one file."""
    mod = module_name(path)
    package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
    out: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                name = ".".join([*base, *([node.module] if node.module else [])])
            else:
                name = node.module or ""
            if name == "eoforge" or name.startswith("eoforge."):
                # ``from eoforge import storage`` imports the module eoforge.storage
                out += [(node.lineno, f"{name}.{a.name}" if name == "eoforge" else name) for a in node.names]
        elif isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names if a.name.startswith("eoforge")]
    return out


def floor_of(dotted: str) -> int:
    parts = dotted.split(".")
    key = parts[1] if len(parts) > 1 else "__init__"
    if key not in FLOOR_OF:
        raise AssertionError(f"{dotted}: {key!r} is on no floor; add it to FLOORS in {Path(__file__).name}")
    return FLOOR_OF[key]


def test_every_module_is_on_a_floor() -> None:
    for path in PACKAGE.rglob("*.py"):
        floor_of(module_name(path))


def test_no_module_imports_a_later_stage() -> None:
    climbs = []
    for path in sorted(PACKAGE.rglob("*.py")):
        mod = module_name(path)
        here = floor_of(mod)
        for line, target in imports_of(path):
            there = floor_of(target)
            if there > here:
                climbs.append(f"{mod}:{line} imports {target} ({FLOORS[here][0]} -> {FLOORS[there][0]})")
    assert not climbs, "imports that climb back up the flow:\n" + "\n".join(sorted(set(climbs)))


def test_no_import_circles_between_modules() -> None:
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = defaultdict(set)
    for mod, path in modules.items():
        for _, target in imports_of(path):
            # a symbol import (eoforge.a.b.NAME) resolves to its module
            while target not in modules and "." in target:
                target = target.rpartition(".")[0]
            if target in modules and target != mod and not modules[target].name == "__init__.py":
                graph[mod].add(target)
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                cycle = [*stack[stack.index(n) :], n]
                raise AssertionError("import circle: " + " -> ".join(cycle))
            if n not in state:
                visit(n)
        stack.pop()
        state[m] = 2

    for m in sorted(modules):
        if m not in state:
            visit(m)
