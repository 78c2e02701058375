"""The house: what a user touches at the top, the machinery in folders by concern, and imports that run one way
(office31.py -> runs/ -> selection/ -> results/ -> networks/ -> methods/, and the data: datasets/ with the top's
data_loader.py -> the top's alexnet.py, resnet.py -> common/), with no circle between modules."""
import ast
import os

from conftest import ROOT

TOP = {"office31.py", "data_loader.py", "alexnet.py", "resnet.py"}  # the card's files
# Each part, and the parts it may import (its own modules, and those of the parts after it in this order)
LAYERS = [{"office31"}, {"runs"}, {"selection"}, {"results"}, {"networks"}, {"methods", "datasets", "data_loader"},
          {"alexnet", "resnet"}, {"common"}]
TOP_PARTS = {name[:-3] for name in TOP}
FOLDERS = {"common", "runs", "networks", "methods", "results", "selection", "datasets"}


def our_modules():
    """{dotted module name: path} of the repository's code (tests, data and docs aside)."""
    found = {}
    for folder, subfolders, files in os.walk(ROOT):
        subfolders[:] = [d for d in subfolders if not d.startswith(".") and d not in ("tests", "data", "docs", "out")]
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                found[os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".").removesuffix(".__init__")] = path
    return found


def imports(modules):
    """{module: the modules of ours it imports, anywhere in it (a late import counts too)}."""
    graph = {}
    for name, path in modules.items():
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read())
        found = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                for alias in node.names:  # `from runs import sweep` imports the module runs.sweep
                    found.add(f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in modules else node.module)
            elif isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
        graph[name] = {m for m in found if m in modules and m != name}
    return graph


def part(module):
    return module.split(".")[0]


def test_the_top_holds_the_cards_files_and_the_rest_is_in_folders_that_say_what_they_hold():
    top = {name for name in os.listdir(ROOT) if name.endswith(".py")}
    assert top == TOP, "the top level holds office31.py, data_loader.py, alexnet.py and resnet.py only"
    assert {part(m) for m in our_modules()} == TOP_PARTS | FOLDERS
    for folder in FOLDERS:
        with open(os.path.join(ROOT, folder, "__init__.py"), encoding="utf-8") as f:
            doc = ast.get_docstring(ast.parse(f.read()))
        assert doc and len(doc.split()) >= 10, f"{folder}/__init__.py opens with what the folder holds"
    for name, path in our_modules().items():
        with open(path, encoding="utf-8") as f:
            assert ast.get_docstring(ast.parse(f.read())), f"{name} opens with a docstring"


def against_the_direction(graph):
    rank = {name: k for k, layer in enumerate(LAYERS) for name in layer}
    assert set(rank) == {part(m) for m in graph}, "every part has its place in LAYERS"
    return [(a, b) for a, deps in sorted(graph.items()) for b in sorted(deps) if rank[part(b)] < rank[part(a)]]


def circle(graph):
    """The first import circle found, as a path of modules; None where there is none."""
    state = {}

    def visit(module, path):
        state[module] = "open"
        for other in sorted(graph[module]):
            if state.get(other) == "open":
                return path[path.index(other):] + [other]
            found = visit(other, path + [other]) if other not in state else None
            if found:
                return found
        state[module] = "done"
    return next(filter(None, (visit(m, [m]) for m in sorted(graph) if m not in state)), None)


def test_imports_run_one_way_with_no_circle():
    graph = imports(our_modules())
    assert not against_the_direction(graph)
    assert circle(graph) is None
    assert all(part(b) == "common" for a in graph if part(a) == "common" for b in graph[a]), \
        "common/ imports nothing of the rest"


def test_a_planted_upward_import_or_circle_is_caught():
    graph = imports(our_modules())
    assert against_the_direction(dict(graph, **{"results.store": graph["results.store"] | {"runs.sweep"}})) == \
           [("results.store", "runs.sweep")]
    assert "results.tables" in graph["runs.report"]
    found = circle(dict(graph, **{"results.tables": graph["results.tables"] | {"runs.report"}}))
    assert found and found[0] == found[-1] and {"runs.report", "results.tables"} <= set(found)


def test_office31_stays_the_flags_the_loop_and_the_run():
    with open(os.path.join(ROOT, "office31.py"), encoding="utf-8") as f:
        lines = f.read().splitlines()
    assert len(lines) <= 400
