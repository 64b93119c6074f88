"""The layout holds: no import cycles (deferred imports included), imports go pipeline -> transforms
-> twml and never back, and each module-level name of the output directory and the rejected rows
is defined in one module only."""
import ast
import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("twml", "transforms", "pipeline")
LAYER = {"twml": 0, "transforms": 1, "pipeline": 2}


def modules():
    found = {}
    for package in PACKAGES:
        for folder, _, files in os.walk(os.path.join(REPO, package)):
            for name in files:
                if name.endswith(".py"):
                    path = os.path.join(folder, name)
                    module = os.path.relpath(path, REPO)[:-3].replace(os.sep, ".")
                    found[module[:-len(".__init__")] if module.endswith(".__init__") else module] = path
    return found


def import_graph():
    """{module: project modules it imports anywhere in its body (functions included)}."""
    mods = modules()
    graph = {}
    for module, path in mods.items():
        deps = set()
        with open(path) as handle:
            tree = ast.parse(handle.read())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                deps.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                for alias in node.names:
                    full = f"{node.module}.{alias.name}"
                    deps.add(full if full in mods else node.module)
        graph[module] = {d for d in deps if d in mods and d != module}
    return graph


def cycles(graph):
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
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
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles_even_through_deferred_imports():
    graph = import_graph()
    assert len(graph) > 40
    assert cycles(graph) == []


def test_cycles_are_found():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_imports_go_pipeline_to_transforms_to_twml():
    upward = [(m, d) for m, deps in import_graph().items() for d in deps
              if LAYER[d.split(".")[0]] > LAYER[m.split(".")[0]]]
    assert upward == []


def test_each_string_constant_is_defined_once():
    """A module-level string or bytes constant (a file name, a column, a tag) has one owner."""
    defined = {}
    for module, path in modules().items():
        with open(path) as handle:
            tree = ast.parse(handle.read())
        for node in tree.body:
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant) \
                    and isinstance(node.value.value, (str, bytes)):
                for target in node.targets:
                    if isinstance(target, ast.Name) and target.id != "__all__":
                        defined.setdefault(node.value.value, []).append(f"{module}.{target.id}")
    assert {value: where for value, where in defined.items() if len(where) > 1} == {}
