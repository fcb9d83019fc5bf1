"""Import direction of the package, read from its source (ast, nothing is imported).

* A command-line module (one that defines ``main()`` and parses arguments) is a leaf: no module of the package
  imports it, at module level or inside a function. Library code does not depend on a command's plumbing, and
  commands do not import each other.
* No module imports another module's ``_private`` name (``from .x import _y`` or ``x._y`` on an imported module).
* The module-level imports have no cycle.
"""

from __future__ import annotations

import ast
import pathlib

PACKAGE = "stellarfm_jax"
ROOT = pathlib.Path(__file__).resolve().parents[1] / PACKAGE
# The commands the README documents (python -m stellarfm_jax.X); each must be detected as a command line.
KNOWN_COMMANDS = {"train", "evaluate", "predict", "finetune_search", "finetune_tokens", "convert", "data.__main__"}


def module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def modules() -> dict[str, ast.Module]:
    return {module_name(p): ast.parse(p.read_text(), str(p)) for p in sorted(ROOT.rglob("*.py"))}


MODULES = modules()


def is_package(name: str) -> bool:
    return (ROOT.parent / pathlib.Path(*name.split(".")) / "__init__.py").is_file()


def resolve(importer: str, module: str | None, level: int) -> str:
    """The absolute name of ``from <level dots><module> import ...`` written in ``importer``."""
    if level == 0:
        return module or ""
    base = importer.split(".") if is_package(importer) else importer.split(".")[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([module] if module else []))


def is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imports(name: str, tree: ast.Module, module_level_only: bool, known=None):
    """(line, imported module, names imported from it or None, alias map) for every import of a package module.

    ``from .a import b`` where ``b`` is a submodule counts as an import of ``a.b``."""
    known = MODULES if known is None else known
    out = []

    def visit(node, top: bool):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and is_type_checking(child):
                continue  # not executed at run time
            inside_function = isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import) and (top or not module_level_only):
                for alias in child.names:
                    if alias.name.split(".")[0] == PACKAGE:
                        out.append((child.lineno, alias.name, None))
            elif isinstance(child, ast.ImportFrom) and (top or not module_level_only):
                target = resolve(name, child.module, child.level)
                if target.split(".")[0] != PACKAGE:
                    continue
                plain = []
                for alias in child.names:
                    sub = f"{target}.{alias.name}"
                    if sub in known:
                        out.append((child.lineno, sub, None))
                    else:
                        plain.append(alias.name)
                if plain or not child.names:
                    out.append((child.lineno, target, plain))
            if not (module_level_only and inside_function):
                visit(child, top and not inside_function)

    visit(tree, True)
    return out


def is_command(name: str, tree: ast.Module) -> bool:
    """Defines a top-level ``main`` and builds an argument parser (or is a package's ``__main__``)."""
    has_main = any(isinstance(n, ast.FunctionDef) and n.name == "main" for n in tree.body)
    source = ast.unparse(tree)
    parses = "argparse" in source or "cli.parser(" in source or "add_argument(" in source
    return has_main and (parses or name.endswith("__main__"))


COMMANDS = {n for n, t in MODULES.items() if is_command(n, t)}


def test_the_known_commands_are_detected():
    assert {f"{PACKAGE}.{c}" for c in KNOWN_COMMANDS} <= COMMANDS, COMMANDS


def command_imports(mods: dict[str, ast.Module]) -> list[str]:
    commands = {n for n, t in mods.items() if is_command(n, t)}
    found = []
    for name, tree in mods.items():
        for line, target, _ in imports(name, tree, module_level_only=False, known=mods):
            if target in commands and target != name:
                found.append(f"{name}:{line} imports the command-line module {target}")
    return found


def test_no_module_imports_a_command_line_module():
    found = command_imports(MODULES)
    assert not found, "\n".join(found)


