"""The house's arrows point down: the package's import graph, read from the source with
``ast`` (module-level and function-level imports), has no cycle and respects the layers of
docs/ARCHITECTURE.md."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "deeplab"

# Layer of each top-level part; a module imports only its own layer or lower ones.
LAYERS = {
    "cli": 4, "__main__": 4, "__init__": 4,
    "train": 3, "evaluate": 3, "inference": 3, "export": 3, "video": 3, "serve": 3, "env": 3,
    "predict": 3, "runtimes": 3, "quantize": 3, "web": 3, "quick": 3,
    "tune": 3,
    "hub": 2, "checkpoint": 2,
    "models": 1, "weights": 1, "data": 1, "losses": 1, "metrics": 1, "crf": 1, "viz": 1,
    "config": 1, "table": 1, "extras": 1, "system": 1, "upsample": 1,
}  # fmt: skip
# Only the CLI (deeplab.cli and its modules) may import the library inside functions: it
# keeps `deeplab --help` fast.
LAZY_ALLOWED = {"deeplab.cli"}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _graph() -> tuple[dict[str, set[str]], list[tuple[str, str]]]:
    """(module -> package modules it imports, [(module, target) imported inside a function])."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    edges: dict[str, set[str]] = {m: set() for m in modules}
    lazy = []
    for name, path in modules.items():
        tree = ast.parse(path.read_text())
        top_level = {id(node) for node in tree.body}
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")
                    base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
                targets = [f"{base}.{a.name}" for a in node.names] + [base]
            else:
                continue
            hits = set()
            for target in targets:
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    hits.add(target)
            edges[name] |= hits
            if hits and id(node) not in top_level:
                lazy += [(name, t) for t in hits]
    return edges, lazy


def _part(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_no_import_cycle():
    edges, _ = _graph()
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for n in sorted(edges[m]):
            if state.get(n) == 1:
                cycle = stack[stack.index(n) :] + [n]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if n not in state:
                visit(n)
        stack.pop()
        state[m] = 2

    for m in sorted(edges):
        if m not in state:
            visit(m)


def test_imports_point_down_the_layers():
    edges, _ = _graph()
    upward = []
    for module, targets in edges.items():
        for target in targets:
            if _part(target) == "__init__":
                continue  # `from deeplab import __version__`-style imports of the package
            if LAYERS[_part(target)] > LAYERS[_part(module)]:
                upward.append(f"{module} -> {target}")
    assert not upward, "imports that point up: " + ", ".join(sorted(upward))


def test_models_and_weights_never_import_each_other():
    edges, _ = _graph()
    crossing = [f"{m} -> {t}" for m, ts in edges.items() for t in ts
                if {_part(m), _part(t)} == {"models", "weights"}]  # fmt: skip
    assert not crossing, crossing


def test_no_hidden_function_level_imports():
    _, lazy = _graph()
    hidden = sorted(f"{m} -> {t}" for m, t in lazy
                    if m not in LAZY_ALLOWED and m.rpartition(".")[0] not in LAZY_ALLOWED)
    assert not hidden, "imports inside functions hide edges: " + ", ".join(hidden)


def test_every_part_has_a_layer():
    parts = {_part(_module_name(p)) for p in PACKAGE.rglob("*.py")}
    assert parts <= LAYERS.keys(), f"add a layer for: {sorted(parts - LAYERS.keys())}"
