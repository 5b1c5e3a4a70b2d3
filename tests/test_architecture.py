"""The package's shape (docs/DESIGN.md): no import circle, no hidden imports inside
functions, one reader of the environment, and the contract's details kept in protocol.py."""

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "hvd_dc"


def _modules():
    """Every module of the package by dotted name below hvd_dc ("worker", "collectives" for
    collectives/__init__.py, "collectives.allreduce"; the package's own __init__ is "__init__")."""
    found = {}
    for p in sorted(PKG.rglob("*.py")):
        parts = list(p.relative_to(PKG).with_suffix("").parts)
        if parts[-1] == "__init__" and len(parts) > 1:
            parts = parts[:-1]
        found[".".join(parts)] = ast.parse(p.read_text())
    return found


_NAMES = set(_modules())


def _package_of(name):
    """The package a module's relative imports start from, as a list of parts."""
    is_package = (PKG / name.replace(".", "/") / "__init__.py").exists()
    parts = [] if name == "__init__" else name.split(".")
    return parts if is_package else parts[:-1]


def _resolve(name, node):
    """The hvd_dc modules a relative ``from ... import ...`` names (the longest existing
    module of each target)."""
    package = _package_of(name)
    up = node.level - 1
    if up > len(package):
        return set()
    base = package[: len(package) - up]
    targets = [base + node.module.split(".")] if node.module else [base + [a.name] for a in node.names]
    found = set()
    for t in targets:
        known = [t[:k] for k in range(len(t), 0, -1) if ".".join(t[:k]) in _NAMES]
        # a target that is no .py module (the optional C extension) keeps its own name
        found.add(".".join(known[0]) if known else ".".join(t) or "__init__")
    return found


def _package_imports(tree, top_level_only, name="__init__"):
    found = set()
    nodes = tree.body if top_level_only else ast.walk(tree)
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.level >= 1:
            found.update(_resolve(name, node))
    return found


def test_no_import_circle():
    graph = {name: _package_imports(tree, True, name) - {name} for name, tree in _modules().items()}

    def visit(name, path):
        for dep in graph.get(name, ()):
            assert dep not in path, f"import circle: {' -> '.join(path + [dep])}"
            visit(dep, path + [dep])

    for name in graph:
        visit(name, [name])


def test_no_package_import_inside_a_function():
    for name, tree in _modules().items():
        hidden = _package_imports(tree, False, name) - _package_imports(tree, True, name)
        hidden.discard("_kernels")  # the optional C extension, tried at import
        assert not hidden, f"hvd_dc/{name}.py imports {sorted(hidden)} inside a function"


def test_only_settings_and_the_launch_tools_read_the_environment():
    readers = {name for name, tree in _modules().items()
               if any(isinstance(n, ast.Attribute) and n.attr == "environ" for n in ast.walk(tree))}
    # harness: hvd_dc.run builds the launched ranks' environment, as the launch tool does
    assert readers <= {"settings", "runtime", "launch", "harness", "host_checks", "install_horovod"}, readers


def test_runtime_does_not_import_the_command_line_tool():
    for name, tree in _modules().items():
        if name not in ("launch",):
            assert "launch" not in _package_imports(tree, False, name), f"hvd_dc/{name}.py imports the CLI module"


def test_server_and_worker_know_no_word_offsets_or_tags():
    for name in ("server", "worker", "worker_buffers", "runtime"):
        source = (PKG / f"{name}.py").read_text()
        for token in ("Get_accumulate", "Fetch_and_op", "HEADER_WORDS", "7701", "tag=7"):
            assert token not in source, f"hvd_dc/{name}.py uses {token}: that belongs to protocol.py"