def private_imports(mods: dict[str, ast.Module]) -> list[str]:
    found = []
    for name, tree in mods.items():
        aliases = {}  # local name -> package module it is bound to
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                target = resolve(name, node.module, node.level)
                if target.split(".")[0] != PACKAGE:
                    continue
                for alias in node.names:
                    sub = f"{target}.{alias.name}"
                    if sub in mods:
                        aliases[alias.asname or alias.name] = sub
                    elif alias.name.startswith("_") and not alias.name.startswith("__") and target != name:
                        found.append(f"{name}:{node.lineno} imports {target}.{alias.name}")
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.split(".")[0] == PACKAGE and alias.asname:
                        aliases[alias.asname] = alias.name
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases
                    and node.attr.startswith("_") and not node.attr.startswith("__")
                    and aliases[node.value.id] != name):
                found.append(f"{name}:{node.lineno} uses {aliases[node.value.id]}.{node.attr}")
    return sorted(set(found))


def test_no_module_imports_another_modules_private_names():
    found = private_imports(MODULES)
    assert not found, "\n".join(found)


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (or a self-loop), each as a sorted list."""
    index, low, on_stack, stack, components, counter = {}, {}, set(), [], [], [0]

    def connect(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in graph.get(v, ()):
                components.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return components


def module_graph(mods: dict[str, ast.Module]) -> dict[str, set[str]]:
    graph = {}
    for name, tree in mods.items():
        graph[name] = {t for _, t, _ in imports(name, tree, module_level_only=True, known=mods)
                       if t in mods and t != name}
    return graph


def test_find_cycles_finds_a_cycle_and_only_cycles():
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_module_level_imports_have_no_cycle():
    graph = module_graph(MODULES)
    cycles = find_cycles(graph)
    lines = []
    for cycle in cycles:
        members = set(cycle)
        edges = [f"{a} -> {b}" for a in cycle for b in sorted(graph[a]) if b in members]
        lines.append(f"cycle {cycle}: " + ", ".join(edges))
    assert not cycles, "\n".join(lines)


def test_the_walker_resolves_relative_imports():
    assert resolve(f"{PACKAGE}.data.h5io", None, 2) == PACKAGE
    assert resolve(f"{PACKAGE}.data", "h5io", 1) == f"{PACKAGE}.data.h5io"
    assert resolve(f"{PACKAGE}.tables", "cli", 1) == f"{PACKAGE}.cli"
    tree = ast.parse("from . import cli\nfrom .formats import atomic_file\ndef f():\n    from .predict import main\n")
    found = imports(f"{PACKAGE}.x", tree, module_level_only=False)
    assert [(t, n) for _, t, n in found] == [(f"{PACKAGE}.cli", None), (f"{PACKAGE}.formats", ["atomic_file"]),
                                             (f"{PACKAGE}.predict", ["main"])]
    assert [t for _, t, _ in imports(f"{PACKAGE}.x", tree, module_level_only=True)] == [f"{PACKAGE}.cli",
                                                                                       f"{PACKAGE}.formats"]


def test_each_rule_fires_on_a_small_tree_that_breaks_it():
    """The checks themselves, on a made-up package (the real one may be clean)."""
    P = PACKAGE
    mods = {name: ast.parse(src) for name, src in {
        f"{P}.core": "from . import shell\n",                             # core <-> shell: a cycle
        f"{P}.shell": "from .core import x\nfrom .util import _hidden\n",  # a private name
        f"{P}.util": "def f():\n    from .tool import main\n",            # library -> command (in a function)
        f"{P}.tool": "import argparse\nfrom . import util\ndef main():\n    util._other()\n",  # private attribute
        f"{P}.lazy": "def g():\n    from . import core\n",                # function-level: no cycle edge
    }.items()}
    assert command_imports(mods) == [f"{P}.util:2 imports the command-line module {P}.tool"]
    assert private_imports(mods) == [f"{P}.shell:2 imports {P}.util._hidden", f"{P}.tool:4 uses {P}.util._other"]
    assert find_cycles(module_graph(mods)) == [[f"{P}.core", f"{P}.shell"]]
