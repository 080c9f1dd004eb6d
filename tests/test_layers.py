"""Imports point one way: every module of the package imports only from lower layers (or its own
folder), the serving code never imports training code, and the UI reaches only ``serve`` and ``config``."""

import ast
from pathlib import Path

import cir_demo

PACKAGE = Path(cir_demo.__file__).parent
# Lowest first. A folder may import folders of a lower rank; same-rank folders stay apart
# unless listed in ALSO.
RANK = {"config": 0, "index": 1, "data": 1, "model": 2, "pipeline": 3, "eval": 4, "serve": 5, "train": 5,
        "ui": 6, "bench": 6, "commands": 7, "cli": 8, "__main__": 9, "__init__": 9}
ALSO = {("commands", "ui"), ("commands", "bench")}  # the CLI serves the app and runs the benchmarks
ONLY = {"ui": {"serve", "config"}}  # the front end sees the library through the catalog


def imports(path: Path) -> set[str]:
    """The cir_demo folders (or top modules) a file imports, lazily imported ones included."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "cir_demo" and len(parts) > 1:
                found.add(parts[1])
    return found


def layer_of(path: Path) -> str:
    rel = path.relative_to(PACKAGE)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def test_every_folder_is_ranked():
    folders = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    modules = {p.stem for p in PACKAGE.glob("*.py")}
    assert folders | modules <= set(RANK), (folders | modules) - set(RANK)


def test_imports_point_down():
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        mine = layer_of(path)
        for other in imports(path) - {mine}:
            allowed = RANK[other] < RANK[mine] or (mine, other) in ALSO
            if mine in ONLY:
                allowed = other in ONLY[mine]
            if not allowed:
                wrong.append(f"{path.relative_to(PACKAGE)} imports cir_demo.{other}")
    assert wrong == []


def test_the_checker_catches_an_upward_import(tmp_path):
    """The check itself can fail: a pipeline module importing training code is caught."""
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from cir_demo.train.distributed import barrier\n")
    assert imports(bad) == {"train"} and not RANK["train"] < RANK["pipeline"]
