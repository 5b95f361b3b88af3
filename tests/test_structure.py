"""The package's import graph: no cycles, lazy imports included, and every import points to
the same layer or a lower one (docs/development.md draws the layers)."""

import ast
import sys
from pathlib import Path

PACKAGE = Path(__file__).parents[1] / "cvae_exp"

# From the bottom up; a module's layer is that of its longest listed prefix.
LAYERS = [
    ["cvae_exp.errors", "cvae_exp.schema", "cvae_exp.files"],
    ["cvae_exp.distributions", "cvae_exp.compose", "cvae_exp.summary", "cvae_exp.data", "cvae_exp.metrics"],
    [
        "cvae_exp.models",
        "cvae_exp.objective",
        "cvae_exp.tasks",
        "cvae_exp.likelihood",
        "cvae_exp.evaluation",
        "cvae_exp.visualize",
        "cvae_exp.samplers",
        "cvae_exp.classifier",
    ],
    ["cvae_exp.module", "cvae_exp.callbacks", "cvae_exp.loggers"],
    [
        "cvae_exp.checks",
        "cvae_exp.run",
        "cvae_exp.preflight",
        "cvae_exp.resume",
        "cvae_exp.plugins",
        "cvae_exp.optuna_sweeper",
    ],
    ["cvae_exp.train", "cvae_exp.eval", "cvae_exp.sample", "cvae_exp.table", "cvae_exp.api"],
]


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__")


def imports() -> dict[str, set[str]]:
    """Each module's imports of cvae_exp modules, wherever they stand in the file."""
    graph = {}
    for path in PACKAGE.rglob("*.py"):
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("cvae_exp"):
                # `from cvae_exp import visualize` imports the module cvae_exp.visualize
                found |= {f"cvae_exp.{a.name}" for a in node.names} if node.module == "cvae_exp" else {node.module}
            elif isinstance(node, ast.Import):
                found |= {a.name for a in node.names if a.name.startswith("cvae_exp")}
        graph[module_name(path)] = found
    return graph


def layer(module: str) -> int:
    matches = [
        (len(prefix), number)
        for number, names in enumerate(LAYERS)
        for prefix in names
        if module == prefix or module.startswith(prefix + ".")
    ]
    assert matches or module == "cvae_exp", f"{module} is in no layer: add it to LAYERS in {Path(__file__).name}"
    return max(matches)[1] if matches else len(LAYERS)


def test_every_import_points_down_or_sideways():
    upward = [
        f"{module} (layer {layer(module)}) imports {target} (layer {layer(target)})"
        for module, targets in imports().items()
        for target in targets
        if module != "cvae_exp" and layer(target) > layer(module)
    ]
    assert not upward, "\n".join(upward)


def test_no_import_cycles():
    graph = imports()
    known = lambda name: name if name in graph else name.rsplit(".", 1)[0]
    done, path = set(), []

    def visit(module):
        assert module not in path, "import cycle: " + " -> ".join([*path[path.index(module) :], module])
        if module in done:
            return
        path.append(module)
        for target in graph.get(module, ()):
            visit(known(target))
        path.pop()
        done.add(module)

    for module in sorted(graph):
        visit(module)


def test_the_check_finds_a_cycle_and_an_upward_import(monkeypatch):
    """The two checks above can fail: a cycle and an upward import planted in the graph."""
    planted = {**imports(), "cvae_exp.schema": {"cvae_exp.objective"}}  # objective imports schema
    monkeypatch.setattr(sys.modules[__name__], "imports", lambda: planted)
    for check in (test_every_import_points_down_or_sideways, test_no_import_cycles):
        try:
            check()
        except AssertionError:
            continue
        raise AssertionError(f"{check.__name__} passed on a planted defect")
