"""The package's shape: no import cycles, no module reaching into another's private names."""
from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "vqc"


def _modules() -> dict[str, ast.Module]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = (ast.parse(path.read_text()), path.name == "__init__.py")
    return found


def _imported(module: str, is_package: bool, node: ast.ImportFrom | ast.Import, known: set[str]) -> list[str]:
    """The vqc modules one import statement loads."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name in known]
    base = module if is_package else module.rpartition(".")[0]
    for _ in range(node.level - 1):
        base = base.rpartition(".")[0]
    target = (f"{base}.{node.module}" if node.module else base) if node.level else (node.module or "")
    names = [f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in known]
    return names or ([target] if target in known else [])


def _imports() -> dict[str, set[str]]:
    """Every import of a vqc module by another, at the top of a module or inside a function (a
    deferred import that closes a loop is a cycle too: it only hides it until that call)."""
    modules = _modules()
    known = set(modules)
    graph = {}
    for name, (tree, is_package) in modules.items():
        edges = set()
        for statement in ast.walk(tree):
            if isinstance(statement, (ast.Import, ast.ImportFrom)):
                edges.update(_imported(name, is_package, statement, known))
        graph[name] = edges - {name}
    return graph


def test_no_import_cycles():
    graph = _imports()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)
    assert graph["vqc.version"] == set()  # the version is a leaf: anything may import it


def test_no_module_imports_another_modules_private_names():
    offenders = []
    for name, (tree, _) in _modules().items():
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("vqc")):
                offenders += [f"{name}: from {'.' * node.level}{node.module or ''} import {a.name}"
                              for a in node.names if a.name.startswith("_") and not a.name.startswith("__")]
    assert not offenders, offenders


def test_no_function_is_longer_than_80_lines():
    """A function a reader cannot take in at once is split; 80 lines, decorators and docstring included."""
    long = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
                if node.end_lineno - first + 1 > 80:
                    long.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {node.name}: "
                                f"{node.end_lineno - first + 1} lines")
    assert not long, long


NAMED_THRESHOLD = re.compile(r"threshold\W*(or \{\}\W*)?$", re.IGNORECASE)  # ends in a threshold, not "thresholds"


def _threshold_key_reads(tree: ast.Module) -> list[str]:
    """Keys read from something named like a threshold: `x.threshold["value"]`, `threshold.get("policy")`."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Load):
            target, key = node.value, node.slice
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get" \
                and node.args:
            target, key = node.func.value, node.args[0]
        else:
            continue
        if isinstance(key, ast.Constant) and isinstance(key.value, str) and NAMED_THRESHOLD.search(ast.unparse(target)):
            found.append(f"line {node.lineno}: {ast.unparse(node)}")
    return found


def test_only_the_threshold_type_reads_a_stored_thresholds_keys():
    """A threshold is read through vqc.threshold.Threshold (value, policy, details); a module
    that reads the stored object's keys itself is a second reader of that format."""
    readers = {}
    for name, (tree, _) in _modules().items():
        if name != "vqc.threshold":
            readers.update({f"{name} {read}": None for read in _threshold_key_reads(tree)})
    assert not readers, "\n".join(readers)


def test_the_threshold_key_rule_finds_what_it_is_meant_to():
    tree = ast.parse('a = model.threshold["value"]\nb = t.threshold.get("policy")\nc = manifest["threshold"]\n'
                     'd = (row.get("threshold") or {}).get("value")\ne = run["thresholds"]["cost"]')
    assert [read.split(":")[0] for read in _threshold_key_reads(tree)] == ["line 1", "line 2", "line 4"]


# Each format's marker and file names, and each place in a model store, are spelled in code by one
# module, their owner; everyone else imports the name or asks the owner (ModelStore.images_folder).
# A help text or message may mention a name to users: only a string that *is* the name counts.
OWNED_NAMES = {"vqc-model": "vqc.modelfile", "bundle.json": "vqc.bundle", "model.onnx": "vqc.bundle",
               ".records.sqlite": "vqc.records", "-images": "vqc.records",  # the records beside a model file
               "records.sqlite": "vqc.store.versions"}
# common words, so only as a path: folder / "images", Path("images")
OWNED_FOLDERS = {"images": "vqc.store.versions", "versions": "vqc.store.versions", "studio": "vqc.store.versions"}


def _spelled(tree: ast.Module) -> set[str]:
    """The owned names a module's code spells."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and node.value in OWNED_NAMES:
            found.add(node.value)
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
            parts = [node.left, node.right]
        elif isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None)) in (
                "Path", "joinpath", "with_name"):
            parts = node.args
        else:
            continue
        found.update(p.value for p in parts if isinstance(p, ast.Constant) and p.value in OWNED_FOLDERS)
    return found


def test_the_spelling_check_sees_names_in_paths_and_not_words_in_text():
    tree = ast.parse('db = folder / "records.sqlite"\nkept = Path(f"{stem}-images")\nx = store.folder / "images"\n'
                     'row = {"images": 3, "versions": []}\nhelp = "default: DIR/records.sqlite"\n')
    assert _spelled(tree) == {"records.sqlite", "-images", "images"}


def test_each_format_and_store_name_is_spelled_by_its_owner_alone():
    spelled_by: dict[str, set[str]] = {}
    for module, (tree, _) in _modules().items():
        for name in _spelled(tree):
            spelled_by.setdefault(name, set()).add(module)
    owners = {**OWNED_NAMES, **OWNED_FOLDERS}
    elsewhere = {name: sorted(modules - {owners[name]}) for name, modules in spelled_by.items()
                 if modules != {owners[name]}}
    assert not elsewhere, f"spelled outside their owner (import the name, or ask the owner): {elsewhere}"
    assert set(spelled_by) == set(owners), "an owner no longer spells its name: say who does in OWNED_NAMES/FOLDERS"
