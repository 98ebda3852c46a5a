"""cnnjax's layers: a module imports only its own layer or lower ones, no import cycle, and never
`launch/` (runnable scripts that import cnnjax, not installed with it).

    0  errors, fast_paths, metrics, parallel
    1  data, models, config_base, config_loader, config_values
    2  train
    3  sweep, inspect, weights
    4  cli, cli_flags

Every import counts, including those inside functions ("lazy" imports) and
`importlib.import_module("...")` with a literal name: the source is read with `ast`, nothing is
imported.
"""

import ast
import fnmatch
import functools
import os
from collections.abc import Iterator

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The layer of each module, by the longest dotted prefix of its name that is listed here.
LAYERS = {
    "cnnjax": 0,  # the package's __init__
    "cnnjax.errors": 0,
    "cnnjax.files": 0,
    "cnnjax.fast_paths": 0,
    "cnnjax.metrics": 0,
    "cnnjax.parallel": 0,
    "cnnjax.data": 1,
    "cnnjax.models": 1,
    "cnnjax.config_base": 1,
    "cnnjax.config_loader": 1,
    "cnnjax.config_values": 1,
    "cnnjax.train": 2,
    "cnnjax.sweep": 3,
    "cnnjax.inspect": 3,
    "cnnjax.weights": 3,
    "cnnjax.cli": 4,
    "cnnjax.cli_flags": 4,
}
SCRIPTS = "launch"  # the folder of runnable scripts: nothing in cnnjax may import it


def module_files(root: str, package: str) -> dict[str, str]:
    """{dotted module name: path} of every .py file of `package` under `root`."""
    modules = {}
    for folder, _, files in os.walk(os.path.join(root, package)):
        for name in sorted(files):
            if not name.endswith(".py"):
                continue
            path = os.path.join(folder, name)
            parts = os.path.relpath(path, root)[: -len(".py")].split(os.sep)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join(parts)] = path
    return modules


def _imported_names(tree: ast.Module, module: str, is_package: bool) -> Iterator[tuple[str, int]]:
    """(dotted name, line) of every import in `tree`, at any depth; `from a import b` gives
    "a.b" (a module or a name in module a)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the module's package, one level up per extra dot
                package = module if is_package else module.rpartition(".")[0]
                for _ in range(node.level - 1):
                    package = package.rpartition(".")[0]
                base = f"{package}.{base}" if base else package
            for alias in node.names:
                yield f"{base}.{alias.name}", node.lineno
        elif isinstance(node, ast.Call) and node.args:
            function = node.func
            name = getattr(function, "attr", None) or getattr(function, "id", None)
            first = node.args[0]
            if name in ("import_module", "__import__") and isinstance(first, ast.Constant):
                if isinstance(first.value, str):
                    yield first.value, node.lineno


def _resolve(name: str, modules: dict[str, str]) -> str:
    """The module `name` imports: itself, or the longest prefix of it that is a module."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name


@functools.cache
def import_edges(root: str = ROOT, package: str = "cnnjax") -> tuple[tuple[str, str, int], ...]:
    """(importer, imported, line) for every import of one module of `package` by another, and
    (importer, name, line) for every import of SCRIPTS."""
    modules = module_files(root, package)
    edges = set()
    for module, path in modules.items():
        with open(path) as f:
            tree = ast.parse(f.read(), path)
        is_package = path.endswith("__init__.py")
        for name, line in _imported_names(tree, module, is_package):
            if name == SCRIPTS or name.startswith(SCRIPTS + "."):
                edges.add((module, name, line))
                continue
            if name != package and not name.startswith(package + "."):
                continue  # the standard library, JAX, ...
            target = _resolve(name, modules)
            if target and target != module:
                edges.add((module, target, line))
    return tuple(sorted(edges))


def layer_of(module: str) -> int | None:
    name = module
    while name and name not in LAYERS:
        name = name.rpartition(".")[0]
    return LAYERS.get(name)


def _where(module: str, line: int, root: str = ROOT) -> str:
    path = module_files(root, module.split(".")[0])[module]
    return f"{os.path.relpath(path, root)}:{line}"


