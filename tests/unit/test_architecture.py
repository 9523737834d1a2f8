"""The package's architecture holds: layers import downward only, no cycles, sizes bounded.

The rule (README.md, "Architecture"): errors -> core -> device -> green ->
ports -> app -> cli, each layer importing only itself and the layers before
it; only green and above touch gevent; the core makes no system calls.
Every import counts, also one inside a function: hiding an upward import
there is exactly what this test is for.
"""

import ast
import os
import pathlib
import subprocess
import sys

import pytest

import greentap

PACKAGE = pathlib.Path(greentap.__file__).parent
#: The layers, bottom first: a module may import its own layer and those before it.
LAYERS = ["errors", "core", "device", "green", "ports", "app", "cli"]
#: What may never appear in a layer's imports (the first segment of a module name).
FORBIDDEN = {
    "errors": {"gevent", "structlog", "socket", "_socket", "fcntl", "subprocess", "ctypes"},
    "core": {"gevent", "structlog", "socket", "_socket", "fcntl", "subprocess", "select",
             "ctypes", "threading", "_thread", "signal", "time"},
    "device": {"gevent", "structlog"},
}  # fmt: skip
MAX_MODULE_LINES = 500
MAX_CLASS_LINES = 300


def layer_of(module):
    """The layer of a dotted greentap module name (None for the package's root)."""
    parts = module.split(".")
    if parts == ["greentap"]:
        return None
    head = parts[1]
    if head in ("errors", "_version"):
        return "errors"
    if head in ("cli", "__main__"):
        return "cli"
    return head


def modules():
    """Every module of the package: (dotted name, path)."""
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts.pop()
        yield ".".join(parts), path


def _type_checking_only(node):
    test = getattr(node, "test", None)
    return isinstance(test, ast.Name) and test.id == "TYPE_CHECKING"


def imports(module, path):
    """Every module ``module`` imports, anywhere in its code (not under TYPE_CHECKING)."""
    tree = ast.parse(path.read_text(), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()

    def visit(node):
        if isinstance(node, ast.If) and _type_checking_only(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            for alias in node.names:  # `from greentap.core import vxlan` imports a module
                found.add(f"{base}.{alias.name}")
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    known = {name for name, _ in modules()}
    return {
        name for name in found if not name.startswith("greentap") or name in known
    }  # fmt: skip


GRAPH = {name: imports(name, path) for name, path in modules()}


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_every_import_goes_down_or_sideways(module):
    """A module imports greentap modules of its own layer or a lower one only."""
    mine = layer_of(module)
    for target in sorted(GRAPH[module]):
        if not target.startswith("greentap"):
            continue
        theirs = layer_of(target)
        if mine is None:  # the package's root: the facade, eager on errors only
            assert theirs == "errors", f"greentap/__init__ imports {target} eagerly"
            continue
        assert theirs is not None, f"{module} imports the package root: import the module"
        assert LAYERS.index(theirs) <= LAYERS.index(mine), (
            f"{module} ({mine}) imports {target} ({theirs}): upward"
        )


@pytest.mark.parametrize("module", sorted(m for m in GRAPH if layer_of(m) in FORBIDDEN))
def test_low_layers_import_nothing_forbidden(module):
    """The core makes no system calls and no layer below green touches gevent."""
    heads = {name.split(".")[0] for name in GRAPH[module]}
    bad = heads & FORBIDDEN[layer_of(module)]
    assert not bad, f"{module} imports {sorted(bad)}"


def test_there_are_no_import_cycles():
    """No module reaches itself through its imports, within a layer or across."""
    internal = {m: {t for t in ts if t in GRAPH and t != m} for m, ts in GRAPH.items()}
    # A package's __init__ importing its own submodules is how packages work, and
    # a submodule importing its package's __init__ is the cycle to catch.
    state = {}

    def walk(node, path):
        state[node] = "open"
        for nxt in sorted(internal[node]):
            if nxt.startswith(node + "."):
                continue
            if state.get(nxt) == "open":
                cycle = [*path[path.index(nxt) :], nxt]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                walk(nxt, [*path, nxt])
        state[node] = "done"

    for module in sorted(internal):
        if module not in state:
            walk(module, [module])


def test_the_core_and_the_devices_import_without_gevent():
    """With gevent unimportable, `import greentap`, the core and the device layer work."""
    code = """
import importlib, pkgutil, sys
class NoGevent:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "gevent":
            raise ImportError("gevent is made unimportable for this test")
sys.meta_path.insert(0, NoGevent())
import greentap, greentap.core, greentap.device
for package in (greentap.core, greentap.device):
    for info in pkgutil.iter_modules(package.__path__, package.__name__ + "."):
        importlib.import_module(info.name)
from greentap.core.endpoints import parse_endpoint
assert parse_endpoint("vxlan://198.18.0.2?vni=42").options["vni"] == 42
assert greentap.TapDevice.__name__ == "TapDevice" and greentap.GreentapError
assert "gevent" not in sys.modules, sorted(m for m in sys.modules if "gevent" in m)
print("ok")
"""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env
    )
    assert out.stdout.strip() == "ok", out.stderr


def test_import_greentap_does_not_import_gevent():
    """`import greentap` is cheap: gevent comes only with a green name (greentap.Tap)."""
    code = (
        "import sys, greentap; before = 'gevent' in sys.modules; greentap.Tap; "
        "print(before, 'gevent' in sys.modules)"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.stdout.split() == ["False", "True"], out.stderr


@pytest.mark.parametrize(("module", "path"), sorted(modules()))
def test_modules_and_classes_stay_small(module, path):
    """No module over 500 lines and no class over 300: each piece has one job."""
    text = path.read_text()
    assert text.count("\n") <= MAX_MODULE_LINES, f"{module} has {text.count(chr(10))} lines"
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.ClassDef):
            size = node.end_lineno - node.lineno + 1
            assert size <= MAX_CLASS_LINES, f"{module}.{node.name} has {size} lines"


def test_the_cli_is_a_thin_shell():
    """cli.py parses, maps exit statuses and calls the application: no library logic."""
    tree = ast.parse((PACKAGE / "cli.py").read_text())
    functions = {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
    classes = {n.name for n in ast.walk(tree) if isinstance(n, ast.ClassDef)}
    assert classes <= {"_Parser", "_Version"}
    assert functions <= {
        "build_parser", "main", "fail", "_number", "convert", "_listen_address", "error",
        "__init__", "__call__", "_print_message",
    }  # fmt: skip
    targets = {t for t in GRAPH["greentap.cli"] if t.startswith("greentap.")}
    below = {t for t in targets if layer_of(t) in ("device", "green", "ports")}
    assert not below, f"cli.py reaches past the application into {sorted(below)}"


def test_the_readme_names_every_module():
    """README.md's Architecture tree lists every module (and the C source), and no other."""
    readme = (PACKAGE.parent / "README.md").read_text()
    tree = readme.split("## Architecture", 1)[1].split("```", 2)[1]
    listed, folder = set(), ""
    for line in tree.splitlines()[2:]:  # after the opening fence and "greentap/"
        name = line.strip().split(" ", 1)[0]
        if not name:
            continue
        if line.startswith("  ") and not line.startswith("    "):
            folder = name if name.endswith("/") else ""
            if not folder:
                listed.add(name)
        else:
            listed.add(folder + name)
    on_disk = {
        str(p.relative_to(PACKAGE))
        for p in PACKAGE.rglob("*")
        if p.suffix in (".py", ".c") and not (p.name == "__init__.py" and p.parent != PACKAGE)
    }
    assert listed == on_disk