def upward_imports(edges, root: str = ROOT) -> list[str]:
    """One line per import of a higher layer."""
    found = []
    for source, target, line in edges:
        low, high = layer_of(source), layer_of(target)
        if low is not None and high is not None and high > low:
            found.append(
                f"{_where(source, line, root)}: {source} (layer {low}) imports {target} "
                f"(layer {high})"
            )
    return found


def import_cycles(edges, root: str = ROOT) -> list[list[str]]:
    """The strongly connected components of more than one module (each holds a cycle), as the
    sorted lines of the imports inside them (Tarjan's algorithm)."""
    graph: dict[str, set[str]] = {}
    for source, target, _ in edges:
        graph.setdefault(source, set()).add(target)
        graph.setdefault(target, set())
    index: dict[str, int] = {}
    lowlink: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components = []

    def visit(node: str) -> None:
        index[node] = lowlink[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for successor in sorted(graph[node]):
            if successor not in index:
                visit(successor)
                lowlink[node] = min(lowlink[node], lowlink[successor])
            elif successor in on_stack:
                lowlink[node] = min(lowlink[node], index[successor])
        if lowlink[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(component)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return [
        sorted(
            f"{_where(s, line, root)}: {s} imports {t}"
            for s, t, line in edges
            if s in component and t in component
        )
        for component in components
    ]


def test_every_module_has_a_layer():
    unplaced = [m for m in module_files(ROOT, "cnnjax") if layer_of(m) is None]
    assert not unplaced, f"add these modules to LAYERS in {__file__}: {unplaced}"


def test_no_module_imports_a_higher_layer():
    found = upward_imports(import_edges())
    assert not found, "imports of a higher layer:\n" + "\n".join(found)


def test_no_import_cycles():
    cycles = import_cycles(import_edges())
    text = "\n\n".join("\n".join(lines) for lines in cycles)
    assert not cycles, f"{len(cycles)} import cycle(s), each a set of modules:\n{text}"


def test_cnnjax_never_imports_launch():
    found = [
        f"{_where(source, line)}: {source} imports {target}"
        for source, target, line in import_edges()
        if target == SCRIPTS or target.startswith(SCRIPTS + ".")
    ]
    assert not found, "launch/ holds scripts that import cnnjax, never the reverse:\n" + "\n".join(
        found
    )


def test_launch_is_not_installed_with_the_package():
    tomllib = pytest.importorskip("tomllib")
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        setuptools = tomllib.load(f)["tool"]["setuptools"]
    packages = setuptools.get("packages", {"find": {}})
    listed = packages if isinstance(packages, list) else packages["find"].get("include", ["*"])
    installed = [p for p in listed if fnmatch.fnmatch(SCRIPTS, p)]
    assert not installed, f"pyproject.toml installs launch/ as a package: {listed}"


def test_the_checker_sees_lazy_relative_and_dynamic_imports_and_cycles(tmp_path):
    package = tmp_path / "cnnjax"
    (package / "train").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "errors.py").write_text("def f():\n    from .train import loop\n")
    (package / "train" / "__init__.py").write_text("")
    (package / "train" / "loop.py").write_text(
        "import importlib\nfrom ..errors import f\n\n\n"
        "def g():\n    importlib.import_module('launch.local')\n"
    )
    edges = import_edges(str(tmp_path), "cnnjax")
    assert edges == (
        ("cnnjax.errors", "cnnjax.train.loop", 2),
        ("cnnjax.train.loop", "cnnjax.errors", 2),
        ("cnnjax.train.loop", "launch.local", 6),
    )
    assert upward_imports(edges, str(tmp_path)) == [
        "cnnjax/errors.py:2: cnnjax.errors (layer 0) imports cnnjax.train.loop (layer 2)"
    ]
    assert import_cycles(edges, str(tmp_path)) == [
        [
            "cnnjax/errors.py:2: cnnjax.errors imports cnnjax.train.loop",
            "cnnjax/train/loop.py:2: cnnjax.train.loop imports cnnjax.errors",
        ]
    ]
